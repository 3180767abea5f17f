"""The ONNX graph of one (graph network, image): the lighting front, then the network as
``torch.onnx.export`` writes it.

The network is exported once per call by the TorchScript-based exporter (``dynamo=False``:
the torch.export-based one needs onnxscript, which usnprune does not depend on, and cannot
write opset 13), in eval mode with constant folding, so BatchNorm after a conv is folded
into the conv. Its image input is then wired to the front's ``t0`` and every name of its
graph is prefixed ``net/``, so the front's names (``front_W``, ... which
``with_image`` swaps per image) stay unique. onnxsim runs later (export), as for chains.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from .onnx_graph import INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME, ExportError, front_graph
from .perturbation import DEFAULT_FAMILY, Family, family

PREFIX = "net/"


def export_network(net: nn.Module, c: int, h: int, w: int) -> onnx.ModelProto:
    """``net`` (images -> [batch, 2K]) as an opset-13 ONNX model with a symbolic batch."""
    net = copy.deepcopy(net).float().eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(net, (torch.zeros(1, c, h, w),), buf, dynamo=False, opset_version=OPSET,
                              do_constant_folding=True, input_names=["image"], output_names=["out"],
                              dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}})
    except Exception as e:  # torch raises many types for operators it cannot export
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"torch.onnx.export failed on the network ({type(e).__name__}: {first})") from None
    return onnx.load_from_string(buf.getvalue())


def build_graph_model(image: np.ndarray, net: nn.Module, doc: str = "",
                      fam: str | Family = DEFAULT_FAMILY) -> onnx.ModelProto:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    c, h, w = img.shape
    inner = export_network(net, c, h, w)
    inits, nodes = front_graph(img, fam)

    def name(t: str) -> str:
        if t == "":
            return t  # an omitted optional input
        return "t0" if t == "image" else OUTPUT_NAME if t == "out" else PREFIX + t

    for t in inner.graph.initializer:
        t.name = name(t.name)
        inits.append(t)
    for n in inner.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise ExportError(f"node {n.name or n.op_type}: {n.op_type} with a subgraph is not supported")
        new = onnx.NodeProto()
        new.CopyFrom(n)
        del new.input[:]
        del new.output[:]
        new.input.extend(name(t) for t in n.input)
        new.output.extend(name(t) for t in n.output)
        new.name = PREFIX + (n.name or n.op_type)
        nodes.append(new)
    out_shape = [d.dim_value for d in inner.graph.output[0].type.tensor_type.shape.dim]
    if len(out_shape) != 2 or out_shape[1] < 2 or out_shape[1] % 2:
        raise ExportError(f"the network's output has shape {out_shape}, expected [batch, 2K]")
    graph = helper.make_graph(
        nodes, "usnprune_keypoints",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", family(fam).k])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", out_shape[1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="usnprune", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
