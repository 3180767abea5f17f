"""The bound rules residual keypoint backbones need, and a residual network end to end.

MaxPool / GlobalMaxPool, Concat, Pad, Transpose and Add/Sub of two computed branches are
also in ``test_builtin_operators`` (onnxruntime evaluation, transposes, exact affine
bounds, bounds containing onnxruntime samples). Here they are checked against an
independent interval arithmetic (onnxsim's ``interval.propagate``: the engine, with its
interval intersection on, must be at least as tight on every tensor, and sound), the max
relaxation pointwise, the refusals, and a residual network exported by torch through the
builtin verifier (every certificate attacked by dense sampling, every counterexample
replayed) against Marabou and onnxsim's runner.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import residual_nets
import torch
from onnx import helper
from test_builtin_operators import ACTIVATION_CASES, AFFINE_CASES, HI, LO, _box_points, _model, make_model
from test_crosscheck import decided

from usnprune.bounds import propagate as bounds
from usnprune.bounds import read_graph, supported_ops
from usnprune.bounds.operators import UnsupportedModel
from usnprune.export.onnx_model import run, session, simplify
from usnprune.export.vnnlib import parse_file
from usnprune.pruner.perturbation import Box
from usnprune.verifier_specs.base import Instance, load_backend
from usnprune.verifier_specs.replay import replay

NEW = ["transpose", "concat_branches", "pad_zero", "pad_value_and_crop", "add_vars", "sub_vars", "maxpool",
       "maxpool_pads_overlap", "maxpool_asym_dilated", "maxpool_same", "global_maxpool", "residual_block"]


def test_supported_ops_lists_the_residual_rules():
    assert {"MaxPool", "GlobalMaxPool", "Concat", "Pad", "Transpose", "Add", "Sub"} <= set(supported_ops())


@pytest.mark.parametrize("name", NEW)
def test_tighter_than_interval_arithmetic_and_sound(name):
    import onnxsim.interval

    m = _model(name)
    ref = onnxsim.interval.propagate(m, {"X": (LO[None], HI[None])}, input_shapes={"X": [1, 2]})
    # onnxsim has no rule for negative pads (crops): it leaves that output unbounded; the
    # case's bounds are exact anyway (test_affine_graphs_have_exact_bounds)
    assert not ref.unsupported or (name == "pad_value_and_crop" and ref.unsupported == ["Pad"]), ref.unsupported
    g = read_graph(m)
    lo, hi = torch.as_tensor(LO)[None], torch.as_tensor(HI)[None]
    x = _box_points()
    for ibp in (True, False):
        fwd = bounds.forward(g, lo, hi, ibp=ibp, keep_intervals=True)
        for t, (a, b) in fwd.intervals.items():
            r_lo, r_hi = (np.asarray(v, dtype=np.float64).reshape(a.shape) for v in ref.intervals[t])
            tol = 1e-9 * (1 + np.abs(r_lo).max() + np.abs(r_hi).max())
            if ibp:  # intersected with interval propagation: never looser
                assert np.all(a.numpy() >= r_lo - tol), f"{t}: lower below interval arithmetic"
                assert np.all(b.numpy() <= r_hi + tol), f"{t}: upper above interval arithmetic"
        out = fwd.out
        y = session(m).run(None, {"X": x.astype(np.float32)})[0].reshape(len(x), -1).astype(np.float64)
        tol = 1e-5 * (1 + np.abs(y).max())
        assert np.all(y >= out.lo.reshape(1, -1).numpy() - tol) and np.all(y <= out.hi.reshape(1, -1).numpy() + tol)


def test_residual_bounds_are_much_tighter_than_intervals():
    """Linear bounds keep the skip connection's correlation: out = m - m2 of two max pools of
    the same tensor, where interval arithmetic loses it."""
    import onnxsim.interval

    m = _model("residual_block")
    ref = onnxsim.interval.propagate(m, {"X": (LO[None], HI[None])}, input_shapes={"X": [1, 2]})
    g = read_graph(m)
    fwd = bounds.forward(g, torch.as_tensor(LO)[None], torch.as_tensor(HI)[None], keep=bounds.stop_tensors(g, None))
    C = torch.cat([torch.eye(g.n_outputs), -torch.eye(g.n_outputs)]).double()
    lb = bounds.lower_of(bounds.backward(g, fwd, C, None), 2)[0].numpy()
    width_crown = -(lb[: g.n_outputs] + lb[g.n_outputs:])
    r_lo, r_hi = ref.intervals["o"]
    assert width_crown.sum() < 0.7 * (r_hi - r_lo).sum()


@pytest.mark.parametrize("name", ["maxpool_pads_overlap", "maxpool_asym_dilated", "global_maxpool"])
def test_max_relaxation_is_sound_pointwise(name):
    g = read_graph(_model(name))
    rule = next(n.rule for n in g.nodes if n.op_type.endswith("MaxPool"))
    shape = tuple(g.shapes[next(n.inputs[0] for n in g.nodes if n.rule is rule)])
    rng = np.random.default_rng(5)
    a, b = (torch.as_tensor(rng.normal(size=(64,) + shape)) for _ in range(2))
    a[:8] = b[:8] + 3.0 * (torch.rand_like(b[:8]) > 0.7)  # dominant elements and ties
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    idx, dom, umax = rule.select(l, u)
    for s in np.linspace(0, 1, 11).tolist() + ["random"] * 10:
        t = torch.rand_like(l) if s == "random" else torch.full_like(l, s)
        z = l + t * (u - l)
        y = rule.forward(z).reshape(64, 1, *rule.out_shape)
        chosen = rule.gather(z.unsqueeze(1), idx)
        assert torch.all(chosen <= y + 1e-12)
        upper = torch.where(dom.reshape(chosen.shape), chosen, umax.reshape(chosen.shape))
        assert torch.all(y <= upper + 1e-12)
    assert bool(dom.any()) and bool((~dom).any())


def test_concat_with_a_constant_runs_at_batch_one():
    """A constant feature map concatenated to a bounded one (an ONNX Concat does not
    broadcast the batch, so onnxruntime only runs it at batch 1)."""
    c = np.random.default_rng(2).normal(size=(1, 2, 3, 3))
    m = make_model([helper.make_node("Concat", ["c", "h", "h"], ["o"], axis=-3)], {"c": c}, (1, 3, 3), (4, 3, 3),
                   front_scale=4.0)
    g = read_graph(m)
    x = _box_points(5, 10)
    sess = session(m)
    ort = np.concatenate([sess.run(None, {"X": xi[None].astype(np.float32)})[0].reshape(1, -1) for xi in x])
    np.testing.assert_allclose(g.evaluate(torch.as_tensor(x)).numpy(), ort, rtol=1e-5, atol=1e-5)
    fwd = bounds.forward(g, torch.as_tensor(LO)[None], torch.as_tensor(HI)[None])
    assert np.all(ort >= fwd.out.lo.reshape(1, -1).numpy() - 1e-4) and np.all(ort <= fwd.out.hi.reshape(1, -1).numpy() + 1e-4)
    np.testing.assert_allclose(fwd.out.lo[0, :2].numpy(), c[0], atol=1e-6)  # the constant part is exact


def _one(node, shape, out_shape, inits=None):
    return make_model([node], inits or {}, shape, out_shape)


@pytest.mark.parametrize("node,shape,out_shape,inits,match", [
    (helper.make_node("MaxPool", ["h"], ["o", "i"], kernel_shape=[2, 2], name="mp"), (1, 4, 4), (1, 3, 3), None,
     r"node 'mp' \(MaxPool\): the Indices output is not supported"),
    (helper.make_node("MaxPool", ["h"], ["o"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, name="mp"),
     (1, 5, 5), (1, 3, 3), None, r"node 'mp' \(MaxPool\): ceil_mode=1"),
    (helper.make_node("Pad", ["h", "p"], ["o"], mode="reflect", name="pd"), (1, 4, 4), (1, 6, 6),
     {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)}, r"node 'pd' \(Pad\): mode='reflect' is not supported"),
    (helper.make_node("Pad", ["h", "p"], ["o"], name="pd"), (1, 4, 4), (1, 4, 4),
     {"p": np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64)}, r"node 'pd' \(Pad\): padding the batch"),
    (helper.make_node("Transpose", ["h"], ["o"], perm=[1, 0, 2], name="tr"), (3, 4), (3, 4), None,
     r"node 'tr' \(Transpose\): perm \[1, 0, 2\] would move the batch dimension"),
    (helper.make_node("Concat", ["h", "h"], ["o"], axis=0, name="cc"), (3,), (3,), None,
     r"node 'cc' \(Concat\): axis 0 must be a non-batch axis"),
])
def test_refusals_name_the_node(node, shape, out_shape, inits, match):
    with pytest.raises(UnsupportedModel, match=match):
        read_graph(_one(node, shape, out_shape, inits))


# ---- a residual network exported by torch, end to end --------------------------------------


@pytest.fixture(scope="module")
def residual_instances(tmp_path_factory):
    """The full residual net (pads, Pad, Concat) and Marabou's variant, 2 keypoints, tolerances
    at 0.5x (falsifiable), 1.02x and 3x the largest shift seen on a grid."""
    import keypoint_nets

    folder = tmp_path_factory.mktemp("residual")
    img = keypoint_nets.synthetic(1, 8, seed=11)[0][0]
    out = []
    for variant, marabou in (("res", False), ("resm", True)):
        net = residual_nets.trained(steps=120, seed=0, width=3, keypoints=2, marabou=marabou)
        model = residual_nets.instance_model(net, img)
        op = folder / f"{variant}.onnx"
        onnx.save(model, op)
        onnx.save(simplify(model), folder / f"{variant}_simplified.onnx")
        sess = session(model)
        y0 = run(sess, Box().identity())[0]
        grid = run(sess, Box().grid(41))
        for k in range(2):
            shift = float(np.abs(grid[:, 2 * k:2 * k + 2] - y0[2 * k:2 * k + 2]).max())
            for rel in (0.5, 1.02, 3.0):
                vp = folder / f"{variant}_kp{k}_{rel:g}.vnnlib"
                vp.write_text(keypoint_nets.property_text((float(y0[2 * k]), float(y0[2 * k + 1])), k, len(y0),
                                                          rel * shift))
                out.append((variant, k, rel, op, vp))
    return folder, out


def test_the_exported_residual_graph_reads_as_written(residual_instances):
    folder, insts = residual_instances
    g = read_graph(folder / "res.onnx")  # the exporter's pad arithmetic (ConstantOfShape, Slice, ...) is folded
    ops = [n.op_type for n in g.nodes]
    for op in ("MaxPool", "Add", "Concat", "Pad", "Sub"):
        assert op in ops
    x = Box().grid(9)
    np.testing.assert_allclose(g.evaluate(torch.as_tensor(x)).numpy(), run(session(onnx.load(folder / "res.onnx")), x),
                               rtol=1e-5, atol=1e-4)


def test_residual_network_end_to_end(residual_instances, attack_points):
    """Every certificate survives the dense attack; every counterexample replays; the loose
    tolerances certify and the tight ones falsify."""
    folder, insts = residual_instances
    backend = load_backend("builtin", threads=1)  # OpenMP hand-offs stall on a loaded shared machine
    seen = {}
    for variant in ("res", "resm"):
        y = run(session(onnx.load(folder / f"{variant}.onnx")), attack_points)
        for v_, k, rel, op, vp in insts:
            if v_ != variant:
                continue
            v = backend.verify(Instance(folder, op.name, vp.name, 20.0))
            prop = parse_file(vp)
            if v.status == "certified":
                bad = np.zeros(len(attack_points), dtype=bool)
                for d in prop.disjuncts:
                    bad |= d.contains(attack_points) & d.holds(y)
                assert not bad.any(), f"{vp.name}: certified, but {attack_points[bad][0]} violates it"
            elif v.status == "falsified":
                assert replay(op, prop, v.counterexample).ok
            seen[(rel, v.status)] = seen.get((rel, v.status), 0) + 1
    assert seen.get((3.0, "certified")) == 4 and seen.get((0.5, "falsified")) == 4, seen


@pytest.mark.slow
def test_residual_network_agrees_with_marabou_and_onnxsim(residual_instances):
    """Marabou reads the unpadded variant, onnxsim's runner the simplified full one; on
    every instance both decide, the builtin agrees. (onnxsim's runner answers unknown on
    the certifiable ones here; Marabou's sat points near the boundary often fail replay.)"""
    folder, insts = residual_instances
    builtin = load_backend("builtin", threads=1)
    agree = {}
    for name, variant, rels in (("marabou", "resm", (0.5, 3.0)), ("onnxsim", "res", (0.5,))):
        other = load_backend(name)
        onnx_name = f"{variant}.onnx" if name == "marabou" else f"{variant}_simplified.onnx"
        for v_, k, rel, _, vp in insts:
            if v_ != variant or rel not in rels or (name == "marabou" and k > 0):
                continue
            op = folder / onnx_name
            a = decided(builtin.verify(Instance(folder, onnx_name, vp.name, 20.0)), op, vp)
            theirs = other.verify(Instance(folder, onnx_name, vp.name, 60.0))
            assert theirs.status != "error", f"{name} on {vp.name}: {theirs.message}"
            b = decided(theirs, op, vp)
            if a and b:
                assert a == b, f"{vp.name}: builtin {a}, {name} {b}"
                agree[(name, a)] = agree.get((name, a), 0) + 1
    assert agree.get(("marabou", "certified")) and agree.get(("onnxsim", "falsified")), agree
