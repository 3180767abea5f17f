"""A run is bound to what it verified: the fingerprint, the lock, error causes, a changed
file, paths that name one file twice, and what a worker does when its parent is gone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from usnprune.driver.cli import main
from usnprune.driver.runfolder import RunLock, RunSpec, fingerprint_name, load_instances
from usnprune.driver.store import CAUSE_INFRASTRUCTURE, CAUSE_INSTANCE, ResultStore
from usnprune.driver.verify import verify
from usnprune.driver.worker import Abandoned, run_chunk
from usnprune.errors import ConfigError
from usnprune.export.benchmark import ExportConfig, export_benchmark


def _quiet(*a, **k):
    pass


@pytest.fixture
def small_bench(bench, tmp_path):
    """A copy of the shared benchmark cut to its first 4 instances (one ONNX file)."""
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    rows = (out / "2.0" / "instances.csv").read_text().splitlines()[:4]  # the folder the builtin runs
    (out / "2.0" / "instances.csv").write_text("\n".join(rows) + "\n")
    return out


def _cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip()


def test_run_json_holds_the_fingerprint_of_every_file(small_bench, tmp_path):
    verify(small_bench, tmp_path / "run", executor="serial", log=_quiet)
    spec = RunSpec.load(tmp_path / "run")
    insts = load_instances(small_bench)
    want = {"2.0/instances.csv", "benchmark.json", "manifest.csv"} | {f"2.0/{i.onnx}" for i in insts} \
        | {f"2.0/{i.vnnlib}" for i in insts}
    assert set(spec.fingerprint) == want
    assert all(len(h) == 64 for h in spec.fingerprint.values())
    assert spec.profile["backend"] == "builtin"


def test_a_resume_after_a_reexport_with_another_box_is_refused(tiny_checkpoint, synth_data, tmp_path, capsys):
    """The issue's stale verdicts: re-export into the same folder with --force at another
    eps, then verify --resume: refused, naming what changed."""
    bench = tmp_path / "bench"

    def export(eps):
        export_benchmark(ExportConfig(checkpoints=[str(tiny_checkpoint)], categories=["tiny"], data=str(synth_data),
                                      out=str(bench), deltas=[1.0], images=1, pool=1, timeout=10, force=True,
                                      perturbation=_box(eps)), log=_quiet)

    export(0.05)
    verify(bench, tmp_path / "run", executor="serial", log=_quiet)
    export(0.5)
    code, err = _cli(capsys, "verify", bench, "--out", tmp_path / "run", "--resume", "--executor", "serial")
    assert code == 2 and len(err.splitlines()) == 1
    assert "the benchmark changed since that run started" in err and "changed" in err
    assert "benchmark.json changed" in err or "instances.csv changed" in err


def _box(eps):
    from usnprune.pruner.perturbation import Box

    return Box(eps, eps)


def test_a_changed_vnnlib_is_named_on_resume(small_bench, tmp_path):
    verify(small_bench, tmp_path / "run", executor="serial", log=_quiet)
    inst = load_instances(small_bench)[2]
    vnn, p = inst.vnnlib, inst.vnnlib_path
    p.write_text(p.read_text().replace("0.9", "0.5", 1))
    with pytest.raises(ConfigError, match=f"{vnn} changed"):
        verify(small_bench, tmp_path / "run", resume=True, executor="serial", log=_quiet)


def test_a_run_without_a_fingerprint_is_not_resumed(small_bench, tmp_path):
    verify(small_bench, tmp_path / "run", executor="serial", log=_quiet)
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    data.pop("fingerprint")
    (tmp_path / "run" / "run.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="no fingerprint"):
        verify(small_bench, tmp_path / "run", resume=True, executor="serial", log=_quiet)


def test_a_second_process_on_one_run_folder_is_refused(small_bench, tmp_path, capsys):
    run = tmp_path / "run"
    verify(small_bench, run, executor="serial", log=_quiet)
    with RunLock(run):  # as if another verify were working on it
        code, err = _cli(capsys, "verify", small_bench, "--out", run, "--resume", "--executor", "serial")
    assert code == 2 and "another usnprune verify" in err and len(err.splitlines()) == 1
    code, err = _cli(capsys, "verify", small_bench, "--out", run, "--resume", "--executor", "serial")
    assert code == 0  # the lock went with its holder


def test_a_file_changed_during_the_run_gets_an_error_row_not_a_verdict(small_bench, tmp_path):
    run = tmp_path / "run"
    verify(small_bench, run, executor="serial", log=_quiet)
    spec = RunSpec.load(run)
    insts = load_instances(small_bench)
    name = fingerprint_name(small_bench, insts[0], insts[0].vnnlib)
    assert name == f"2.0/{insts[0].vnnlib}" and name in spec.fingerprint  # the worker's name is the fingerprint's
    spec.fingerprint[name] = "0" * 64  # what the run started with differs from the file now
    run_chunk(spec, run, insts[:2], "w-test")
    rows = ResultStore(run).rows()
    r0, r1 = rows[insts[0].key], rows[insts[1].key]
    assert r0["verdict"] == "error" and "changed since the run started" in r0["message"]
    assert r0["error_cause"] == CAUSE_INSTANCE and r1["verdict"] != "error"


def test_infrastructure_errors_are_run_again_by_resume_instance_errors_are_not(small_bench, tmp_path):
    run = tmp_path / "run"
    verify(small_bench, run, executor="serial", log=_quiet)
    store = ResultStore(run)
    rows = store.rows()
    a, b = list(rows)[:2]
    store.append(dict(rows[a], verdict="error", error_cause=CAUSE_INFRASTRUCTURE, message="worker died"), "w-x")
    store.append(dict(rows[b], verdict="error", error_cause=CAUSE_INSTANCE, message="the verifier said so"), "w-x")
    assert a not in store.finished_keys() and b in store.finished_keys()
    logs: list[str] = []
    res = verify(small_bench, run, resume=True, executor="serial", log=logs.append)
    assert any("1 to run (1 after an infrastructure error)" in line for line in logs), logs
    rows = store.rows()
    assert rows[a]["verdict"] != "error" and rows[b]["verdict"] == "error"
    assert res["infrastructure_errors"] == 0
    df = pd.read_csv(run / "instances.csv")
    assert set(df["error_cause"].dropna()) == {CAUSE_INSTANCE}


def test_a_row_that_cannot_be_sent_stops_the_chunk_without_an_error_row(small_bench, tmp_path):
    """A local worker whose parent is gone raises Abandoned from its callback: the chunk
    stops, and the instances it did not finish get no row (never an error row)."""
    run = tmp_path / "run"
    verify(small_bench, run, executor="serial", log=_quiet)
    spec = RunSpec.load(run)
    insts = load_instances(small_bench)
    fresh = tmp_path / "fresh"
    fresh.mkdir()

    def gone(row):
        raise Abandoned()

    with pytest.raises(Abandoned):
        run_chunk(spec, fresh, insts, "w-orphan", on_row=gone)
    rows = ResultStore(fresh).rows()
    assert len(rows) == 1 and all(r["verdict"] != "error" for r in rows.values())


def test_two_spellings_of_one_file_are_one_instance(small_bench, tmp_path):
    listed = small_bench / "2.0" / "instances.csv"
    rows = listed.read_text().splitlines()
    onnx, vnn, t = rows[0].split(",")
    listed.write_text("\n".join(rows + [f"./{onnx},{vnn.replace('/', '//')},{t}"]) + "\n")
    from usnprune.driver.runfolder import BenchmarkError

    with pytest.raises(BenchmarkError, match="listed twice"):
        load_instances(small_bench)
    listed.write_text(f"../outside.onnx,{vnn},{t}\n")
    with pytest.raises(BenchmarkError, match="no '..'"):
        load_instances(small_bench)


def test_counterexamples_are_stored_whole(small_bench, tmp_path):
    verify(small_bench, tmp_path / "run", executor="serial", log=_quiet)
    df = pd.read_csv(tmp_path / "run" / "instances.csv")
    fals = df[df["verdict"] == "falsified"]
    assert len(fals)
    for r in fals.itertuples():
        cex = json.loads(r.cex)
        assert len(cex) == 2 and cex == [r.cex_c, r.cex_b]
    assert df["check_time"].notna().all()
