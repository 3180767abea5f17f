"""Each bound rule of the builtin verifier against independently computed answers.

* concrete evaluation agrees with onnxruntime on every operator graph;
* ``apply_T`` is the transpose of ``apply`` and ``apply_abs`` is ``|M|`` (dense matrices
  built column by column);
* affine graphs get exact bounds (the min/max over the box corners), graphs with
  activations get bounds that contain dense samples run through onnxruntime;
* relaxations are sound pointwise; golden values for a 2-neuron network worked out by
  hand; and forward + backward bounds equal an independent dense numpy implementation of
  forward-mode linear bounds and CROWN on an MLP.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from usnprune.bounds import propagate as bounds
from usnprune.bounds.graph import read_graph
from usnprune.bounds.operators import REGISTRY, AffineRule, UnsupportedModel
from usnprune.bounds.operators.activation import Clip, Relu
from usnprune.export.onnx_model import session

LO = np.array([0.9, -0.1])
HI = np.array([1.1, 0.1])


def _f32(a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32))


def make_model(nodes, inits, shape, out_shape, n_in=2, seed=0, out="o", front_scale=1.0):
    """X [batch, n_in] -> Gemm -> Reshape to [batch, *shape] ("h") -> nodes -> ``out``."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    inits = dict(inits)
    inits["front_W"] = rng.normal(size=(n_in, size)) * front_scale
    inits["front_b"] = rng.normal(size=size) * 0.3
    inits["front_shape"] = np.array([-1, *shape], dtype=np.int64)
    all_nodes = [helper.make_node("Gemm", ["X", "front_W", "front_b"], ["f"], name="front"),
                 helper.make_node("Reshape", ["f", "front_shape"], ["h"], name="front_reshape")] + nodes
    tensors = []
    for k, v in inits.items():
        v = np.asarray(v)
        tensors.append(numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k))
    g = helper.make_graph(all_nodes, "op", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", n_in])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", *out_shape])], tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


R = np.random.default_rng(1)
AFFINE_CASES = {
    "gemm": ([helper.make_node("Gemm", ["h", "W", "B"], ["o"], transB=1, alpha=0.5, beta=2.0)],
             {"W": R.normal(size=(4, 6)), "B": R.normal(size=4)}, (6,), (4,)),
    "matmul": ([helper.make_node("MatMul", ["h", "W"], ["o"])], {"W": R.normal(size=(6, 3))}, (6,), (3,)),
    "matmul_3d": ([helper.make_node("MatMul", ["h", "W"], ["o"])], {"W": R.normal(size=(4, 3))}, (2, 4), (2, 3)),
    "conv": ([helper.make_node("Conv", ["h", "W", "B"], ["o"], pads=[1, 1, 1, 1], strides=[2, 2])],
             {"W": R.normal(size=(4, 2, 3, 3)), "B": R.normal(size=4)}, (2, 7, 7), (4, 4, 4)),
    "conv_asym_dilated": ([helper.make_node("Conv", ["h", "W"], ["o"], pads=[0, 1, 2, 0], dilations=[2, 1])],
                          {"W": R.normal(size=(3, 2, 2, 3))}, (2, 6, 5), (3, 6, 3)),
    "conv_groups_same": ([helper.make_node("Conv", ["h", "W"], ["o"], group=2, auto_pad="SAME_UPPER", strides=[2, 2])],
                         {"W": R.normal(size=(4, 1, 3, 3))}, (2, 6, 6), (4, 3, 3)),
    "avgpool": ([helper.make_node("AveragePool", ["h"], ["o"], kernel_shape=[2, 2], strides=[2, 2])], {},
                (2, 4, 4), (2, 2, 2)),
    "avgpool_pad": ([helper.make_node("AveragePool", ["h"], ["o"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], {},
                    (2, 4, 4), (2, 4, 4)),
    "avgpool_pad_include": ([helper.make_node("AveragePool", ["h"], ["o"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                              count_include_pad=1, strides=[2, 2])], {}, (1, 5, 5), (1, 3, 3)),
    "global_avgpool": ([helper.make_node("GlobalAveragePool", ["h"], ["o"])], {}, (3, 4, 4), (3, 1, 1)),
    "flatten": ([helper.make_node("Flatten", ["h"], ["o"], axis=1)], {}, (2, 3, 2), (12,)),
    "reshape_zero": ([helper.make_node("Reshape", ["h", "s"], ["o"])], {"s": np.array([0, 3, -1], dtype=np.int64)},
                     (2, 3, 2), (3, 4)),
    "identity": ([helper.make_node("Identity", ["h"], ["o"])], {}, (5,), (5,)),
    "unsqueeze_squeeze": ([helper.make_node("Unsqueeze", ["h", "ax"], ["u"]), helper.make_node("Squeeze", ["u", "ax"], ["o"])],
                          {"ax": np.array([2], dtype=np.int64)}, (3, 2), (3, 2)),
    "add_const": ([helper.make_node("Add", ["h", "c"], ["o"])], {"c": R.normal(size=(3, 1))}, (3, 4), (3, 4)),
    "add_const_broadcast_up": ([helper.make_node("Add", ["h", "c"], ["o"])], {"c": R.normal(size=(2, 3))}, (1, 3), (2, 3)),
    "sub_const_first": ([helper.make_node("Sub", ["c", "h"], ["o"])], {"c": R.normal(size=(1, 4))}, (4,), (4,)),
    "sub_vars": ([helper.make_node("Gemm", ["h", "W"], ["g"]), helper.make_node("Sub", ["g", "h"], ["o"])],
                 {"W": R.normal(size=(4, 4))}, (4,), (4,)),
    "add_vars": ([helper.make_node("Neg", ["h"], ["n"]), helper.make_node("Mul", ["n", "k"], ["n2"]),
                  helper.make_node("Add", ["h", "n2"], ["o"])], {"k": np.array(3.0)}, (4,), (4,)),
    "mul_const": ([helper.make_node("Mul", ["h", "c"], ["o"])], {"c": R.normal(size=(1, 2, 1, 3))}, (2, 2, 3), (2, 2, 3)),
    "div_const": ([helper.make_node("Div", ["h", "c"], ["o"])], {"c": np.array([2.0, -4.0, 0.5])}, (3,), (3,)),
    "neg": ([helper.make_node("Neg", ["h"], ["o"])], {}, (3,), (3,)),
    "batchnorm": ([helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["o"], epsilon=1e-3)],
                  {"s": R.normal(size=3), "b": R.normal(size=3), "m": R.normal(size=3), "v": R.uniform(0.5, 2, size=3)},
                  (3, 2, 2), (3, 2, 2)),
    "transpose": ([helper.make_node("Transpose", ["h"], ["o"], perm=[0, 2, 3, 1])], {}, (2, 3, 4), (3, 4, 2)),
    "concat_branches": ([helper.make_node("Gemm", ["h", "W"], ["g"]), helper.make_node("Neg", ["h"], ["n"]),
                         helper.make_node("Concat", ["g", "h", "n"], ["o"], axis=1)],
                        {"W": R.normal(size=(4, 3))}, (4,), (11,)),
    "pad_zero": ([helper.make_node("Pad", ["h", "p"], ["o"])],
                 {"p": np.array([0, 0, 1, 2, 0, 0, 2, 0], dtype=np.int64)}, (2, 3, 3), (2, 6, 5)),
    "pad_value_and_crop": ([helper.make_node("Pad", ["h", "p", "v"], ["o"])],
                           {"p": np.array([0, 0, -1, 1, 0, 1, 0, -1], dtype=np.int64), "v": np.array(0.7)},
                           (2, 3, 3), (3, 2, 3)),
}
ACTIVATION_CASES = {
    "relu": ([helper.make_node("Relu", ["h"], ["o"])], {}, (12,), (12,)),
    "maxpool": ([helper.make_node("MaxPool", ["h"], ["o"], kernel_shape=[2, 2], strides=[2, 2])], {},
                (2, 4, 4), (2, 2, 2)),
    "maxpool_pads_overlap": ([helper.make_node("MaxPool", ["h"], ["o"], kernel_shape=[3, 3], strides=[2, 2],
                                               pads=[1, 1, 1, 1])], {}, (2, 5, 5), (2, 3, 3)),
    "maxpool_asym_dilated": ([helper.make_node("MaxPool", ["h"], ["o"], kernel_shape=[2, 3], pads=[0, 2, 1, 0],
                                               dilations=[2, 1])], {}, (1, 5, 4), (1, 4, 4)),
    "maxpool_same": ([helper.make_node("MaxPool", ["h"], ["o"], kernel_shape=[3, 3], strides=[2, 2],
                                       auto_pad="SAME_UPPER")], {}, (2, 5, 5), (2, 3, 3)),
    "global_maxpool": ([helper.make_node("GlobalMaxPool", ["h"], ["o"])], {}, (3, 2, 3), (3, 1, 1)),
    "residual_block": ([
        helper.make_node("Conv", ["h", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "W2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "h"], ["a"]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("MaxPool", ["ra"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["ra"], ["m2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sub", ["m", "m2"], ["o"]),
    ], {"W": R.normal(size=(2, 2, 3, 3)), "W2": R.normal(size=(2, 2, 3, 3)) * 0.5}, (2, 4, 4), (2, 2, 2)),
    "clip": ([helper.make_node("Clip", ["h", "lo", "hi"], ["o"])], {"lo": np.array(-0.2), "hi": np.array(0.4)},
             (12,), (12,)),
    "clip_min_only": ([helper.make_node("Clip", ["h", "lo"], ["o"])], {"lo": np.array(0.1)}, (12,), (12,)),
    "conv_relu_pool_gemm": ([
        helper.make_node("Conv", ["h", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["fl"]),
        helper.make_node("Gemm", ["fl", "W2", "B2"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["g2"]),
        helper.make_node("Clip", ["g2", "lo", "hi"], ["o"]),
    ], {"W": R.normal(size=(3, 2, 3, 3)), "W2": R.normal(size=(5, 12)), "B2": R.normal(size=5),
        "lo": np.array(0.0), "hi": np.array(2.0)}, (2, 4, 4), (5,)),
}


def _model(name):
    nodes, inits, shape, out_shape = {**AFFINE_CASES, **ACTIVATION_CASES}[name]
    # a wide box (scaled front) so that activations see stable and unstable neurons
    return make_model(nodes, inits, shape, out_shape, front_scale=4.0)


def _box_points(n=41, extra=400, seed=0):
    g = np.array(list(itertools.product(np.linspace(LO[0], HI[0], n), np.linspace(LO[1], HI[1], n))))
    return np.concatenate([g, np.random.default_rng(seed).uniform(LO, HI, (extra, 2))])


def test_registry_covers_the_brief():
    for op in ("Gemm", "MatMul", "Conv", "Relu", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten", "Identity",
               "Squeeze", "Unsqueeze", "Add", "Sub", "Mul", "Div", "Neg", "BatchNormalization", "Clip"):
        assert op in REGISTRY


@pytest.mark.parametrize("name", sorted({**AFFINE_CASES, **ACTIVATION_CASES}))
def test_concrete_evaluation_matches_onnxruntime(name):
    m = _model(name)
    g = read_graph(m)
    x = _box_points(11, 50)
    ours = g.evaluate(torch.as_tensor(x)).numpy()
    ort = session(m).run(None, {"X": x.astype(np.float32)})[0].reshape(len(x), -1)
    np.testing.assert_allclose(ours, ort, rtol=1e-5, atol=1e-5)


def _dense(fn, in_shape):
    """The matrix of a linear map, one column per input element."""
    n = int(np.prod(in_shape))
    eye = torch.eye(n, dtype=torch.float64).reshape((n,) + tuple(in_shape))
    return fn(eye).reshape(n, -1).T


@pytest.mark.parametrize("name", sorted(AFFINE_CASES))
def test_transpose_and_abs_of_every_affine_rule(name):
    g = read_graph(_model(name))
    for node in g.nodes:
        rule = node.rule
        if not isinstance(rule, AffineRule):
            continue
        for i, t in enumerate(node.inputs):
            shape = g.shapes[t]
            M = _dense(lambda x: rule.apply(i, x), shape)
            MT = _dense(lambda y: rule.apply_T(i, y), g.shapes[node.output])
            np.testing.assert_allclose(MT.numpy(), M.T.numpy(), atol=1e-12, err_msg=f"{node.name}: apply_T")
            Mabs = _dense(lambda x: rule.apply_abs(i, x), shape)
            np.testing.assert_allclose(Mabs.numpy(), M.abs().numpy(), atol=1e-12, err_msg=f"{node.name}: apply_abs")


def _bounds(m, depth=None, rows=None):
    g = read_graph(m)
    lo, hi = torch.as_tensor(LO)[None], torch.as_tensor(HI)[None]
    fwd = bounds.forward(g, lo, hi, keep=bounds.stop_tensors(g, depth), ibp=True)
    n_out = g.n_outputs
    C = torch.as_tensor(np.concatenate([np.eye(n_out), -np.eye(n_out)]) if rows is None else rows)
    back = bounds.lower_of(bounds.backward(g, fwd, C, depth), 2)[0].numpy()
    fwd_rows = bounds.lower_of(bounds.forward_rows(fwd, C), 2)[0].numpy()
    return g, fwd, back, fwd_rows, C.numpy()


@pytest.mark.parametrize("name", sorted(AFFINE_CASES))
def test_affine_graphs_have_exact_bounds(name):
    m = _model(name)
    g, fwd, back, fwd_rows, C = _bounds(m)
    corners = np.array(list(itertools.product(*zip(LO, HI))))
    y = g.evaluate(torch.as_tensor(corners)).numpy()  # an affine function is extreme at corners
    n = g.n_outputs
    np.testing.assert_allclose(fwd.out.lo.reshape(-1).numpy(), y.min(0), atol=1e-9)
    np.testing.assert_allclose(fwd.out.hi.reshape(-1).numpy(), y.max(0), atol=1e-9)
    np.testing.assert_allclose(back, (y @ C.T).min(0), atol=1e-9)
    np.testing.assert_allclose(fwd_rows[:n], y.min(0), atol=1e-9)


@pytest.mark.parametrize("name", sorted(ACTIVATION_CASES))
@pytest.mark.parametrize("depth", [0, 1, None])
def test_bounds_contain_onnxruntime_samples(name, depth):
    m = _model(name)
    g, fwd, back, fwd_rows, C = _bounds(m, depth)
    x = _box_points()
    y = session(m).run(None, {"X": x.astype(np.float32)})[0].reshape(len(x), -1).astype(np.float64)
    tol = 1e-5 * (1 + np.abs(y).max())  # onnxruntime is float32; the bounds are for the exact function
    assert np.all(y >= fwd.out.lo.reshape(-1).numpy() - tol)
    assert np.all(y <= fwd.out.hi.reshape(-1).numpy() + tol)
    rows = y @ C.T
    assert np.all(rows.min(0) >= back - tol)
    assert np.all(rows.min(0) >= fwd_rows - tol)
    # and they are not vacuous: within a few units of the sampled range
    assert np.all(back > rows.min(0) - 10 * (1 + np.abs(rows).max()))


@pytest.mark.parametrize("rule_cls,args", [(Relu, {}), (Clip, {"lo": -0.5, "hi": 1.0})])
@pytest.mark.parametrize("mode", ["adaptive", "parallel", "zero"])
def test_relaxations_are_sound_pointwise(rule_cls, args, mode):
    rule = rule_cls.__new__(rule_cls)
    if args:
        rule.lo, rule.hi = args["lo"], args["hi"]
    rng = np.random.default_rng(3)
    a = torch.as_tensor(rng.normal(size=4000) * 2)
    b = torch.as_tensor(rng.normal(size=4000) * 2)
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    ls, lb, us, ub = rule.relax(l, u, mode)
    for s in np.linspace(0, 1, 21):
        z = l + s * (u - l)
        f = rule.forward(z)
        assert torch.all(ls * z + lb <= f + 1e-12)
        assert torch.all(f <= us * z + ub + 1e-12)


def test_golden_two_relu_network():
    """y = relu(x0 + x1) + relu(x1 - x0) on [-1, 1]^2, worked out by hand.

    Both pre-activations lie in [-2, 2]: the upper chord is 0.5 z + 1, the adaptive lower
    bound is 0 (u > -l fails at equality). Forward upper: 0.5(x0 + x1) + 1 + 0.5(x1 - x0) + 1
    = x1 + 2, so 3; lower 0. The true range is [0, 2].
    """
    inits = [_f32([[1, -1], [1, 1]]), _f32([[1], [1]])]
    inits[0].name, inits[1].name = "W1", "W2"
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W1"], ["z"]), helper.make_node("Relu", ["z"], ["r"]),
                           helper.make_node("MatMul", ["r", "W2"], ["Y"])], "golden",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = read_graph(m)
    lo, hi = torch.tensor([[-1.0, -1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    fwd = bounds.forward(graph, lo, hi, keep=bounds.stop_tensors(graph, None))
    assert fwd.out.lo.item() == 0.0 and fwd.out.hi.item() == 3.0
    C = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    lb = bounds.lower_of(bounds.backward(graph, fwd, C, None), 2)[0]
    assert lb.tolist() == [0.0, -3.0]
    par = bounds.forward(graph, lo, hi, keep={"X"}, relu_lower="parallel")
    # parallel lower: 0.5 z per neuron, so y >= x1: min -1, but the interval [0, 4] keeps 0
    assert par.out.lo.item() == 0.0 and par.out.hi.item() == 3.0


def test_instability_scores_point_at_the_input_that_matters():
    """On a black image z = c * 0 + b: only brightness moves any neuron, so only it scores."""
    from usnprune.export.onnx_model import build_model, simplify
    from usnprune.pruner.models import KeypointNet, arch_from

    torch.manual_seed(0)
    net = KeypointNet(arch_from({"conv": [2], "fc": [4], "input_size": 8, "num_keypoints": 1})).eval()
    g = read_graph(simplify(build_model(np.zeros((1, 8, 8), dtype=np.float32), net.to_plain())))
    fwd = bounds.forward(g, torch.as_tensor(LO)[None], torch.as_tensor(HI)[None], split_scores=True)
    c_score, b_score = fwd.split_scores[0].tolist()
    assert c_score == 0.0 and b_score > 0.0


# ---- an independent dense implementation of forward-mode bounds + CROWN for MLPs ---------


def _dense_reference(Ws, bs, lo, hi):
    """Plain numpy, explicit W+ / W- splits: forward linear bounds in x (not t), then CROWN."""
    n = len(lo)
    # linear functions of x: (A [m, n], c [m]) for lower and upper
    A_l = A_u = np.eye(n)
    c_l = c_u = np.zeros(n)
    relaxes = []

    def conc(A, c, lower):
        pos, neg = np.maximum(A, 0), np.minimum(A, 0)
        return (pos @ lo + neg @ hi + c) if lower else (pos @ hi + neg @ lo + c)

    for k, (W, b) in enumerate(zip(Ws, bs)):
        Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
        A_l, A_u, c_l, c_u = Wp @ A_l + Wn @ A_u, Wp @ A_u + Wn @ A_l, Wp @ c_l + Wn @ c_u + b, Wp @ c_u + Wn @ c_l + b
        if k == len(Ws) - 1:
            break
        l, u = conc(A_l, c_l, True), conc(A_u, c_u, False)
        unstable = (l < 0) & (u > 0)
        us = np.where(l >= 0, 1.0, np.where(unstable, u / np.where(unstable, u - l, 1), 0.0))
        ub = np.where(unstable, -us * l, 0.0)
        ls = np.where(l >= 0, 1.0, np.where(unstable, (u > -l).astype(float), 0.0))
        relaxes.append((ls, us, ub))
        A_l, c_l = ls[:, None] * A_l, ls * c_l
        A_u, c_u = us[:, None] * A_u, us * c_u + ub
    out_lo, out_hi = conc(A_l, c_l, True), conc(A_u, c_u, False)
    # CROWN for rows +e_j and -e_j of the output
    m = Ws[-1].shape[0]
    lam = np.concatenate([np.eye(m), -np.eye(m)])
    const = np.zeros(len(lam))
    for k in range(len(Ws) - 1, -1, -1):
        const += lam @ bs[k]
        lam = lam @ Ws[k]
        if k > 0:
            ls, us, ub = relaxes[k - 1]
            pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
            const += neg @ ub
            lam = pos * ls + neg * us
    crown = np.maximum(lam, 0) @ lo + np.minimum(lam, 0) @ hi + const
    return out_lo, out_hi, crown


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_dense_crown_on_an_mlp(seed):
    rng = np.random.default_rng(seed)
    sizes = [2, 16, 12, 5]
    Ws = [rng.normal(size=(o, i)).astype(np.float32).astype(np.float64) for i, o in zip(sizes, sizes[1:])]
    bs = [rng.normal(size=o).astype(np.float32).astype(np.float64) for o in sizes[1:]]
    nodes, inits, cur = [], [], "X"
    for k, (W, b) in enumerate(zip(Ws, bs)):
        out = "Y" if k == len(Ws) - 1 else f"z{k}"
        inits += [numpy_helper.from_array(W.astype(np.float32), f"W{k}"), numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [out], transB=1))
        if out != "Y":
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            cur = f"r{k}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = read_graph(m)
    lo, hi = np.array([-1.0, -0.5]), np.array([0.5, 1.0])
    ref_lo, ref_hi, ref_crown = _dense_reference(Ws, bs, lo, hi)
    fwd = bounds.forward(graph, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None],
                         keep=bounds.stop_tensors(graph, None), ibp=False)
    np.testing.assert_allclose(fwd.out.lo[0].numpy(), ref_lo, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fwd.out.hi[0].numpy(), ref_hi, rtol=1e-10, atol=1e-10)
    C = torch.as_tensor(np.concatenate([np.eye(5), -np.eye(5)]))
    crown = bounds.lower_of(bounds.backward(graph, fwd, C, None), 2)[0].numpy()
    np.testing.assert_allclose(crown, ref_crown, rtol=1e-10, atol=1e-10)


# ---- what the graph reader refuses ----------------------------------------------------------


def _simple(nodes, inits, out_shape, inputs=None):
    g = helper.make_graph(nodes, "bad", inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["batch", *out_shape])],
                          [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), k)
                           for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def test_unsupported_operator_names_the_node():
    m = _simple([helper.make_node("Sigmoid", ["X"], ["o"], name="squash")], {}, (2,))
    with pytest.raises(UnsupportedModel, match=r"node 'squash' \(Sigmoid\) is not supported by the builtin verifier; "
                                               r"supported: .*Conv.*Relu"):
        read_graph(m)


def test_non_constant_weights_are_refused():
    m = _simple([helper.make_node("Reshape", ["X", "s"], ["X2"], name="r"),
                 helper.make_node("MatMul", ["X", "X2"], ["o"], name="bilinear")], {"s": np.array([2, -1])}, (2,))
    with pytest.raises(UnsupportedModel, match=r"node 'r' \(Reshape\).*batch"):
        read_graph(m)
    m = _simple([helper.make_node("Identity", ["X"], ["Xt"], name="copy"),
                 helper.make_node("MatMul", ["X", "Xt"], ["o"], name="bilinear")], {}, (2,))
    with pytest.raises(UnsupportedModel, match=r"node 'bilinear' \(MatMul\): input 1 \('Xt'\) depends on the network input"):
        read_graph(m)
    m = _simple([helper.make_node("Gemm", ["X", "X"], ["o"], name="g")], {}, (2,))
    with pytest.raises(UnsupportedModel, match=r"node 'g' \(Gemm\): input 1 \('X'\) depends on the network input"):
        read_graph(m)
    m = _simple([helper.make_node("Mul", ["X", "X"], ["o"], name="sq")], {}, (2,))
    with pytest.raises(UnsupportedModel, match=r"node 'sq' \(Mul\): Mul of two non-constant tensors is not linear"):
        read_graph(m)


def test_other_refusals():
    two_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2]),
                  helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["batch", 2])]
    with pytest.raises(UnsupportedModel, match="exactly one network input"):
        read_graph(_simple([helper.make_node("Add", ["X", "Z"], ["o"])], {}, (2,), two_inputs))
    no_batch = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])]
    with pytest.raises(UnsupportedModel, match="batch dimension"):
        read_graph(_simple([helper.make_node("Relu", ["X"], ["o"])], {}, (2,), no_batch))
    with pytest.raises(UnsupportedModel, match="Squeeze without axes"):
        read_graph(_simple([helper.make_node("Squeeze", ["X"], ["o"], name="sq")], {}, (2,)))
    with pytest.raises(UnsupportedModel, match="no such ONNX file"):
        read_graph("/nonexistent/model.onnx")


def test_constant_subgraphs_are_folded():
    m = _simple([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32([2.0, 3.0]))),
                 helper.make_node("Neg", ["k"], ["nk"]), helper.make_node("Mul", ["X", "nk"], ["o"])], {}, (2,))
    g = read_graph(m)
    assert [n.op_type for n in g.nodes] == ["Mul"]
    np.testing.assert_allclose(g.evaluate(torch.tensor([[1.0, 1.0]], dtype=torch.float64)).numpy(), [[-2.0, -3.0]])


def test_our_exported_models_read(tmp_path):
    from usnprune.export.onnx_model import build_model, simplify
    from usnprune.pruner.models import KeypointNet, arch_from

    torch.manual_seed(0)
    net = KeypointNet(arch_from({"conv": [2, 3], "fc": [6], "input_size": 8, "num_keypoints": 2, "pool": 2})).eval()
    img = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    m = simplify(build_model(img, net.to_plain()))
    onnx.save(m, tmp_path / "m.onnx")
    g = read_graph(tmp_path / "m.onnx")
    assert [n.op_type for n in g.nodes][:5] == ["Gemm", "Gemm", "Relu", "Relu", "Sub"]
    assert "AveragePool" in [n.op_type for n in g.nodes]
    x = _box_points(5, 10)
    np.testing.assert_allclose(g.evaluate(torch.as_tensor(x)).numpy(),
                               session(m).run(None, {"X": x.astype(np.float32)})[0], rtol=1e-5, atol=1e-4)


def test_an_unnamed_activation_sharing_a_name_with_another_keeps_its_own_relaxation():
    """Relaxations are keyed by output tensor: an unnamed Relu whose output is 'r1' and a
    second Relu *named* 'r1' once shared one entry, and the backward pass applied the second
    layer's relaxation to the first (a bound 3 above the true minimum: unsound)."""
    rng = np.random.default_rng(1)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Relu", ["a"], ["r1"]),
             helper.make_node("MatMul", ["r1", "W2"], ["b"]), helper.make_node("Add", ["b", "c2"], ["b2"]),
             helper.make_node("Relu", ["b2"], ["r2"], name="r1"), helper.make_node("MatMul", ["r2", "W3"], ["y"])]
    inits = [init("W1", rng.normal(size=(4, 6))), init("W2", rng.normal(size=(6, 6)) * 1.5),
             init("W3", rng.normal(size=(6, 3))), init("c2", rng.normal(size=6) * 3)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    graph = read_graph(m)
    c = rng.uniform(-1, 1, 4)
    lo, hi = torch.as_tensor(c - 0.5)[None], torch.as_tensor(c + 0.5)[None]
    x = torch.as_tensor(rng.uniform(c - 0.5, c + 0.5, (20000, 4)))
    y = graph.evaluate(x)
    C = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    fwd = bounds.forward(graph, lo, hi, keep=bounds.stop_tensors(graph, None))
    lb = bounds.lower_of(bounds.backward(graph, fwd, C, None), 4)[0]
    assert torch.all(lb <= (y @ C.T).min(0).values + 1e-9)
