"""ONNX models in the form the bound engine reads, without changing the function they compute.

The bound engine (:mod:`usnprune.bounds`) reads a model whose input is ``[batch, ...]``,
batch 1 or symbolic, whose nodes keep that axis first, and whose convolutions are 2-D.
A query of the standard declares whatever the model has: ``X float32 [2]``, ``[4]``
reshaped to ``[2,2]``, ``[1,2]`` transposed to ``[2,1]``, a 1-D convolution. Two rewrites
bring such models to that form; both compute the same values in the same row-major order,
so the query's flattened variables are unchanged:

* :func:`conv1d_as_2d` -- a 1-D ``Conv`` becomes ``Reshape [N,C,1,L]``, a 2-D ``Conv`` with
  kernel ``[O,C,1,k]`` (pads, strides and dilations extended by the neutral ones) and
  ``Reshape [N,O,L']``;
* :func:`ceil_as_floor` -- a ``MaxPool`` with ``ceil_mode=1`` becomes one with
  ``ceil_mode=0`` and as much more end padding as gives the same output size (padding never
  wins a maximum, so the windows and their values are the same);
* :func:`lift` -- a new leading axis of size 1 on every tensor (input ``[1, *X]``, output
  ``[1, *Y]``): elementwise operations see their constants with a leading 1, axes and
  permutations move by one, ``Reshape`` targets gain a leading 1, ``Flatten`` becomes the
  ``Reshape`` it is, ``Gemm`` the ``MatMul`` and ``Add`` it is. Operators that read a
  batch and channel axis (Conv, pooling, BatchNormalization) cannot be lifted: such a
  model must already have its batch axis.

:func:`lift` checks itself: the lifted model must agree with the original on random inputs
under onnxruntime, else the rewrite is refused. The solver replays every counterexample on
the original model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from usnprune.errors import UsnpruneError


class CannotLift(UsnpruneError):
    """The model holds an operator :func:`lift` cannot carry a new leading axis through."""


ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Greater", "Less", "Where"}
UNARY = {"Relu", "Neg", "Identity", "Clip", "Sigmoid", "Tanh", "Abs", "Exp", "Log", "Sqrt", "LeakyRelu", "Softplus",
         "Cast", "Floor", "Ceil", "Round", "Sign", "Erf", "HardSigmoid", "Elu", "Selu", "Reciprocal"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` with the given graph inputs/outputs set to concrete shapes (the query
    instantiates the ONNX file's dynamic dimensions, section 2 of the standard)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name in shapes:
            dims = v.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[v.name]:
                dims.add().dim_value = int(d)
    return m


def conv1d_as_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every 1-D ``Conv`` with a constant kernel rewritten as a 2-D one between two Reshapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    weights = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:  # exporters also write weights as Constant nodes
        value = _attr(n, "value") if n.op_type == "Constant" else None
        if isinstance(value, onnx.TensorProto):
            weights[n.output[0]] = numpy_helper.to_array(value)
    nodes, changed = [], False
    for k, n in enumerate(g.node):
        w = weights.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if w is None or w.ndim != 3:
            nodes.append(n)
            continue
        changed = True
        tag = f"__conv2d_{k}"
        w2 = w[:, :, None, :]
        g.initializer.extend([numpy_helper.from_array(w2, tag + "_w"),
                              numpy_helper.from_array(np.array([0, 0, 1, -1], np.int64), tag + "_in"),
                              numpy_helper.from_array(np.array([0, 0, -1], np.int64), tag + "_out")])
        conv = helper.make_node("Conv", [tag + "_x", tag + "_w"] + list(n.input[2:]), [tag + "_y"], name=tag)
        for a in n.attribute:
            v = helper.get_attribute_value(a)
            if a.name == "kernel_shape":
                v = [1] + list(v)
            elif a.name in ("strides", "dilations"):
                v = [1] + list(v)
            elif a.name == "pads":
                v = [0, v[0], 0, v[1]]
            conv.attribute.append(helper.make_attribute(a.name, v.decode() if isinstance(v, bytes) else v))
        nodes += [helper.make_node("Reshape", [n.input[0], tag + "_in"], [tag + "_x"], name=tag + "_in"), conv,
                  helper.make_node("Reshape", [tag + "_y", tag + "_out"], list(n.output), name=tag + "_out")]
    if not changed:
        return model
    used = {t for n in nodes for t in n.input} | {o.name for o in g.output}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]  # the old 1-D kernels
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.node[:]
    g.node.extend(nodes)
    return m


def ceil_as_floor(model: onnx.ModelProto) -> onnx.ModelProto:
    """``MaxPool(ceil_mode=1)`` as ``MaxPool(ceil_mode=0)`` with more end padding; the
    model unchanged if a shape is unknown or onnxruntime disagrees with the rewrite."""
    if not any(n.op_type == "MaxPool" and _attr(n, "ceil_mode", 0) for n in model.graph.node):
        return model
    shapes = _ranks(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:
        if n.op_type != "MaxPool" or not _attr(n, "ceil_mode", 0) or _attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        xs, ys = shapes.get(n.input[0]), shapes.get(n.output[0])
        if not xs or not ys or min(xs[2:] + ys[2:], default=0) < 1:
            return model
        k = list(_attr(n, "kernel_shape"))
        r = len(k)
        strides = list(_attr(n, "strides", [1] * r))
        dil = list(_attr(n, "dilations", [1] * r))
        pads = list(_attr(n, "pads", [0] * 2 * r))
        for i in range(r):
            span = xs[2 + i] + pads[i] + pads[r + i] - (dil[i] * (k[i] - 1) + 1)
            need = (ys[2 + i] - 1) * strides[i] - span  # extra end padding for floor mode to reach the same count
            pads[r + i] += max(0, need)
        _set_attr(n, "pads", pads)
        _set_attr(n, "ceil_mode", 0)
    try:
        _check(model, m, lifted=False)
    except CannotLift:
        return model
    return m


def _ranks(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    return out


def _constants(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """Initializers and constant subgraphs folded (onnx.reference), and the nodes left."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rest = []
    for n in model.graph.node:
        ins = [t for t in n.input if t]
        if n.op_type == "Constant" or (ins and all(t in consts for t in ins)):
            from onnx.reference import ReferenceEvaluator  # loads every op: only when a fold is needed

            try:
                (val,) = ReferenceEvaluator(n, opsets={"": _opset(model)}).run(None, {t: consts[t] for t in ins})
            except Exception as e:  # the evaluator raises many types
                raise CannotLift(f"cannot fold constant node {n.name or n.op_type}: {e}") from None
            consts[n.output[0]] = np.asarray(val)
        else:
            rest.append(n)
    return consts, rest


def lift(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with a new leading axis of size 1 on every tensor (module docstring).
    ``model``'s graph inputs and outputs must have concrete shapes (:func:`with_shapes`)."""
    shapes = _ranks(model)
    consts, nodes = _constants(model)
    g = model.graph
    new_inits: dict[str, np.ndarray] = {}

    def const(name: str, value: np.ndarray) -> str:
        key = f"{name}__lifted{len(new_inits)}"
        new_inits[key] = np.asarray(value)
        return key

    def rank(t: str) -> int:
        if t not in shapes:
            raise CannotLift(f"the shape of {t!r} is unknown")
        return len(shapes[t])

    out_nodes = []
    for n in nodes:
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        op, var_ins = n.op_type, [t for t in n.input if t and t not in consts]
        if op in UNARY:
            if op == "Clip":
                for i, t in enumerate(n.input[1:], start=1):
                    if t:
                        n2.input[i] = const(t, consts[t])
        elif op in ELEMENTWISE:
            r = rank(n.output[0])
            for i, t in enumerate(n.input):
                if t in consts:
                    c = consts[t]
                    n2.input[i] = const(t, c.reshape((1,) * (r + 1 - c.ndim) + c.shape))
        elif op == "MatMul":
            if n.input[0] not in var_ins or n.input[1] in var_ins:
                raise CannotLift("MatMul: only a computed tensor times a constant can be lifted")
            w = consts[n.input[1]]
            n2.input[1] = const(n.input[1], w if w.ndim <= 2 else w[None])
        elif op == "Gemm":
            if _attr(n, "transA", 0) or n.input[0] not in var_ins or any(t in var_ins for t in n.input[1:]):
                raise CannotLift("Gemm: only A (not transposed) times constants can be lifted")
            b = consts[n.input[1]]
            b = (b.T if _attr(n, "transB", 0) else b) * _attr(n, "alpha", 1.0)
            mm = helper.make_node("MatMul", [n.input[0], const(n.input[1], b.astype(np.float32))],
                                  [n.output[0] + "__mm"], name=(n.name or n.output[0]) + "__mm")
            if len(n.input) > 2 and n.input[2]:
                c = np.asarray(consts[n.input[2]]) * _attr(n, "beta", 1.0)
                c = np.broadcast_to(c, shapes[n.output[0]])[None].astype(np.float32)
                out_nodes += [mm, helper.make_node("Add", [mm.output[0], const(n.input[2], c)], list(n.output),
                                                   name=n.name)]
            else:
                mm.output[0] = n.output[0]
                out_nodes.append(mm)
            continue
        elif op == "Reshape":
            n2.input[1] = const(n.input[1], np.concatenate([[1], consts[n.input[1]]]).astype(np.int64))
        elif op == "Flatten":
            s = shapes.get(n.output[0])
            if not s or min(s) < 0:
                raise CannotLift("Flatten: the output shape is unknown")
            n2 = helper.make_node("Reshape", [n.input[0], const(n.output[0], np.array((1,) + s, np.int64))],
                                  list(n.output), name=n.name)
        elif op == "Transpose":
            perm = _attr(n, "perm") or list(reversed(range(rank(n.input[0]))))
            _set_attr(n2, "perm", [0] + [p + 1 for p in perm])
        elif op == "Concat":
            axis = _attr(n, "axis")
            _set_attr(n2, "axis", axis + 1 if axis >= 0 else axis)
            for i, t in enumerate(n.input):
                if t in consts:
                    n2.input[i] = const(t, consts[t][None])
        elif op in ("Unsqueeze", "Squeeze"):
            axes = consts[n.input[1]] if len(n.input) > 1 and n.input[1] else _attr(n, "axes")
            if axes is None:
                raise CannotLift(f"{op} without axes cannot be lifted")
            moved = np.array([a + 1 if a >= 0 else a for a in np.ravel(axes)], np.int64)
            if len(n.input) > 1 and n.input[1]:
                n2.input[1] = const(n.input[1], moved)
            else:
                _set_attr(n2, "axes", [int(a) for a in moved])
        elif op == "Pad":
            if len(n.input) > 3 and n.input[3]:
                axes = consts[n.input[3]]
                n2.input[3] = const(n.input[3], np.array([a + 1 if a >= 0 else a for a in axes], np.int64))
            else:
                pads = np.ravel(consts[n.input[1]]) if len(n.input) > 1 else np.array(_attr(n, "pads"))
                half = len(pads) // 2
                moved = np.concatenate([[0], pads[:half], [0], pads[half:]]).astype(np.int64)
                if len(n.input) > 1:
                    n2.input[1] = const(n.input[1], moved)
                else:
                    _set_attr(n2, "pads", [int(p) for p in moved])
            if len(n.input) > 2 and n.input[2]:
                n2.input[2] = const(n.input[2], consts[n.input[2]])
        else:
            raise CannotLift(f"node {n.name or n.output[0]!r} ({op}) reads a batch or channel axis, or is not "
                             "supported; its model needs a leading batch axis")
        out_nodes.append(n2)

    x, y = g.input[0], g.output[0]
    inputs = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, (1,) + shapes[v.name])
              for v in g.input if v.name not in consts]
    outputs = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, (1,) + shapes[v.name])
               for v in g.output]
    del x, y
    graph = helper.make_graph(out_nodes, g.name + "_lifted", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in new_inits.items()])
    lifted = helper.make_model(graph, opset_imports=list(model.opset_import))
    lifted.ir_version = model.ir_version
    _check(model, lifted)
    return lifted


def _check(model: onnx.ModelProto, rewritten: onnx.ModelProto, samples: int = 8, lifted: bool = True) -> None:
    """The rewritten model must compute what the original does (onnxruntime, random inputs)."""
    from usnprune.export.onnx_model import session

    try:
        a, b = session(model), session(rewritten)
    except Exception as e:  # onnxruntime refuses an ill-formed rewrite
        raise CannotLift(f"the lifted model does not load: {str(e).splitlines()[0][:200]}") from None
    ia, ib = a.get_inputs()[0], b.get_inputs()[0]
    rng = np.random.default_rng(0)
    for _ in range(samples):
        x = rng.uniform(-2, 2, size=[int(d) for d in ia.shape]).astype(np.float32)
        ya = np.asarray(a.run(None, {ia.name: x})[0], dtype=np.float64).reshape(-1)
        yb = np.asarray(b.run(None, {ib.name: x[None] if lifted else x})[0], dtype=np.float64).reshape(-1)
        if ya.shape != yb.shape or not np.allclose(ya, yb, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise CannotLift("the rewritten model disagrees with the original under onnxruntime")


__all__ = ["CannotLift", "ceil_as_floor", "conv1d_as_2d", "lift", "with_shapes"]
