"""VNN-COMP 2026 folders through `usnprune verify`: the 1.0 and the 2.0 query of an instance
give the same verdict, every row records the version that ran, and the folder shapes
(both versions, one, a version folder alone, flat) are all read."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from usnprune.driver.runfolder import BenchmarkError, RunSpec, benchmark_root, load_instances, load_manifest
from usnprune.driver.verify import verify
from usnprune.export.benchmark import ExportConfig, export_benchmark


@pytest.fixture(scope="module")
def bench(tiny_checkpoint, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("versions") / "bench"
    export_benchmark(ExportConfig(checkpoints=[str(tiny_checkpoint)], categories=["tiny"], data=str(synth_data),
                                  out=str(out), deltas=[0.05, 1.0], images=1, pool=1, timeout=20,
                                  reference="prediction"), log=lambda s: None)
    return out


def _rows(run):
    return pd.read_csv(run / "instances.csv", dtype={"vnnlib_version": str}).set_index(["onnx", "vnnlib"])


def test_the_1_0_and_2_0_query_of_every_instance_give_the_same_verdict(bench, tmp_path):
    verify(bench / "1.0", tmp_path / "one", executor="serial", log=lambda *a: None)
    verify(bench, tmp_path / "two", executor="serial", log=lambda *a: None)  # the builtin runs the newest: 2.0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert (one["vnnlib_version"] == "1.0").all() and (two["vnnlib_version"] == "2.0").all()
    assert set(one.index) == set(two.index) and len(one) > 0
    assert (one["verdict"] == two.loc[one.index, "verdict"]).all(), pd.concat([one["verdict"], two["verdict"]], axis=1)
    assert {"certified", "falsified"} <= set(one["verdict"])  # 1 px holds, 0.05 px breaks
    assert one["category"].eq("tiny").all() and one["keypoint_name"].notna().all()  # the parent's manifest
    fam = RunSpec.load(tmp_path / "one").family  # benchmark.json read from the parent of 1.0/, too
    assert fam is not None and fam == RunSpec.load(tmp_path / "two").family
    fals = one["verdict"] == "falsified"
    assert (one.loc[fals, "cex_c"] == two.loc[fals[fals].index, "cex_c"]).all()  # the same replayed points


def test_folder_shapes(bench, tmp_path):
    assert benchmark_root(bench) == (bench / "2.0", "2.0")
    assert benchmark_root(bench, ("1.0",)) == (bench / "1.0", "1.0")  # alpha-beta-CROWN, onnxsim
    assert benchmark_root(bench / "2.0") == (bench / "2.0", None)  # a version folder given alone: read per file
    assert {i.vnnlib_version for i in load_instances(bench / "2.0")} == {"2.0"}
    assert load_manifest(bench / "1.0") == load_manifest(bench)
    only = tmp_path / "only1"
    shutil.copytree(bench / "1.0", only / "1.0")
    with pytest.raises(BenchmarkError, match="holds VNN-LIB 1.0 queries, and this backend reads only 2.0"):
        load_instances(only, versions=("2.0",))
    flat = tmp_path / "flat"
    shutil.copytree(bench / "2.0", flat)
    assert {i.vnnlib_version for i in load_instances(flat)} == {"2.0"}
    with pytest.raises(BenchmarkError, match="no instances.csv, 1.0/instances.csv or 2.0/instances.csv"):
        load_instances(tmp_path)


@pytest.mark.slow
def test_usnprune_solver_behind_the_vnnlib_backend_agrees(bench, tmp_path):
    """The default `vnnlib` profile drives usnprune-solver through the standard's command
    line: on a decided instance it agrees with the builtin (or, proving in float32 with the
    worst-case rounding bound, says unknown)."""
    inst = load_instances(bench, versions=("2.0",))
    picked = pd.DataFrame([{"vnnlib": i.vnnlib} for i in inst])
    one_each = [picked[picked.vnnlib.str.contains("_d0.05")].vnnlib.iloc[0],
                picked[picked.vnnlib.str.contains("_d1.0")].vnnlib.iloc[0]]
    small = tmp_path / "small"
    (small / "2.0").mkdir(parents=True)
    for sub in ("onnx", "vnnlib"):
        shutil.copytree(bench / "2.0" / sub, small / "2.0" / sub)
    rows = [r for r in (bench / "2.0" / "instances.csv").read_text().splitlines() if r.split(",")[1] in one_each]
    (small / "2.0" / "instances.csv").write_text("\n".join(rows) + "\n")
    verify(small, tmp_path / "solver", backend="vnnlib", executor="serial", log=lambda *a: None)
    verify(small, tmp_path / "builtin", executor="serial", log=lambda *a: None)
    a, b = _rows(tmp_path / "solver"), _rows(tmp_path / "builtin")
    assert (a["backend"] == "vnnlib").all() and a["backend_version"].str.contains("usnprune-solver").all()
    for key in a.index:
        assert a.loc[key, "verdict"] in (b.loc[key, "verdict"], "unknown"), a.loc[key, "message"]
    assert (a["verdict"] != "error").all(), a["message"].tolist()
