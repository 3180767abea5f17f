"""ONNX -> the builtin verifier's graph: one bound rule per node, in topological order.

The reader accepts exactly the operators in ``operators.REGISTRY``. Everything else is
refused with the node named (``node 'foo' (LSTM) is not supported by the builtin verifier;
supported: ...``), as are weights that depend on the input, graphs with more than one
input or output, and inputs without a batch dimension. Nodes whose inputs are all
constants (exporters' shape and pad arithmetic) are folded by ONNX's reference evaluator
(onnxsim-simplified models have none).

Shapes are found by running the graph once on a zero input of batch 1, which also checks
that every rule accepts what it is given. :meth:`Graph.evaluate` is the float64 reference
evaluation used for falsification candidates (never for verdicts: those are replayed on
onnxruntime).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .onnx_file import ModelParts, read_parts
from .operators import REGISTRY, AffineRule, NodeInfo, Rule, UnsupportedModel, supported_ops
from .operators.base import DTYPE


@dataclasses.dataclass
class GNode:
    rule: Rule
    name: str
    op_type: str
    inputs: list[str]  # the bounded inputs, in the rule's order
    output: str

    @property
    def affine(self) -> bool:
        return isinstance(self.rule, AffineRule)


@dataclasses.dataclass
class Graph:
    input_name: str
    input_shape: tuple[int, ...]  # per sample
    output_name: str
    nodes: list[GNode]
    shapes: dict[str, tuple[int, ...]]  # per-sample shape of every bounded tensor
    relu_depth: dict[str, int]  # activations between a tensor and the output (longest path)
    producer: dict[str, GNode]
    last_use: dict[str, int]  # index of the last node reading a tensor (len(nodes): the output)

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.shapes[self.output_name]))

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``[N, n_outputs]`` for inputs ``[N, n_inputs]`` (float64, differentiable)."""
        vals = {self.input_name: x.to(DTYPE).reshape((x.shape[0],) + self.input_shape)}
        for k, node in enumerate(self.nodes):
            vals[node.output] = node.rule.forward(*(vals[t] for t in node.inputs))
            for t in node.inputs:
                if self.last_use[t] == k:
                    vals.pop(t, None)  # (a node may read one tensor twice)
        return vals[self.output_name].reshape(x.shape[0], -1)


    def first_layer(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """For every ReLU whose input is exactly affine in the network input (only affine
        rules between them: a "first-layer" ReLU), that input as ``(W [n, N], d [N])``,
        ``z = x @ W + d``, keyed by the ReLU's output tensor. Its kink ``z_j = 0`` is a
        hyperplane of the input space (branch and bound splits along it)."""
        if getattr(self, "_first", None) is not None:
            return self._first
        affine = {self.input_name}
        for node in self.nodes:
            if isinstance(node.rule, AffineRule) and all(t in affine for t in node.inputs):
                affine.add(node.output)
        targets = [n for n in self.nodes if n.op_type == "Relu" and n.inputs[0] in affine]
        out = {}
        if targets:
            n = self.n_inputs
            x = torch.cat([torch.zeros((1, n), dtype=DTYPE), torch.eye(n, dtype=DTYPE)])
            vals = {self.input_name: x.reshape((n + 1,) + self.input_shape)}
            for node in self.nodes:
                if node.output in affine:
                    vals[node.output] = node.rule.forward(*(vals[t] for t in node.inputs))
            for node in targets:
                v = vals[node.inputs[0]].reshape(n + 1, -1)
                out[node.output] = ((v[1:] - v[:1]).numpy(), v[0].numpy())
        self._first = out
        return out


class ModelError(UnsupportedModel):
    """The ONNX file cannot be read at all."""


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, (list, tuple)):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = _attrs(node)
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return np.asarray(attrs[key])
    raise UnsupportedModel(f"node '{node.name or node.output[0]}' (Constant): unsupported constant kind")


NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}


def _fold(node: onnx.NodeProto, args: list[np.ndarray], opset: int) -> np.ndarray | None:
    """The value of a node whose inputs are all constants, by ONNX's reference evaluator
    (exact operator semantics, integer shape arithmetic included: exporters compute pads
    and shapes with Shape/ConstantOfShape/Slice/Concat subgraphs); None when it cannot."""
    if node.op_type in NONDETERMINISTIC or len([o for o in node.output if o]) != 1:
        return None
    if node.op_type == "Identity":
        return args[0]
    from onnx.reference import ReferenceEvaluator  # imported on first use: it loads every op

    names = [t for t in node.input if t]
    try:
        (out,) = ReferenceEvaluator(node, opsets={"": opset}).run(None, dict(zip(names, args)))
    except Exception:  # the evaluator raises many types for ops or attributes it lacks
        return None
    return np.asarray(out)


def _node_name(node: onnx.NodeProto, k: int) -> str:
    return node.name or (node.output[0] if node.output else f"#{k}")


def load_model(source) -> ModelParts:
    """A path read by :func:`onnx_file.read_parts` (large weights read straight into arrays),
    a ModelProto or ModelParts as they are."""
    if isinstance(source, ModelParts):
        return source
    if isinstance(source, onnx.ModelProto):
        return ModelParts(source, {}, Path())
    p = Path(source)
    if not p.is_file():
        raise ModelError(f"{p}: no such ONNX file")
    try:
        return read_parts(p)
    except OSError:
        raise
    except Exception as e:  # protobuf raises several types for a corrupt file
        raise ModelError(f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None


def read_graph(source) -> Graph:
    """Build a :class:`Graph` from an ONNX path, ModelProto or :class:`ModelParts`;
    UnsupportedModel on refusal. The large weights of ModelParts are used as they are (the
    verifier shares them with its onnxruntime session)."""
    parts = load_model(source)
    model, big = parts.model, parts.arrays
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    consts: dict[str, np.ndarray] = {}
    owned = isinstance(source, (str, os.PathLike))
    for t in g.initializer:
        consts[t.name] = big[t.name] if t.name in big else numpy_helper.to_array(t)
        if owned:  # read from a file here: drop the proto's copy at once (weights held once)
            for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
                t.ClearField(field)
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise UnsupportedModel(f"the builtin verifier needs exactly one network input, found {len(inputs)}")
    if len(g.output) != 1:
        raise UnsupportedModel(f"the builtin verifier needs exactly one network output, found {len(g.output)}")
    x = inputs[0]
    tt = x.type.tensor_type
    if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise UnsupportedModel(f"input '{x.name}' is not a float tensor")
    dims = list(tt.shape.dim)
    if len(dims) < 2:
        raise UnsupportedModel(f"input '{x.name}' needs a batch dimension and at least one more ([batch, n])")
    if dims[0].HasField("dim_value") and dims[0].dim_value not in (0, 1):
        raise UnsupportedModel(f"input '{x.name}' has batch dimension {dims[0].dim_value}, expected 1 or symbolic")
    per_sample = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise UnsupportedModel(f"input '{x.name}' has a non-batch dimension of unknown size")
        per_sample.append(int(d.dim_value))
    input_shape = tuple(per_sample)

    shapes: dict[str, tuple[int, ...]] = {x.name: input_shape}
    values: dict[str, torch.Tensor] = {x.name: torch.zeros((1,) + input_shape, dtype=DTYPE)}
    nodes: list[GNode] = []
    for k, node in enumerate(g.node):
        name = _node_name(node, k)
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant_value(node)
            continue
        known_inputs = [t for t in node.input if t]
        for t in known_inputs:
            if t not in consts and t not in shapes:
                raise UnsupportedModel(f"node '{name}' ({node.op_type}) reads '{t}', which no earlier node produces")
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModel(f"node '{name}' ({node.domain}.{node.op_type}) is not supported by the builtin "
                                   f"verifier; supported: {', '.join(supported_ops())}")
        if all(t in consts for t in known_inputs):
            folded = _fold(node, [consts[t] for t in known_inputs], opset)
            if folded is None:
                raise UnsupportedModel(f"node '{name}' ({node.op_type}) has only constant inputs and cannot be "
                                       "folded; fold them first (e.g. with onnxsim)")
            consts[node.output[0]] = np.asarray(folded)
            continue
        rule_cls = REGISTRY.get(node.op_type)
        if rule_cls is None:
            raise UnsupportedModel(f"node '{name}' ({node.op_type}) is not supported by the builtin verifier; "
                                   f"supported: {', '.join(supported_ops())}")
        var_pos = [p for p, t in enumerate(node.input) if t and t not in consts]
        info = NodeInfo(name=name, op_type=node.op_type, attrs=_attrs(node), inputs=list(node.input),
                        consts={p: consts[t] for p, t in enumerate(node.input) if t and t in consts},
                        var_pos=var_pos, var_shapes=[shapes[node.input[p]] for p in var_pos],
                        outputs=list(node.output))
        try:
            rule = rule_cls.build(info)
            out = rule.forward(*(values[node.input[p]] for p in var_pos))
        except UnsupportedModel:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise UnsupportedModel(f"node '{name}' ({node.op_type}): cannot evaluate it "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        if out.shape[0] != 1:
            raise UnsupportedModel(f"node '{name}' ({node.op_type}) changes the batch dimension")
        out_name = node.output[0]
        values[out_name] = out
        shapes[out_name] = tuple(out.shape[1:])
        nodes.append(GNode(rule, name, node.op_type, [node.input[p] for p in var_pos], out_name))

    out_name = g.output[0].name
    if out_name not in shapes:
        raise UnsupportedModel(f"output '{out_name}' does not depend on the input")
    producer = {n.output: n for n in nodes}
    # Longest path in activations from each tensor to the output: the backward (CROWN)
    # pass stops at activation outputs at a chosen depth.
    depth: dict[str, int] = {out_name: 0}
    for n in reversed(nodes):
        if n.output not in depth:
            continue  # does not reach the output
        d = depth[n.output] + (0 if isinstance(n.rule, AffineRule) else 1)  # activations and maxima
        for t in n.inputs:
            depth[t] = max(depth.get(t, 0), d)
    nodes = [n for n in nodes if n.output in depth]  # drop dead branches
    in_name = str(x.name)
    if owned:  # the proto (its arena) goes with every reference into it
        del parts, model, big, g, consts, values, x, inputs, tt, dims
    _release_freed_memory()  # and the shape pass's widened weight blocks
    return Graph(in_name, input_shape, out_name, nodes, shapes, depth, producer, _last_use(nodes, out_name))


def _release_freed_memory() -> None:
    """Give the parsed file's freed memory back to the system (glibc keeps it otherwise, and
    a 250 MB model would count twice in the process's footprint)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _last_use(nodes: list[GNode], out_name: str) -> dict[str, int]:
    last: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for t in n.inputs:
            last[t] = k
    last[out_name] = len(nodes)
    return last


def file_key(path) -> tuple[str, int, int]:
    """(resolved path, mtime_ns, size): a cache key that changes when the file is rewritten."""
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


__all__ = ["GNode", "Graph", "ModelError", "file_key", "load_model", "read_graph"]
