import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from usnprune.driver.cli import main
from usnprune.driver.runfolder import COLUMNS, BenchmarkError
from usnprune.driver.store import ResultStore
from usnprune.driver.verify import verify
from usnprune.verifier_specs.base import Instance, Verdict
from usnprune.verifier_specs.trust import Checker


def _quiet(*a, **k):
    pass


def test_serial_and_parallel_runs_agree_and_every_row_is_sound(bench, tmp_path):
    a = verify(bench, tmp_path / "serial", executor="serial", log=_quiet)
    b = verify(bench, tmp_path / "local", executor="local", workers=2, log=_quiet)
    assert a["missing"] == b["missing"] == 0 and a["alarms"] == b["alarms"] == 0
    da, db = (pd.read_csv(tmp_path / r / "instances.csv") for r in ("serial", "local"))
    assert list(da.columns) == COLUMNS and len(da) == len(pd.read_csv(bench / "manifest.csv"))
    # a timeout is no verdict: on a loaded machine an instance of 1 s alone can reach the
    # 10 s timeout in one run and not the other (seen at load average 9-11 on 2 cores)
    both = (da["verdict"] != "timeout") & (db["verdict"] != "timeout")
    assert both.sum() >= 0.9 * len(da)
    assert list(da["verdict"][both]) == list(db["verdict"][both])
    assert {"certified", "falsified"} <= set(da["verdict"])  # 1 px holds, 0.05 px breaks
    assert not da[da["verdict"] == "certified"]["sample_violated"].any()
    fals = da[da["verdict"] == "falsified"]
    assert fals["cex_c"].between(0.9 - 1e-9, 1.1 + 1e-9).all() and fals["sample_violated"].notna().all()


def test_kill_9_then_resume_finishes_without_duplicates(small_net_bench, tmp_path):
    bench = small_net_bench
    run = tmp_path / "run"
    env = dict(os.environ, USNPRUNE_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "usnprune.driver.cli", "verify", str(bench), "--out", str(run), "--executor", "serial"]
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(ResultStore(run).rows()) < 3 and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done_before = ResultStore(run).rows()
    assert 3 <= len(done_before)
    with pytest.raises(Exception, match="pass --resume"):
        verify(bench, run, log=_quiet)
    res = verify(bench, run, resume=True, executor="serial", log=_quiet)
    rows = ResultStore(run).rows()
    total = len((bench / "2.0" / "instances.csv").read_text().splitlines())
    assert res["missing"] == 0 and len(rows) == total
    for k, r in done_before.items():  # finished rows were kept, not redone
        assert rows[k]["finished_at"] == r["finished_at"]
    assert len(pd.read_csv(run / "instances.csv")) == total


@pytest.mark.parametrize("damage, match", [
    ("unbalanced", r":2:\d+: "),  # the VNNLIB error names line and column
    ("missing", "onnx/missing.onnx: no such ONNX file"),
])
def test_a_benchmark_with_a_bad_instance_is_refused_before_the_run(bench, tmp_path, damage, match):
    import shutil

    from usnprune.errors import UsnpruneError

    broken = tmp_path / "broken"
    shutil.copytree(bench, broken)
    v2 = broken / "2.0"  # the folder the builtin runs: the newest version
    rows = (v2 / "instances.csv").read_text().splitlines()
    onnx0, vnn0, t0 = rows[0].split(",")
    if damage == "unbalanced":
        (v2 / vnn0).write_text("(declare-const X_0 Real)\n(assert (<= X_0 0.5)\n")
    else:
        rows.append(f"onnx/missing.onnx,{vnn0},5")
    (v2 / "instances.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UsnpruneError, match=match):
        verify(broken, tmp_path / "run", executor="serial", log=_quiet)
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_a_counterexample_that_does_not_replay_is_an_error(bench):
    row = pd.read_csv(bench / "2.0" / "instances.csv", header=None).iloc[0]
    inst = Instance(Path(bench) / "2.0", row[0], row[1], 5.0)
    v, _ = Checker().check(inst, Verdict("falsified", 0.1, (1.0, 0.0), "made up"))  # identity never violates
    assert v.status == "error" and "does not replay" in v.message
    v, _ = Checker().check(inst, Verdict("falsified", 0.1, None, "no point"))
    assert v.status == "error"


@pytest.mark.parametrize("argv, match", [
    (["verify", "/nonexistent/bench", "--out", "R"], "no such benchmark folder"),
    (["verify", "BENCH", "--out", "R", "--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["verify", "BENCH", "--out", "R", "--timeout", "0"], "--timeout must be > 0"),
])
def test_bad_input_is_one_line(argv, match, bench, tmp_path, capsys):
    argv = [str(bench) if a == "BENCH" else str(tmp_path / "r") if a == "R" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1


def test_duplicate_instances_and_a_resume_with_other_settings_are_refused(bench, tmp_path):
    import shutil

    from usnprune.errors import ConfigError

    dup = tmp_path / "dup"
    shutil.copytree(bench, dup)
    rows = (dup / "2.0" / "instances.csv").read_text().splitlines()
    (dup / "2.0" / "instances.csv").write_text("\n".join(rows + rows[:1]) + "\n")
    with pytest.raises(BenchmarkError, match=f"instances.csv:{len(rows) + 1}: .* is listed twice \\(first on line 1\\)"):
        verify(dup, tmp_path / "r1", executor="serial", log=_quiet)
    verify(bench, tmp_path / "r2", executor="serial", timeout=5, log=_quiet)
    with pytest.raises(ConfigError, match="resume it with the same"):
        verify(bench, tmp_path / "r2", executor="serial", timeout=7, resume=True, log=_quiet)
    with pytest.raises(ConfigError, match="verify.chunk_size: must be >= 1"):
        verify(bench, tmp_path / "r3", chunk_size=0, log=_quiet)
