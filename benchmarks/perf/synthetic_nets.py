"""Synthetic ReLU networks with k inputs whose answers are known exactly.

The real-number function is convex: ``f(x) = u . relu(B h + b2) + v . h + c0`` with
``h = relu(A x + a)`` and ``B, u, v >= 0``. Between ``h`` and the rest sits an *identity*
that bound propagation cannot see through: ``h' = Q^T (relu(Q h) - relu(-Q h)) = h`` for a
scaled Hadamard matrix ``Q`` (entries +-2^-j, exact in float32), so the network has many
unstable ReLUs of both signs while its function stays convex. Hence, over the box:

* ``max f`` is attained at a vertex: enumerated exactly (``k <= 10``);
* ``min f`` is a linear program (the epigraph of each ReLU, exact here because ``f`` is
  non-decreasing in ``h`` and in the second layer): solved with scipy's HiGHS.

Properties (VNN-LIB, the unsafe set asserted; ``m = margin * (max f - min f)``):
``Y_0 >= max + m`` (certified), ``Y_0 >= max - m`` (falsified at a vertex), ``Y_0 <= min - m``
(certified), ``Y_0 <= min + m`` (falsified near the LP minimiser, often inside the box).
The margin is far above float32 rounding (onnxruntime evaluates the file in float32), so
the answers hold for the ONNX file as evaluated.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def make(k: int, seed: int, width: int = 64, width2: int = 32) -> dict:
    """Weights (float32-exact, as float64) of one network; ``width`` a power of 4."""
    rng = np.random.default_rng(1000 * k + seed)
    A = _f32(rng.normal(size=(width, k)) / np.sqrt(k))
    a = _f32(rng.normal(size=width) * 0.3)
    perm = rng.permutation(width)
    signs = rng.choice([-1.0, 1.0], size=width)
    Q = (_hadamard(width) / np.sqrt(width))[perm] * signs[:, None]  # orthogonal, entries +-2^-j
    B = _f32(rng.uniform(0, 1, size=(width2, width)) * (2.0 / width))
    b2 = _f32(rng.normal(size=width2) * 0.3)
    u = _f32(rng.uniform(0.2, 1.0, size=width2))
    v = _f32(rng.uniform(0.0, 0.3, size=width))
    return {"k": k, "A": A, "a": a, "Q": Q, "B": B, "b2": b2, "u": u, "v": v}


def value(w: dict, x: np.ndarray) -> np.ndarray:
    """The real-number function (float64), ``x`` ``[N, k]``."""
    h = np.maximum(x @ w["A"].T + w["a"], 0)
    return np.maximum(h @ w["B"].T + w["b2"], 0) @ w["u"] + h @ w["v"]


def extremes(w: dict, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(min f, max f, argmin, argmax)`` over the box, exactly (LP and vertex enumeration)."""
    from scipy.optimize import linprog

    k = w["k"]
    verts = np.array(list(itertools.product(*zip(lo, hi))))
    vals = value(w, verts)
    j = int(vals.argmax())
    H, H2 = w["A"].shape[0], w["B"].shape[0]
    # variables [x (k), s (H), t (H2)]: s >= A x + a, s >= 0, t >= B s + b2, t >= 0
    n = k + H + H2
    cost = np.concatenate([np.zeros(k), w["v"], w["u"]])
    A_ub = np.zeros((H + H2, n))
    b_ub = np.zeros(H + H2)
    A_ub[:H, :k] = w["A"]
    A_ub[:H, k:k + H] = -np.eye(H)
    b_ub[:H] = -w["a"]
    A_ub[H:, k:k + H] = w["B"]
    A_ub[H:, k + H:] = -np.eye(H2)
    b_ub[H:] = -w["b2"]
    bounds = [(float(l_), float(h_)) for l_, h_ in zip(lo, hi)] + [(0, None)] * (H + H2)
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"LP failed: {res.message}")
    xmin = np.clip(res.x[:k], lo, hi)
    return float(value(w, xmin[None])[0]), float(vals[j]), xmin, verts[j]


def onnx_model(w: dict) -> onnx.ModelProto:
    """The network as ONNX (opset 13, symbolic batch), weights in float32."""
    def init(name, arr):
        return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)

    Q = w["Q"]
    inits = [init("A", w["A"].T), init("a", w["a"]), init("Q", Q.T), init("Qn", -Q.T), init("QT", Q),
             init("B", w["B"].T), init("b2", w["b2"]), init("u", w["u"][:, None]), init("v", w["v"][:, None])]
    nodes = [
        helper.make_node("Gemm", ["X", "A", "a"], ["z1"], name="layer1"),
        helper.make_node("Relu", ["z1"], ["h"], name="relu1"),
        helper.make_node("MatMul", ["h", "Q"], ["qp"], name="mix"),          # Q h
        helper.make_node("MatMul", ["h", "Qn"], ["qn"], name="mix_neg"),     # -Q h, its own branch
        helper.make_node("Relu", ["qp"], ["rp"], name="relu_mix"),
        helper.make_node("Relu", ["qn"], ["rn"], name="relu_mix_neg"),
        helper.make_node("Sub", ["rp", "rn"], ["qh"], name="unmix_sum"),     # = Q h
        helper.make_node("MatMul", ["qh", "QT"], ["h2"], name="unmix"),      # = h
        helper.make_node("Gemm", ["h2", "B", "b2"], ["z2"], name="layer2"),
        helper.make_node("Relu", ["z2"], ["g"], name="relu2"),
        helper.make_node("MatMul", ["g", "u"], ["yu"], name="out_u"),
        helper.make_node("MatMul", ["h2", "v"], ["yv"], name="out_v"),
        helper.make_node("Add", ["yu", "yv"], ["Y"], name="out"),
    ]
    g = helper.make_graph(nodes, f"convex_k{w['k']}",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", w["k"]])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="usnprune-bench")
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def vnnlib(lo, hi, op: str, threshold: float, comment: str) -> str:
    lines = [f"; {comment}"] + [f"(declare-const X_{i} Real)" for i in range(len(lo))] + ["(declare-const Y_0 Real)"]
    for i, (l_, h_) in enumerate(zip(lo, hi)):
        lines += [f"(assert (>= X_{i} {float(l_)!r}))", f"(assert (<= X_{i} {float(h_)!r}))"]
    lines.append(f"(assert ({op} Y_0 {threshold!r}))")
    return "\n".join(lines) + "\n"


def write(folder: Path, k: int, seed: int, margin: float, radius: float = 1.0) -> list[dict]:
    """One network and its four properties in ``folder``; returns the instances with answers."""
    w = make(k, seed)
    lo, hi = -radius * np.ones(k), radius * np.ones(k)
    fmin, fmax, _, _ = extremes(w, lo, hi)
    m = margin * (fmax - fmin)
    name = f"convex_k{k}_s{seed}"
    onnx.save(onnx_model(w), folder / f"{name}.onnx")
    out = []
    for tag, op, thr, expected in (("max_cert", ">=", fmax + m, "certified"), ("max_fals", ">=", fmax - m, "falsified"),
                                   ("min_cert", "<=", fmin - m, "certified"), ("min_fals", "<=", fmin + m, "falsified")):
        vp = f"{name}_{tag}.vnnlib"
        (folder / vp).write_text(vnnlib(lo, hi, op, thr, f"{name}: min {fmin!r}, max {fmax!r}, expected {expected}"))
        out.append({"onnx": f"{name}.onnx", "vnnlib": vp, "expected": expected, "set": f"synthetic k={k}"})
    return out
