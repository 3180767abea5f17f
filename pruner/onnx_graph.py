"""The ONNX graph of one (network, image): the lighting front, then the plain network.

Graph (opset 13, IR version 7 -- loadable by the older onnx inside verifier environments)::

    X [batch, k] = theta          the lighting family's k parameters, e.g. (c, b)
      ├─ Gemm(X, F, base)     -> z    F = [d_1(x); ...; d_k(x)]  so z = x'(theta) before the clip,
      │                                exactly (brightness_contrast: F = [x; 1], base = 0: c*x + b)
      └─ Gemm(X, F, base - 1) -> z1   z - 1, computed as its own branch from X
    pixels = Relu(z) - Relu(z1)  == clip(z, 0, 1)
    Reshape(pixels, [-1, C, H, W])
    Conv -> Relu -> ... -> [AveragePool] -> Flatten -> Gemm -> Relu -> ... -> Gemm
    Y [batch, 2K]   (u0, v0, u1, v1, ...) in pixels

Why this shape:
* ``x'(theta)`` as one Gemm from the k inputs is exact for every verifier (no Mul of two
  variables, no broadcasting tricks that only work at batch 1).
* The clip is ``Relu(z) - Relu(z - 1)``: a Clip node becomes a HardTanh in
  alpha-beta-CROWN, whose forward bound modes crash on it; ReLU is handled by all.
* ``z - 1`` is a second Gemm from ``X`` rather than ``Sub(z, 1)``, so no tensor feeds both a
  Relu and an Add/Sub: Marabou's ONNX reader answers wrongly on that fan-out.
* The batch dimension is symbolic and the Reshape uses ``-1`` for it: alpha-beta-CROWN runs
  the model on batches of sub-boxes and attack restarts.
* BatchNorm, gates and output scaling are folded into the weights (``KeypointNet.to_plain``).
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from usnprune.errors import UsnpruneError

from .perturbation import DEFAULT_FAMILY, Family, family

OPSET = 13
IR_VERSION = 7
INPUT_NAME = "X"
OUTPUT_NAME = "Y"


class ExportError(UsnpruneError):
    """A model could not be exported faithfully."""


def initializer(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def front_initializers(image: np.ndarray, fam: str | Family = DEFAULT_FAMILY) -> list[onnx.TensorProto]:
    """``front_W`` (the directions, ``[k, P]``), ``front_b0`` (base) and ``front_b1``
    (base - 1) for one image ``[C, H, W]``: the only image-dependent tensors of the graph."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    D, base = family(fam).directions_matrix(img)
    return [initializer("front_W", D), initializer("front_b0", base), initializer("front_b1", base - 1.0)]


def front_graph(image: np.ndarray, fam: str | Family = DEFAULT_FAMILY, out: str = "t0") -> tuple[list, list]:
    """(initializers, nodes) of the lighting front: input X (theta) -> tensor ``out``, the
    perturbed image ``[batch, C, H, W]``. Its own tensors are ``front_W``, ``front_b0``,
    ``front_b1``, ``image_shape``, ``z``, ``z_minus_1``, ``relu_z``, ``relu_z_minus_1`` and
    ``pixels``; a graph it is prepended to must not use those names."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    c, h, w = img.shape
    front = "contrast_brightness" if family(fam).name == DEFAULT_FAMILY else "lighting"  # k = 2 files stay as they were
    inits = front_initializers(img, fam) + [
        numpy_helper.from_array(np.array([-1, c, h, w], dtype=np.int64), "image_shape"),
    ]
    nodes = [
        helper.make_node("Gemm", [INPUT_NAME, "front_W", "front_b0"], ["z"], name=front),
        helper.make_node("Gemm", [INPUT_NAME, "front_W", "front_b1"], ["z_minus_1"], name=f"{front}_minus_1"),
        helper.make_node("Relu", ["z"], ["relu_z"], name="clip_low"),
        helper.make_node("Relu", ["z_minus_1"], ["relu_z_minus_1"], name="clip_high"),
        helper.make_node("Sub", ["relu_z", "relu_z_minus_1"], ["pixels"], name="clip"),
        helper.make_node("Reshape", ["pixels", "image_shape"], [out], name="to_image"),
    ]
    return inits, nodes


def build_model(image: np.ndarray, plain: nn.Sequential, doc: str = "",
                fam: str | Family = DEFAULT_FAMILY) -> onnx.ModelProto:
    """The ONNX graph of ``plain(x'(theta))`` with input X = theta, the ``fam`` family's
    k parameters (default: (c, b), ``x' = clip(c * image + b, 0, 1)``).

    ``image``: ``[C, H, W]`` (or ``[H, W]``) in [0, 1]; ``plain``: the output of
    ``KeypointNet.to_plain()`` (Conv2d, ReLU, AvgPool2d, Flatten, Linear only).
    """
    if not isinstance(plain, nn.Sequential):  # any other graph: exported by torch
        return build_graph_model(image, plain, doc, fam)
    inits, nodes = front_graph(image, fam)
    n_params = family(fam).k
    cur, k = "t0", 0
    layers = list(plain)
    for i, layer in enumerate(layers):
        out = OUTPUT_NAME if i == len(layers) - 1 else f"t{k + 1}"
        name = f"{type(layer).__name__.lower()}{i}"
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
                raise ExportError(f"layer {i}: only plain Conv2d (groups=1, dilation=1, zero padding) is exported")
            ph, pw = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,) * 2
            inits += [initializer(f"{name}_W", layer.weight.detach().double().numpy()),
                      initializer(f"{name}_B", layer.bias.detach().double().numpy())]
            nodes.append(helper.make_node(
                "Conv", [cur, f"{name}_W", f"{name}_B"], [out], name=name,
                kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw]))
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [cur], [out], name=name))
        elif isinstance(layer, nn.AvgPool2d):
            ks = layer.kernel_size if isinstance(layer.kernel_size, tuple) else (layer.kernel_size,) * 2
            st = layer.stride if isinstance(layer.stride, tuple) else (layer.stride,) * 2
            nodes.append(helper.make_node("AveragePool", [cur], [out], name=name,
                                          kernel_shape=list(ks), strides=list(st)))
        elif isinstance(layer, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], name=name, axis=1))
        elif isinstance(layer, nn.Linear):
            inits += [initializer(f"{name}_W", layer.weight.detach().double().numpy()),
                      initializer(f"{name}_B", layer.bias.detach().double().numpy())]
            nodes.append(helper.make_node("Gemm", [cur, f"{name}_W", f"{name}_B"], [out], name=name, transB=1))
        else:
            raise ExportError(f"layer {i}: {type(layer).__name__} is not exportable")
        cur, k = out, k + 1
    n_out = layers[-1].out_features
    return _model(nodes, inits, n_params, n_out, doc)


# ---- graph networks (GraphNet) -------------------------------------------------------
#
# The network is exported once per call by the TorchScript-based exporter (``dynamo=False``:
# the torch.export-based one needs onnxscript, which usnprune does not depend on, and cannot
# write opset 13), in eval mode with constant folding, so BatchNorm after a conv is folded
# into the conv. Its image input is then wired to the front's ``t0`` and every name of its
# graph is prefixed ``net/``, so the front's names (``front_W``, ... which
# ``with_image`` swaps per image) stay unique. onnxsim runs later (export), as for chains.

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
    with torch.no_grad():  # the exporter may leave the output's dims symbolic
        out_shape = list(copy.deepcopy(net).float().eval()(torch.zeros(1, c, h, w)).shape)
    if len(out_shape) != 2 or out_shape[1] < 2 or out_shape[1] % 2:
        raise ExportError(f"the network's output has shape {out_shape}, expected [batch, 2K]")
    return _model(nodes, inits, family(fam).k, out_shape[1], doc)


def _model(nodes, inits, n_params: int, n_out: int, doc: str) -> onnx.ModelProto:
    """The instance model around ``nodes``: input X [batch, k], output Y [batch, 2K], our
    fixed opset and IR version, checked."""
    graph = helper.make_graph(
        nodes, "usnprune_keypoints",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_params])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="usnprune", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
