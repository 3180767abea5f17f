import ast
import csv
import filecmp
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import vnnlib

from usnprune.driver.cli import main
from usnprune.export.benchmark import BenchmarkError, ExportConfig, export_benchmark
from usnprune.export.onnx_model import run, session
from usnprune.pruner.perturbation import Box


@pytest.fixture(scope="module")
def bench(small_checkpoint, tiny_checkpoint, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bench"
    cfg = ExportConfig(checkpoints=[str(small_checkpoint), str(tiny_checkpoint)], categories=["small", "tiny"],
                       data=str(synth_data), out=str(out), perturbation=Box(0.1, 0.05), deltas=[0.5, 2.0], images=3,
                       pool=6, timeout=5, seed=0, reference="gt")
    stats = export_benchmark(cfg, log=lambda s: None)
    return out, stats


def _instances(folder, version="1.0"):
    with open(folder / version / "instances.csv") as f:
        return list(csv.reader(f))


def test_folder_layout_and_instances(bench):
    out, stats = bench
    for name in ("manifest.csv", "generate_properties.py", "README.md", "benchmark.json", "properties.npz"):
        assert (out / name).exists(), name
    assert not (out / "instances.csv").exists() and not (out / "onnx").exists()
    assert _instances(out, "1.0") == _instances(out, "2.0")  # one instance, the same paths in both folders
    for version in ("1.0", "2.0"):
        rows = _instances(out, version)
        assert len(rows) == stats["instances"] > 0
        for onnx_rel, vnn_rel, timeout in rows:
            assert not os.path.isabs(onnx_rel) and (out / version / onnx_rel).is_file()
            assert (out / version / vnn_rel).is_file() and float(timeout) == 5
        assert len(list((out / version / "onnx").rglob("*.onnx"))) == 2 * 6  # networks x pool
    one, two = (out / "1.0" / rows[0][0]), (out / "2.0" / rows[0][0])
    assert one.read_bytes() == two.read_bytes() and one.stat().st_ino == two.stat().st_ino  # a hard link
    assert (out / "1.0" / rows[0][1]).read_text().startswith("; usnprune keypoint property")
    assert (out / "2.0" / rows[0][1]).read_text().startswith("(vnnlib-version <2.0>)\n")


def _want_rows(r):
    """The manifest row's unsafe set: four rows a @ y <= b, on u = y[2k] or v = y[2k+1]."""
    iu = 2 * r.keypoint
    return sorted([(iu, -1.0, -(r.ref_u + r.delta)), (iu, 1.0, r.ref_u - r.delta),
                   (iu + 1, -1.0, -(r.ref_v + r.delta)), (iu + 1, 1.0, r.ref_v - r.delta)])


def _check_rows(got, r):
    want = _want_rows(r)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-12)


def test_vnnlib_1_reads_back_with_an_independent_parser_to_the_manifest(bench):
    from onnxsim.vnnlib import parse

    out, _ = bench
    man = pd.read_csv(out / "manifest.csv")
    assert set(man["category"]) == {"small", "tiny"} and set(man["delta"]) == {0.5, 2.0}
    for r in man.itertuples():
        ref = parse((out / "1.0" / r.vnnlib).read_text())
        assert (ref.n_inputs, ref.n_outputs, len(ref.clauses)) == (2, 20, 4)
        for c in ref.clauses:
            assert c.lo.tolist() == [0.9, -0.05] and c.hi.tolist() == [1.1, 0.05] and len(c.atoms) == 1
        got = sorted((int(np.flatnonzero(a.a)[0]), float(a.a[np.flatnonzero(a.a)[0]]), float(a.b))
                     for c in ref.clauses for a in c.atoms)
        _check_rows(got, r)
        assert (r.ref_u, r.ref_v) == (r.gt_u, r.gt_v)  # reference: gt


def test_every_vnnlib_2_query_parses_with_the_vnnlib_package_to_the_manifest(bench):
    """The standard's own parser (PyPI vnnlib 1.0.2) reads and type-checks every 2.0 query;
    its declarations match the ONNX model, its box and disjuncts the manifest."""
    import onnx

    out, _ = bench
    man = pd.read_csv(out / "manifest.csv")
    for r in man.itertuples():
        q = vnnlib.parse_query_file(str(out / "2.0" / r.vnnlib))
        (net,) = q.networks
        (x,), (y,) = net.inputs, net.outputs
        assert (x.dtype, list(x.shape), y.dtype, list(y.shape)) == (vnnlib.DType.F32, [1, 2], vnnlib.DType.F32, [1, 20])
        model = onnx.load(str(out / "2.0" / r.onnx))
        assert [i.name for i in model.graph.input] == [x.name] and [o.name for o in model.graph.output] == [y.name]
        box, rows = {}, []
        for a in q.assertions:
            for clause in a.expr.to_dnf():  # the box: one comparison per assertion; the unsafe set: one `or`
                (cmp,) = clause
                lhs = cmp.lhs.to_linear_expr()
                (term,) = lhs.terms
                value = cmp.rhs.to_linear_expr().constant
                if term.var.kind == vnnlib.SymbolKind.Input:
                    box[(tuple(term.var.indices), type(cmp).__name__)] = value
                else:
                    (_, j) = term.var.indices
                    sign = 1.0 if type(cmp).__name__ == "LessEqual" else -1.0  # y <= b, or -y <= -b
                    rows.append((int(j), sign, sign * value))
        assert box == {((0, 0), "GreaterEqual"): 0.9, ((0, 0), "LessEqual"): 1.1,
                       ((0, 1), "GreaterEqual"): -0.05, ((0, 1), "LessEqual"): 0.05}
        assert len(q.assertions) == 5 and len(rows) == 4
        _check_rows(sorted(rows), r)


def test_manifest_predictions_are_the_onnx_outputs_at_identity(bench):
    out, _ = bench
    man = pd.read_csv(out / "manifest.csv")
    for onnx_rel, g in man.groupby("onnx"):
        y = run(session(str(out / "1.0" / onnx_rel)), np.array([[1.0, 0.0]]))[0]
        for r in g.itertuples():
            assert (r.pred_u, r.pred_v) == pytest.approx((y[2 * r.keypoint], y[2 * r.keypoint + 1]), abs=1e-6)
            assert r.violated_at_identity == (max(abs(r.pred_u - r.gt_u), abs(r.pred_v - r.gt_v)) >= r.delta)


def test_generate_properties_is_standalone_and_deterministic(bench, tmp_path):
    out, _ = bench
    src = (out / "generate_properties.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"csv", "json", "os", "sys", "gzip", "numpy", "onnx", "decimal"}
    copies = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        dst = tmp_path / name
        shutil.copytree(out, dst)
        for v in ("1.0", "2.0"):
            shutil.rmtree(dst / v / "vnnlib")
            (dst / v / "instances.csv").unlink()
        subprocess.run([sys.executable, "-I", str(dst / "generate_properties.py"), str(seed)], cwd=tmp_path,
                       check=True, capture_output=True)
        copies.append(dst)
    a, b, c = copies
    for v in ("1.0", "2.0"):  # both versions written, byte for byte as usnprune wrote them
        assert (a / v / "instances.csv").read_bytes() == (out / v / "instances.csv").read_bytes()
        assert (a / v / "instances.csv").read_bytes() == (b / v / "instances.csv").read_bytes()
        assert not filecmp.dircmp(a / v / "vnnlib", out / v / "vnnlib").diff_files
        assert not filecmp.dircmp(a / v / "vnnlib", b / v / "vnnlib").diff_files
    imgs = lambda d: set(pd.read_csv(d / "manifest.csv")["image_id"])  # noqa: E731
    assert imgs(a) != imgs(c)  # another seed picks other images


def test_gzip_skip_violated_and_one_version(small_checkpoint, synth_data, tmp_path):
    out = tmp_path / "gz"
    stats = export_benchmark(ExportConfig(checkpoints=[str(small_checkpoint)], data=str(synth_data), out=str(out),
                                          deltas=[1.5, 6.0], images=4, timeout=3, gzip=True, skip_violated=True,
                                          vnnlib_version="2"), log=lambda s: None)
    assert not (out / "1.0").exists()
    rows = _instances(out, "2.0")
    assert rows and all(r[1].endswith(".vnnlib.gz") for r in rows)
    assert vnnlib.parse_query_string(gzip.decompress((out / "2.0" / rows[0][1]).read_bytes()).decode()).networks
    man = pd.read_csv(out / "manifest.csv")
    listed = man[man["instance"].notna()]
    assert len(listed) == len(rows) and not listed["violated_at_identity"].any()
    assert stats["skipped_violated"] > 0  # a briefly trained net misses 1.5 px on some keypoints
    # a left-out property keeps its manifest row (the keypoint stays in the report's base), without a file
    left_out = man[man["instance"].isna()]
    assert len(left_out) == stats["skipped_violated"]
    assert left_out["violated_at_identity"].all() and left_out["vnnlib"].isna().all()
    assert (left_out["reference"] == "gt").all()  # the clean prediction is never violated by itself


def test_reference_both_writes_an_accuracy_and_a_stability_property_per_keypoint(small_checkpoint, synth_data, tmp_path):
    out = tmp_path / "both"
    export_benchmark(ExportConfig(checkpoints=[str(small_checkpoint)], data=str(synth_data), out=str(out),
                                  deltas=[0.5], images=2, timeout=3), log=lambda s: None)  # the default: both
    man = pd.read_csv(out / "manifest.csv")
    assert len(man) == len(_instances(out))
    per_keypoint = man.groupby(["network", "image_id", "keypoint", "delta"])["reference"].apply(sorted)
    assert per_keypoint.map(lambda refs: refs == ["gt", "prediction"]).all()
    gt, pred = man[man["reference"] == "gt"], man[man["reference"] == "prediction"]
    assert gt["vnnlib"].str.endswith("_gt.vnnlib").all() and pred["vnnlib"].str.endswith("_pred.vnnlib").all()
    assert ((gt["ref_u"] == gt["gt_u"]) & (gt["ref_v"] == gt["gt_v"])).all()
    assert ((pred["ref_u"] == pred["pred_u"]) & (pred["ref_v"] == pred["pred_v"])).all()
    assert not pred["violated_at_identity"].any()
    assert "certified accuracy" in (out / "README.md").read_text()


def test_existing_folder_is_refused_then_written_with_force_keeping_foreign_files(small_checkpoint, synth_data, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = ExportConfig(checkpoints=[str(small_checkpoint)], data=str(synth_data), out=str(out), images=1, timeout=1)
    with pytest.raises(BenchmarkError, match="other content; pass --force"):
        export_benchmark(cfg, log=lambda s: None)
    cfg.force = True
    export_benchmark(cfg, log=lambda s: None)
    assert (out / "notes.txt").read_text() == "mine" and (out / "2.0" / "instances.csv").is_file()
    # a second forced export replaces what the first wrote and still keeps foreign files
    cfg.deltas = [1.0]
    export_benchmark(cfg, log=lambda s: None)
    assert (out / "notes.txt").read_text() == "mine"
    assert all("_d1.0_" in r[1] for r in _instances(out))
    assert not list(out.rglob("*_d0.5_*.vnnlib"))
    assert not list(tmp_path.glob(".bench.partial-*"))


@pytest.mark.parametrize("args, match", [
    (["--delta", "0"], "--delta must be > 0"),
    (["--delta", "-1"], "--delta must be > 0"),
    (["--eps-contrast", "1.0"], "--eps-contrast 1.0: must be < 1"),
    (["--eps-brightness", "-0.1"], "--eps-brightness -0.1: must be >= 0"),
    (["--vnnlib-version", "3"], "--vnnlib-version: invalid choice: '3'"),
])
def test_bad_options_are_one_line_errors(args, match, small_checkpoint, synth_data, tmp_path, capsys):
    code = _cli(["export", "--checkpoint", str(small_checkpoint), "--data", str(synth_data), "--out",
                 str(tmp_path / "b")] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_unwritable_path_and_mismatched_checkpoint(small_checkpoint, synth_data, tmp_path, capsys):
    import torch

    blob = torch.load(small_checkpoint, weights_only=True)
    blob["arch"]["fc"] = [65]
    torch.save(blob, tmp_path / "bad.pt")
    code = _cli(["export", "--checkpoint", str(tmp_path / "bad.pt"), "--data", str(synth_data), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "architecture does not match weights" in err and not (tmp_path / "b").exists()
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code = _cli(["export", "--checkpoint", str(small_checkpoint), "--data", str(synth_data), "--out", str(ro / "b")])
        assert code == 2 and "cannot write there" in capsys.readouterr().err
    code = _cli(["export", "--checkpoint", str(small_checkpoint), "--data", str(synth_data), "--out", "/proc/usnprune/b"])
    assert code == 2 and "cannot write there" in capsys.readouterr().err


def _cli(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
