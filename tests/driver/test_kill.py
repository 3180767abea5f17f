"""kill -9 of a running ``usnprune verify`` with 2 local workers, and of one worker.

After ``--resume`` (run in this process, serially, to keep the suite short) every instance
has exactly one row in RUN/instances.csv, none is an
``error``, and each verdict equals an uninterrupted run's; a killed main process takes its
workers along and leaves no row it did not earn (a failed send is never an error row).
Every run uses ``--timeout 60`` so that no instance is a timeout on a loaded machine.
"""

from __future__ import annotations

import re
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from usnprune.driver.store import CAUSE_INFRASTRUCTURE, ResultStore, row_key
from usnprune.driver.verify import verify

pytestmark = pytest.mark.slow
TIMEOUT = "60"


@pytest.fixture(scope="module")
def reference(small_net_bench, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    res = verify(small_net_bench, run, executor="local", workers=2, chunk_size=4, timeout=float(TIMEOUT),
                 log=lambda s: None)
    assert res["missing"] == 0 and res["counts"]["error"] == 0
    return {k: r["verdict"] for k, r in ResultStore(run).rows().items()}


def _cli(bench: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "usnprune.driver.cli", "verify", str(bench), "--out", str(run), "--workers", "2",
            "--chunk-size", "4", "--timeout", TIMEOUT, *extra]  # 5 chunks of one ONNX file: both workers busy


def _resume(bench: Path, run: Path, log=lambda s: None) -> dict:
    """``verify --resume`` with the run's settings (in this process, serially: the same
    store and the same decisions as the command, without starting more processes)."""
    return verify(bench, run, resume=True, executor="serial", timeout=float(TIMEOUT), log=log)


def _env() -> dict:
    return dict(os.environ, USNPRUNE_NO_PROGRESS="1")


def _workers(pid: int) -> list[int]:
    """The local executor's worker processes of ``pid``."""
    out = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for c in kids:
            try:
                if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text():
                    out.append(c)
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_complete(run: Path, reference: dict) -> None:
    """One row per instance in the table, none an error, each verdict the reference's; in
    the store, a second line for an instance only after an infrastructure error."""
    df = pd.read_csv(run / "instances.csv")
    keys = [f"{a},{b}" for a, b in zip(df["onnx"], df["vnnlib"])]
    assert len(keys) == len(set(keys)) == len(reference)
    assert (df["verdict"] != "error").all(), df[df["verdict"] == "error"]["message"].tolist()
    assert dict(zip(keys, df["verdict"])) == reference
    lines: dict[str, list[dict]] = {}
    for f in (run / "results").glob("*.jsonl"):
        for raw in f.read_bytes().splitlines():
            row = json.loads(raw)
            lines.setdefault(row_key(row), []).append(row)
    for key, rows in lines.items():
        rows.sort(key=lambda r: r["finished_at"])
        assert all(r["verdict"] == "error" and r["error_cause"] == CAUSE_INFRASTRUCTURE for r in rows[:-1]), key


@pytest.mark.parametrize("moment", [0.0, 0.35, 0.7])
def test_kill_9_of_verify_with_2_workers_then_resume(small_net_bench, reference, tmp_path, moment):
    """``moment``: the share of instances with a row when the main process is killed (0: as
    soon as both workers run)."""
    run = tmp_path / "run"
    p = subprocess.Popen(_cli(small_net_bench, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 180
    workers: list[int] = []
    while time.time() < deadline and p.poll() is None:
        workers = _workers(p.pid)
        if len(workers) == 2 and len(ResultStore(run).rows()) >= moment * len(reference):
            break
        time.sleep(0.01)
    assert p.poll() is None and len(workers) == 2, "the run ended before the moment came"
    os.kill(p.pid, signal.SIGKILL)  # the main process only: the workers lead their own groups
    p.wait()
    gone = time.time() + 15
    while time.time() < gone and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a worker outlived the killed verify"
    before = ResultStore(run).rows()
    assert all(r["verdict"] != "error" for r in before.values())  # no row for an instance nobody finished
    res = _resume(small_net_bench, run)
    assert res["missing"] == 0
    _assert_complete(run, reference)
    after = ResultStore(run).rows()
    assert all(after[k]["finished_at"] == v["finished_at"] for k, v in before.items())  # finished rows kept


def test_kill_9_of_one_worker_then_resume(small_net_bench, reference, tmp_path):
    """The killed worker's instance in flight gets an infrastructure error row, the run
    goes on; --resume runs that instance again."""
    run = tmp_path / "run"
    p = subprocess.Popen(_cli(small_net_bench, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 180
    workers: list[int] = []
    while time.time() < deadline and p.poll() is None:
        workers = _workers(p.pid)
        if workers and len(ResultStore(run).rows()) >= 3:
            break
        time.sleep(0.01)
    assert workers, "no worker process seen"
    before = ResultStore(run).rows()
    os.kill(workers[0], signal.SIGKILL)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    rows = ResultStore(run).rows()
    assert len(rows) == len(reference)
    errors = [r for r in rows.values() if r["verdict"] == "error"]
    assert len(errors) <= 1 and all(r["error_cause"] == CAUSE_INFRASTRUCTURE for r in errors)
    for k, r in before.items():  # what was finished before the kill stands
        assert rows[k]["finished_at"] == r["finished_at"]
    logs: list[str] = []
    _resume(small_net_bench, run, logs.append)
    assert any(re.search(r"\b1 to run", line) for line in logs) == bool(errors), logs
    _assert_complete(run, reference)
