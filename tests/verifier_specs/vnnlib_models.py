"""Small ONNX models and VNN-LIB 2.0 queries for the solver tests, written by hand with
onnx.helper: models with a batch axis, and models the standard allows without one."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, in_shape, out_shape, inits=(), opset=13, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("X", elem, list(in_shape))],
                          [helper.make_tensor_value_info("Y", elem, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def identity(elem=TensorProto.FLOAT) -> onnx.ModelProto:
    """Y = X on [batch, 2] (one Gemm)."""
    dtype = np.float32 if elem == TensorProto.FLOAT else np.float64
    return model([helper.make_node("Gemm", ["X", "W", "B"], ["Y"])], ["batch", 2], ["batch", 2],
                 [("W", np.eye(2, dtype=dtype)), ("B", np.zeros(2, dtype))], elem=elem)


def i64(v):
    return np.asarray(v, dtype=np.int64)


def f32(v):
    return np.asarray(v, dtype=np.float32)


# Models written without a batch axis (or moving their leading axis), as the standard allows:
# name -> (model, input shape, output shape). Each mixes its operator with a Relu.
UNBATCHED = {
    "transpose": (model([helper.make_node("Transpose", ["X"], ["t"], perm=[1, 0]), helper.make_node("Relu", ["t"], ["Y"])],
                        [1, 2], [2, 1]), (1, 2), (2, 1)),
    "reshape": (model([helper.make_node("Add", ["X", "c"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["r"]),
                       helper.make_node("Relu", ["r"], ["Y"])], [4], [2, 2], [("c", f32([0.5, -1, 0, 2])), ("s", i64([2, 2]))]),
                (4,), (2, 2)),
    "concat_unsqueeze": (model([helper.make_node("Concat", ["X", "c"], ["k"], axis=0),
                                helper.make_node("Unsqueeze", ["k", "ax"], ["u"]), helper.make_node("Relu", ["u"], ["Y"])],
                               [2], [4, 1], [("c", f32([1.0, -1.0])), ("ax", i64([1]))]), (2,), (4, 1)),
    "gemm_batch2": (model([helper.make_node("Gemm", ["X", "W", "C"], ["g"], transB=1, alpha=0.5),
                           helper.make_node("Relu", ["g"], ["Y"])], [2, 3], [2, 2],
                          [("W", f32([[1, -2, 0.5], [0.25, 1, -1]])), ("C", f32([0.1, -0.2]))]), (2, 3), (2, 2)),
    "flatten": (model([helper.make_node("Flatten", ["X"], ["f"], axis=1), helper.make_node("Neg", ["f"], ["Y"])],
                      [2, 1, 2], [2, 2]), (2, 1, 2), (2, 2)),
    "pad_sub": (model([helper.make_node("Pad", ["X", "p"], ["q"]), helper.make_node("Sub", ["c", "q"], ["Y"])],
                      [3], [5], [("p", i64([1, 1])), ("c", f32([1, 2, 3, 4, 5]))]), (3,), (5,)),
    "matmul_vector": (model([helper.make_node("MatMul", ["X", "W"], ["m"]), helper.make_node("Relu", ["m"], ["Y"])],
                            [3], [2], [("W", f32([[1, -1], [2, 0.5], [-1, 1]]))]), (3,), (2,)),
}


def dims(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def index(flat: int, shape) -> str:
    return ",".join(str(int(i)) for i in np.unravel_index(flat, shape)) if shape else ""


def query(in_shape, out_shape, lo, hi, out_index: int, threshold: float, dtype="float32", name="N") -> str:
    """``Y[out_index] >= threshold`` over the box ``[lo, hi]`` of every input element."""
    n = int(np.prod(in_shape))
    var = lambda v, shape, i: f"{v}[{index(i, shape)}]" if shape else v  # noqa: E731
    lines = ["(vnnlib-version <2.0>)", f"(declare-network {name}",
             f"    (declare-input X {dtype} {dims(in_shape)})", f"    (declare-output Y {dtype} {dims(out_shape)})", ")"]
    for i in range(n):
        lines += [f"(assert (>= {var('X', in_shape, i)} {float(lo)!r}))", f"(assert (<= {var('X', in_shape, i)} {float(hi)!r}))"]
    lines.append(f"(assert (>= {var('Y', out_shape, out_index)} {threshold:.6f}))")
    return "\n".join(lines) + "\n"
