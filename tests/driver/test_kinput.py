"""More than two inputs: a 5-input ReLU network verified end to end through ``usnprune
verify``, its counterexample stored with all 5 coordinates and replayed; the sampling
check keeps its fixed budget whatever the input dimension."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from usnprune.driver.cli import main
from usnprune.export.vnnlib import parse_file
from usnprune.verifier_specs.base import Instance, Verdict
from usnprune.verifier_specs.replay import replay
from usnprune.verifier_specs.trust import BUDGET, REFINE_POINTS, REFINE_ROUNDS, Checker, base_points

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("trust_check", ROOT / "benchmarks" / "perf" / "trust_check.py")
trust_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trust_check)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 12, 40])
def test_the_sample_has_a_fixed_budget_inside_the_box_in_float32(k):
    rng = np.random.default_rng(k)
    lo = rng.uniform(-1, 0, k) - 0.45
    hi = lo + rng.uniform(0.01, 1, k)
    pts = base_points(lo, hi)
    assert pts.shape == (BUDGET, k)
    assert (pts >= lo).all() and (pts <= hi).all()  # exactly, not within a tolerance
    assert np.array_equal(pts.astype(np.float32).astype(np.float64), pts)  # what onnxruntime is fed
    corners = np.where(rng.integers(0, 2, k) == 1, hi, lo)
    if 2 ** k <= 256 and k > 2:  # every corner is sampled (as its float32 inside the box)
        assert np.any(np.all(np.abs(pts - corners) < 1e-6, axis=1))


def test_a_5_input_instance_end_to_end(tmp_path, capsys):
    bench = tmp_path / "bench"
    info = trust_check.make_benchmark(bench, k=5, hidden=(16, 16), seed=3, timeout=60, fractions=(0.2,))
    run = tmp_path / "run"
    code = main(["verify", str(bench), "--out", str(run), "--executor", "serial"])
    assert code == 0, capsys.readouterr().err
    df = pd.read_csv(run / "instances.csv").set_index("vnnlib")
    fals = df.loc["vnnlib/falsified.vnnlib"]
    assert fals["verdict"] == "falsified"
    cex = json.loads(fals["cex"])
    assert len(cex) == 5 and pd.isna(fals["cex_c"]) and pd.isna(fals["cex_b"])  # (c, b) is the 2-D case only
    prop = parse_file(bench / "vnnlib" / "falsified.vnnlib")
    res = replay(str(bench / "onnx" / "net.onnx"), prop, cex, tol=0.0)  # stored inside the box: no tolerance needed
    assert res.ok and np.array_equal(res.x, cex)
    assert df.loc["vnnlib/t0.2.vnnlib", "verdict"] == "certified"
    assert (df["check_time"] > 0).all()
    assert info["thresholds"]["falsified.vnnlib"] < info["sampled_max"]


def test_the_check_evaluates_at_most_its_budget_on_a_5_input_net(tmp_path):
    bench = tmp_path / "bench"
    trust_check.make_benchmark(bench, k=5, hidden=(8,), seed=1, timeout=10, fractions=())
    inst = Instance(bench, "onnx/net.onnx", "vnnlib/falsified.vnnlib", 10)
    checker = Checker()
    pts, violated = checker.sample(inst, parse_file(inst.vnnlib_path))
    assert len(pts) <= BUDGET + REFINE_ROUNDS * REFINE_POINTS  # a 21^5 grid was 4,084,101 points
    assert violated.any()
    verdict, sample_violated = checker.check(inst, Verdict("certified", 1.0))
    assert verdict.status == "error" and verdict.message.startswith("SOUNDNESS ALARM") and sample_violated
    assert len(verdict.counterexample) == 5
