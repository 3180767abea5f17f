"""The slurm executor (driver/slurm.py).

The tests marked ``slurm`` run against a real single-node Slurm with accounting, started
once per session by the ``slurm`` fixture (tests/driver/slurm/cluster.py: starts munged,
mariadbd, slurmdbd, slurmctld, slurmd under a fresh temporary folder, stops them by PID at
the end). The test suite installs nothing by itself: where Slurm is missing, the packages
are apt-installed only with ``USNPRUNE_INSTALL_SLURM=1`` (``.ci/run`` sets it), and as root.
Otherwise (not installed and not asked, not root, no apt, apt fails) the tests are skipped
with the reason, which pytest prints (``-ra``); ``USNPRUNE_SLURM_TESTS=0`` skips them on
purpose. The other tests need no Slurm.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usnprune.driver.runfolder import COLUMNS, RunSpec, load_instances, prepare_run
from usnprune.driver.slurm import SlurmOptions, parse_options, sbatch_options, warn_if_local
from usnprune.driver.store import ResultStore
from usnprune.driver.verify import VerifyConfig, verify
from usnprune.errors import ConfigError
from usnprune.export.benchmark import ExportConfig, export_benchmark
from usnprune.verifier_specs.base import load_backend

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("usnprune_test_cluster", Path(__file__).parent / "slurm" / "cluster.py")
cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster)


@pytest.fixture(scope="session")
def slurm():
    """A running single-node Slurm; ``SLURM_CONF`` points at it while the session lasts."""
    if os.environ.get("USNPRUNE_SLURM_TESTS") == "0":
        pytest.skip("Slurm tests switched off (USNPRUNE_SLURM_TESTS=0)")
    notes: list[str] = []
    try:
        installed = cluster.ensure_packages(log=notes.append)
        c = cluster.Cluster(log=notes.append).start()
    except cluster.Unavailable as e:
        pytest.skip(f"no single-node Slurm on this machine: {e}")
    c.timings["install"] = installed
    print(f"\ntest Slurm: install {installed:.1f} s, start {c.timings['start']:.1f} s", file=sys.stderr)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = c.env["SLURM_CONF"]
    try:
        yield c
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        c.stop()
        print(f"\ntest Slurm stopped in {c.timings['stop']:.1f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def bench(tiny_checkpoint, synth_data, tmp_path_factory):
    """40 instances: 2 images x 10 keypoints x 2 tolerances (0.05 px breaks, 1 px holds)."""
    out = tmp_path_factory.mktemp("sb") / "bench"
    export_benchmark(ExportConfig(checkpoints=[str(tiny_checkpoint)], categories=["tiny"], data=str(synth_data),
                                  out=str(out), deltas=[0.05, 1.0], images=2, pool=2, timeout=10,
                                  reference="prediction"), log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def local_rows(bench, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    res = verify(bench, run, executor="local", workers=2, log=lambda s: None)
    assert res["missing"] == 0
    return ResultStore(run).rows()


def _verdicts(rows: dict) -> dict:
    return {k: (r["verdict"], r["sample_violated"]) for k, r in rows.items()}


def _whole_rows(run: Path) -> list[dict]:
    """Every line of every results file, asserting that each is a whole row."""
    out = []
    for f in sorted((run / "results").glob("*.jsonl")):
        raw = f.read_bytes()
        assert raw.endswith(b"\n"), f"{f.name}: torn last line"
        for line in raw.splitlines():
            row = json.loads(line)
            assert set(COLUMNS) <= set(row), f"{f.name}: incomplete row"
            out.append(row)
    return out


def _cli(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "usnprune.driver.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ if env is None else env, USNPRUNE_NO_PROGRESS="1"))


def _queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()


def _submitted_since(t: float) -> list[str]:
    """Jobs the accounting says were submitted at or after ``t`` (epoch seconds)."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
    out = subprocess.run(["sacct", "-n", "-X", "-a", "-S", since, "-o", "JobID,Submit", "--parsable2"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and line.split("|")[1] >= since]


# ---- against the single-node Slurm --------------------------------------------------


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_array_gives_the_local_verdicts_one_whole_row_per_instance(slurm, bench, local_rows, tmp_path):
    run = tmp_path / "run"
    logs: list[str] = []
    res = verify(bench, run, executor="slurm", chunk_size=8, executor_options={"cpus_per_task": 1, "time_min": 5},
                 log=logs.append)
    assert res["missing"] == 0 and res["alarms"] == 0, logs
    rows = ResultStore(run).rows()
    assert _verdicts(rows) == _verdicts(local_rows)
    assert {"certified", "falsified"} <= {r["verdict"] for r in rows.values()}
    # five tasks wrote concurrently, each to its own file: every instance exactly once, whole
    array = re.search(r"submitted array (\d+): 5 tasks", "\n".join(logs)).group(1)
    assert sorted(f.name for f in (run / "results").glob("*.jsonl")) == [f"slurm-{array}_{k}.jsonl" for k in range(5)]
    lines = _whole_rows(run)
    assert len(lines) == 40 and len({(r["onnx"], r["vnnlib"]) for r in lines}) == 40
    # the task logs are in a submission folder of the run
    (sub,) = (run / "logs" / "slurm").iterdir()
    assert len(list(sub.glob(f"{array}_*_0_log.out"))) == 5
    assert "slurm array" in "\n".join(logs) and "5 done, 0 failed" in "\n".join(logs)


@pytest.mark.slurm
@pytest.mark.timeout(400)
def test_cancelled_tasks_leave_no_rows_and_resume_finishes_them(slurm, bench, local_rows, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "usnprune.driver.cli", "verify", str(bench), "--out", str(run), "--executor",
                          "slurm", "--chunk-size", "4", "--cpus-per-task", "1", "--time-min", "5"], cwd=REPO,
                         env=dict(os.environ, USNPRUNE_NO_PROGRESS="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    # as soon as a task runs (it is still starting Python: no row yet), cancel it, and the
    # last task, still pending
    deadline = time.monotonic() + 120
    while not (run / "run.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    name = f"usnprune-{RunSpec.load(run).run_id}"  # this run's array, not a task of an earlier test still listed
    running = []
    while not running and time.monotonic() < deadline and p.poll() is None:
        running = subprocess.run(["squeue", "-h", "-r", "-t", "R", "-n", name, "-o", "%i"], capture_output=True,
                                 text=True).stdout.split()
        time.sleep(0.1)
    assert running, "no task started"
    array = running[0].split("_")[0]
    subprocess.run(["scancel", running[0], f"{array}_9"], check=True)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 1, out  # instances are missing: the command says so
    assert re.search(rf"task {array}_9 ended CANCELLED: 4 of its 4 instances have no result", out), out
    assert f"task {running[0]} ended CANCELLED" in out, out
    assert re.search(r"\d+/40 instances have results .* missing \(run again with --resume\)", out), out
    # nothing half-done: whole rows only, and no error rows for what the cancelled tasks never did
    lines = _whole_rows(run)
    before = ResultStore(run).rows()
    assert len(lines) == len(before) <= 36
    assert {r["verdict"] for r in before.values()} <= {"certified", "falsified"}
    assert not (run / "results" / f"slurm-{array}_9.jsonl").exists()
    # --resume submits only the instances without a row, into a new submission folder
    logs: list[str] = []
    res = verify(bench, run, resume=True, executor="slurm", chunk_size=4, executor_options={"time_min": 5},
                 log=logs.append)
    assert res["missing"] == 0, logs
    assert any(f"{len(before)} already done, {40 - len(before)} to run" in line for line in logs)
    assert len(list((run / "logs" / "slurm").iterdir())) == 2
    after = ResultStore(run).rows()
    assert all(after[k]["finished_at"] == r["finished_at"] for k, r in before.items())  # not redone
    assert _verdicts(after) == _verdicts(local_rows)
    assert len(_whole_rows(run)) == 40


@pytest.mark.slurm
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    (["--partition", "nosuch"], r"slurm executor: unknown partition 'nosuch' \(known: debug\*\)"),
    (["--sbatch", "nosuchoption=1"], r"Slurm refuses these task options \(--nosuchoption=1\): .*unrecognized option"),
    (["--mem-gb", "100000"], r"Slurm refuses these task options \(--mem=100000G\): .*not available"),
])
def test_bad_cluster_options_are_one_line_before_anything_is_submitted(slurm, bench, tmp_path, args, message):
    t0 = time.time() // 1
    p = _cli("verify", str(bench), "--out", str(tmp_path / "run"), "--executor", "slurm", *args)
    err = p.stderr.strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()  # no half-made run folder to --resume
    assert _queue() == [] and _submitted_since(t0) == []


# ---- without a cluster --------------------------------------------------------------


def _fake_slurm(tmp_path, sinfo_exit: int, missing: tuple = ()) -> dict:
    """PATH with stand-in Slurm commands (sinfo failing as with a controller that is down)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("sbatch", "sinfo", "srun", "squeue", "scancel"):
        if tool in missing:
            continue
        body = ("echo 'sinfo: error: Unable to contact slurm controller (connect failure)' >&2; exit 1"
                if tool == "sinfo" and sinfo_exit else "echo 'should not be called' >&2; exit 99")
        (bin_ / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / tool).chmod(0o755)
    return dict(os.environ, PATH=str(bin_))


@pytest.mark.parametrize("fake, message", [
    ({"sinfo_exit": 0, "missing": ("sbatch",)}, r"slurm executor: sbatch not found on PATH \(is this a Slurm submit host\?\)"),
    ({"sinfo_exit": 1}, r"slurm executor: sinfo failed: sinfo: error: Unable to contact slurm controller"),
])
def test_no_slurm_is_one_line_before_the_run_folder_exists(bench, tmp_path, fake, message):
    p = _cli("verify", str(bench), "--out", str(tmp_path / "run"), "--executor", "slurm",
             env=_fake_slurm(tmp_path, **fake))
    err = p.stderr.strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_run_folder_the_tasks_cannot_write_is_refused(bench, tmp_path):
    (tmp_path / "afile").write_text("")
    p = _cli("verify", str(bench), "--out", str(tmp_path / "afile" / "run"), "--executor", "slurm")
    err = p.stderr.strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"the array tasks cannot write the run folder .*afile/run \(.*afile is not a writable folder\)", err)


def test_a_run_folder_under_tmp_warns_on_a_multi_node_cluster(tmp_path):
    said: list[str] = []
    warn_if_local(Path("/tmp/x/run"), ["node1", "node2"], said.append)
    assert len(said) == 1 and "under /tmp" in said[0] and "shared filesystem" in said[0]
    said.clear()
    warn_if_local(Path("/tmp/x/run"), [__import__("socket").gethostname().split(".")[0]], said.append)
    assert said == []  # a single-node cluster on this host sees its /tmp


def test_options_from_the_command_line_and_the_experiment_file():
    opts = parse_options({"partition": "gpu", "time_min": 30, "gpus_per_task": 1, "mem_gb": 16, "constraint": "a100",
                          "sbatch": {"qos": "high", "exclusive": True}})
    assert (opts.partition, opts.time_min, opts.gpus_per_task) == ("gpu", 30, 1)
    assert sbatch_options(opts) == {"partition": "gpu", "gpus-per-task": 1, "ntasks-per-node": 1, "mem": "16G",
                                    "time": 30, "constraint": "a100", "qos": "high", "exclusive": True}
    assert parse_options(None) == SlurmOptions()
    for bad, match in [({"time_min": 0}, r"executor_options.time_min: must be an integer >= 1"),
                       ({"gpus_per_task": "one"}, "gpus_per_task: must be an integer"),
                       ({"mem_gb": -1}, "mem_gb: must be a number > 0"),
                       ({"output": "x.log"}, "set by the slurm executor itself"),
                       ({"Bad Key": 1}, "is not an sbatch option name"),
                       ({"sbatch": ["qos=high"]}, "sbatch: must be a mapping"),
                       ({"qos": None}, "must be a single value")]:
        with pytest.raises(ConfigError, match=match):
            parse_options(bad)
    # the experiment file is checked before any stage runs
    VerifyConfig(executor="slurm", executor_options={"partition": "gpu", "time_min": 60}).check("verify")
    with pytest.raises(ConfigError, match=r"verify.executor_options.time_min: must be an integer >= 1"):
        VerifyConfig(executor="slurm", executor_options={"time_min": -5}).check("verify")
    with pytest.raises(ConfigError, match="partition: options of the slurm executor, not of local"):
        VerifyConfig(executor="local", executor_options={"partition": "gpu"}).check("verify")


def test_the_time_limit_warning_does_not_turn_unfinished_instances_into_error_rows(bench, tmp_path):
    """submitit's own handler of the warning signal raises inside the verifier, which
    would leave an error row for every instance not yet verified. The task logs instead."""
    run = tmp_path / "run"
    spec = prepare_run(bench, run, "builtin", {}, None, resume=False, profile=load_backend("builtin").resolved())

    chunk = [i.to_dict() for i in load_instances(bench)]
    code = ("import json, sys; from usnprune.driver.slurm import run_task; "
            "print(run_task(json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])))")
    env = dict(os.environ, SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="3")
    p = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec.__dict__), str(run), json.dumps(chunk)], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ResultStore(run).rows() and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGUSR2)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "the time limit is near" in err
    rows = ResultStore(run).rows()
    assert len(rows) == 40 and {r["verdict"] for r in rows.values()} <= {"certified", "falsified"}
    assert [f.name for f in (run / "results").glob("*.jsonl")] == ["slurm-7_3.jsonl"]


def test_slurm_options_without_the_slurm_executor_are_refused(bench, tmp_path, capsys):
    from usnprune.driver.cli import main

    assert main(["verify", str(bench), "--out", str(tmp_path / "run"), "--partition", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("usnprune: error: verify.executor_options: partition: options of the slurm executor, not of local "
                   "(add --executor slurm)")
    assert not (tmp_path / "run").exists()


def test_the_suite_installs_nothing_unless_asked(monkeypatch):
    """Without USNPRUNE_INSTALL_SLURM=1 a missing Slurm is a skip reason, never an apt-get."""
    monkeypatch.setattr(cluster, "missing_binaries", lambda: ["sbatch", "slurmd"])
    monkeypatch.delenv(cluster.INSTALL_ENV, raising=False)

    def no_apt(*a, **k):
        raise AssertionError(f"the tests ran {a[0] if a else k} without being asked")

    monkeypatch.setattr(cluster.subprocess, "run", no_apt)
    with pytest.raises(cluster.Unavailable, match="set USNPRUNE_INSTALL_SLURM=1"):
        cluster.ensure_packages(log=lambda s: None)
