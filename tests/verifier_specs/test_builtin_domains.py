"""Cut domains, ReLU splits, refinement and alpha-CROWN of the builtin verifier.

Each piece against an independent answer: the dual bound against scipy's LP solver, the
polygon concretization against dense samples inside the polygon, polygon splits against
point membership and area, CROWN intermediate bounds and alpha-CROWN against the plain
bounds they must not loosen and against onnxruntime samples, the float32-held weights
against the float64 ones, and the whole verifier against networks whose answers are known
exactly (``benchmarks/perf/synthetic_nets.py``) and against dense sampling on a saturated
image, where it splits along ReLU kinks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keypoint_nets
import numpy as np
import onnx
import pytest
import torch
from scipy.optimize import linprog

from usnprune.bounds import propagate as bounds
from usnprune.bounds import read_graph
from usnprune.bounds.domains import Domains, dual_min
from usnprune.bounds.operators import linear
from usnprune.export.onnx_model import run, session
from usnprune.export.vnnlib import parse_file
from usnprune.pruner.perturbation import Box
from usnprune.verifier_specs.base import Instance, load_backend
from usnprune.verifier_specs.builtin import split as splitting
from usnprune.verifier_specs.replay import replay

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "perf"))
import synthetic_nets  # noqa: E402


def test_dual_bound_is_sound_and_exact_for_one_cut():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, m = int(rng.integers(2, 9)), int(rng.integers(1, 4))
        G = rng.normal(size=(m, n))
        h = G @ rng.uniform(-0.5, 0.5, n) + rng.uniform(0, 0.5, m)  # a feasible point exists
        c = rng.normal(size=n)
        lp = linprog(c, A_ub=G, b_ub=h, bounds=[(-1, 1)] * n, method="highs").fun
        d = dual_min(torch.tensor(c)[None, None], torch.tensor(G)[None], torch.tensor(h)[None])[0, 0].item()
        assert d <= lp + 1e-9
        if m == 1:
            assert d == pytest.approx(lp, abs=1e-9)


def _random_polygon(rng, k=7):
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    return np.stack([np.cos(ang), np.sin(ang)], 1) * rng.uniform(0.5, 1.0)  # convex: points on a circle


def _inside(P, x):
    """Points ``x [N, 2]`` inside the convex counter-clockwise polygon ``P [V, 2]`` (closed)."""
    Q = np.roll(P, -1, axis=0)
    cross = (Q[:, 0] - P[:, 0])[None] * (x[:, None, 1] - P[None, :, 1]) - \
        (Q[:, 1] - P[:, 1])[None] * (x[:, None, 0] - P[None, :, 0])
    return (cross >= -1e-12).all(1)


def test_polygon_concretization_is_the_exact_minimum():
    rng = np.random.default_rng(1)
    P = _random_polygon(rng)
    lo, hi = P.min(0), P.max(0)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    verts = torch.as_tensor((P - mid) / rad)[None]
    dom = Domains(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None], verts=verts)
    c = torch.as_tensor(rng.normal(size=(1, 6, 3)))
    low = dom.lower(c)[0].numpy()
    pts = rng.uniform(lo, hi, (20000, 2))
    pts = pts[_inside(P, pts)]
    t = (pts - mid) / rad
    vals = t @ c[0, :, :2].numpy().T + c[0, :, 2].numpy()
    assert np.all(vals.min(0) >= low - 1e-12)  # sound
    at_vertices = ((P - mid) / rad) @ c[0, :, :2].numpy().T + c[0, :, 2].numpy()
    np.testing.assert_allclose(low, at_vertices.min(0), atol=1e-12)  # exact: attained at a vertex
    lw = c.transpose(1, 2).reshape(1, 3, 6)  # the same functions as linear bounds [B, K, N]
    cl, ch = dom.concretize(lw, lw)
    np.testing.assert_allclose(cl[0].numpy(), low, atol=1e-12)
    np.testing.assert_allclose(ch[0].numpy(), at_vertices.max(0), atol=1e-12)


def test_polygon_split_keeps_every_point():
    rng = np.random.default_rng(2)
    for _ in range(20):
        P = _random_polygon(rng)
        a = rng.normal(size=2)
        d = -float(a @ P[int(rng.integers(len(P)))]) * rng.uniform(0.2, 0.9)  # a line through the polygon
        batch = {"lo": P.min(0)[None], "hi": P.max(0)[None], "open": np.ones((1, 1), bool), "prio": np.zeros(1),
                 "poly": splitting._pad(P[None], np.array([len(P)])), "nv": np.array([len(P)])}
        kids = splitting.split(batch, np.array([0]), np.array([1]), np.array([0]), a[None], np.array([d]), 2)
        parts = [kids["poly"][i, :kids["nv"][i]] for i in range(len(kids["nv"]))]
        pts = rng.uniform(P.min(0), P.max(0), (5000, 2))
        pts = pts[_inside(P, pts)]
        covered = np.zeros(len(pts), bool)
        for Q in parts:
            covered |= _inside(Q, pts)
        assert covered.all()
        area = lambda Q: 0.5 * abs(np.sum(Q[:, 0] * np.roll(Q[:, 1], -1) - Q[:, 1] * np.roll(Q[:, 0], -1)))  # noqa: E731
        assert sum(area(Q) for Q in parts) == pytest.approx(area(P), rel=1e-12)


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(3)
    w = synthetic_nets.make(3, 0)
    return read_graph(synthetic_nets.onnx_model(w)), w, rng


def test_crown_intermediate_bounds_tighten_and_stay_sound(mlp):
    g, w, rng = mlp
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    plain = bounds.forward(g, lo, hi, keep_intervals=True)
    refined = bounds.forward(g, lo, hi, keep_intervals=True, refine=128)
    x = torch.as_tensor(rng.uniform(-1, 1, (4000, 3)))
    narrower = 0
    for t, (a, b) in refined.intervals.items():
        pa, pb = plain.intervals[t]
        assert torch.all(a >= pa - 1e-12) and torch.all(b <= pb + 1e-12)
        narrower += int(((b - a) < (pb - pa) - 1e-9).sum())
    assert narrower > 0
    y = torch.as_tensor(synthetic_nets.value(w, x.numpy()))
    assert torch.all(y >= refined.out.lo[0, 0] - 1e-9) and torch.all(y <= refined.out.hi[0, 0] + 1e-9)


def test_alpha_crown_is_never_worse_and_sound(mlp):
    g, w, rng = mlp
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    dom = Domains(lo, hi)
    fwd = bounds.forward(g, lo, hi, keep=bounds.stop_tensors(g, None))
    C = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    plain = dom.lower(bounds.backward(g, fwd, C, None))
    coefs, slopes = bounds.optimize_alpha(g, fwd, C, None, dom.lower, 20, 0.25)
    opt = dom.lower(coefs)
    assert torch.all(opt >= plain - 1e-12) and bool((opt > plain + 1e-6).any())
    assert slopes and all(bool(((s >= 0) & (s <= 1)).all()) for s in slopes.values())
    y = synthetic_nets.value(w, rng.uniform(-1, 1, (20000, 3)))
    assert y.min() >= opt[0, 0].item() - 1e-9 and -y.max() >= opt[0, 1].item() - 1e-9


def test_float32_held_weights_compute_the_same(monkeypatch):
    rng = np.random.default_rng(4)
    W = rng.normal(size=(40, 30)).astype(np.float32)
    small = linear._ConstantMatrix.__new__(linear._ConstantMatrix)
    small._set_matrix(W.astype(np.float64))
    monkeypatch.setattr(linear, "BIG", 100)
    monkeypatch.setattr(linear, "CHUNK", 200)  # several column blocks
    big = linear._ConstantMatrix.__new__(linear._ConstantMatrix)
    big._set_matrix(W)
    assert big.W.dtype == torch.float32 and small.W.dtype == torch.float64
    x = torch.as_tensor(rng.normal(size=(5, 40)))
    lam = torch.as_tensor(rng.normal(size=(5, 30)))
    for f in ("apply", "apply_abs"):
        torch.testing.assert_close(getattr(big, f)(0, x), getattr(small, f)(0, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(big.apply_T(0, lam), small.apply_T(0, lam), rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((big.apply(0, xg) * lam).sum(), xg)
    torch.testing.assert_close(g, small.apply_T(0, lam), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_known_answers_of_the_synthetic_networks(k, tmp_path):
    """Convex networks behind a hidden identity: max and min known exactly (vertices, LP)."""
    backend = load_backend("builtin")
    for inst in synthetic_nets.write(tmp_path, k, 0, 0.05):
        v = backend.verify(Instance(tmp_path, inst["onnx"], inst["vnnlib"], 60.0))
        assert v.status == inst["expected"], (inst["vnnlib"], v.status, v.message)
        if v.status == "falsified":
            assert replay(tmp_path / inst["onnx"], parse_file(tmp_path / inst["vnnlib"]), v.counterexample).ok


def test_relu_splits_on_a_saturated_image_are_sound(tmp_path, attack_points, monkeypatch):
    """A bright image: most pixels' clip kinks cross the box, so the verifier cuts along
    them. Every certificate survives the dense attack; ReLU splits did happen."""
    kinds = []
    real = splitting.split

    def spy(batch, rows, kind, *a):
        kinds.extend(kind.tolist())
        return real(batch, rows, kind, *a)

    monkeypatch.setattr(splitting, "split", spy)
    net = keypoint_nets.trained_net("tiny", steps=150, seed=2)
    img = np.clip(keypoint_nets.synthetic(1, 32, seed=5)[0][0] * 0.2 + 0.85, 0, 1).astype(np.float32)
    model = keypoint_nets.instance_model(net, img)
    op = tmp_path / "bright.onnx"
    onnx.save(model, op)
    sess = session(model)
    y0 = run(sess, Box().identity())[0]
    grid = run(sess, Box().grid(41))
    y_attack = run(sess, attack_points)
    backend = load_backend("builtin")
    seen = {}
    for kp in range(3):
        shift = float(np.abs(grid[:, 2 * kp:2 * kp + 2] - y0[2 * kp:2 * kp + 2]).max())
        for rel in (0.5, 1.05, 2.0):
            vp = tmp_path / f"kp{kp}_{rel}.vnnlib"
            vp.write_text(keypoint_nets.property_text((float(y0[2 * kp]), float(y0[2 * kp + 1])), kp, len(y0),
                                                      rel * shift))
            v = backend.verify(Instance(tmp_path, op.name, vp.name, 20.0))
            seen[v.status] = seen.get(v.status, 0) + 1
            prop = parse_file(vp)
            if v.status == "certified":
                bad = np.zeros(len(attack_points), bool)
                for d in prop.disjuncts:
                    bad |= d.contains(attack_points) & d.holds(y_attack)
                assert not bad.any(), f"{vp.name}: certified, but {attack_points[bad][0]} violates it"
            elif v.status == "falsified":
                assert replay(op, prop, v.counterexample).ok
    assert seen.get("certified") and seen.get("falsified"), seen
    assert 1 in kinds, "no ReLU split happened"


def test_refinement_choice_is_shared_by_the_thresholds_of_one_row(tmp_path, monkeypatch):
    """The refine/alpha trials run once per model, box and rows: a second threshold of the
    same row reuses the choice; a root that closes as it is decides nothing (not cached).
    Every answer is still the known one."""
    from usnprune.verifier_specs.builtin import bab

    calls = []
    real = bab.Search._tune
    monkeypatch.setattr(bab.Search, "_tune", lambda self, *a: calls.append(self.prop) or real(self, *a))
    k = 4
    w = synthetic_nets.make(k, 0)
    lo, hi = -np.ones(k), np.ones(k)
    fmin, fmax, _, _ = synthetic_nets.extremes(w, lo, hi)
    onnx.save(synthetic_nets.onnx_model(w), tmp_path / "net.onnx")
    backend = load_backend("builtin")
    span = fmax - fmin
    for i, thr in enumerate([fmax + 100 * span, fmax + 0.05 * span, fmax + 0.1 * span]):
        (tmp_path / f"p{i}.vnnlib").write_text(synthetic_nets.vnnlib(lo, hi, ">=", thr, "above the maximum"))
        v = backend.verify(Instance(tmp_path, "net.onnx", f"p{i}.vnnlib", 60.0))
        assert v.status == "certified", (thr, v.message)
        assert len(calls) == min(i + 1, 2), i  # p0's root closed: p1 tunes; p2 reuses p1's choice
