"""The semantic-perturbation ONNX model of one (network, image).

Graph (opset 13, IR version 7 -- loadable by the older onnx inside verifier environments)::

    X [batch, 2] = (c, b)
      ├─ Gemm(X, F, 0)  -> z      F = [image.flatten(); ones]  so z = c*x + b, exactly
      └─ Gemm(X, F, -1) -> z1     z - 1, computed as its own branch from X
    pixels = Relu(z) - Relu(z1)  == clip(c*x + b, 0, 1)
    Reshape(pixels, [-1, C, H, W])
    Conv -> Relu -> ... -> [AveragePool] -> Flatten -> Gemm -> Relu -> ... -> Gemm
    Y [batch, 2K]   (u0, v0, u1, v1, ...) in pixels

Why this shape:
* ``c*x + b`` as one Gemm from the two inputs is exact for every verifier (no Mul of two
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

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pruner import perturbation
from pruner.errors import UsnpruneError

OPSET = 13
IR_VERSION = 7
INPUT_NAME = "X"
OUTPUT_NAME = "Y"
PARITY_TOL = 1e-4  # max |onnxruntime - pytorch| in pixels


class ExportError(UsnpruneError):
    """A model could not be exported faithfully."""


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def build_model(image: np.ndarray, plain: nn.Sequential, doc: str = "") -> onnx.ModelProto:
    """The ONNX graph of ``plain(clip(c * image + b, 0, 1))`` with input X = (c, b).

    ``image``: ``[C, H, W]`` (or ``[H, W]``) in [0, 1]; ``plain``: the output of
    ``KeypointNet.to_plain()`` (Conv2d, ReLU, AvgPool2d, Flatten, Linear only).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    c, h, w = img.shape
    front = np.stack([img.reshape(-1), np.ones(img.size, dtype=np.float32)])  # [2, P]
    inits = [
        _init("front_W", front),
        _init("front_b0", np.zeros(img.size)),
        _init("front_b1", -np.ones(img.size)),
        numpy_helper.from_array(np.array([-1, c, h, w], dtype=np.int64), "image_shape"),
    ]
    nodes = [
        helper.make_node("Gemm", [INPUT_NAME, "front_W", "front_b0"], ["z"], name="contrast_brightness"),
        helper.make_node("Gemm", [INPUT_NAME, "front_W", "front_b1"], ["z_minus_1"], name="contrast_brightness_minus_1"),
        helper.make_node("Relu", ["z"], ["relu_z"], name="clip_low"),
        helper.make_node("Relu", ["z_minus_1"], ["relu_z_minus_1"], name="clip_high"),
        helper.make_node("Sub", ["relu_z", "relu_z_minus_1"], ["pixels"], name="clip"),
        helper.make_node("Reshape", ["pixels", "image_shape"], ["t0"], name="to_image"),
    ]
    cur, k = "t0", 0
    layers = list(plain)
    for i, layer in enumerate(layers):
        out = OUTPUT_NAME if i == len(layers) - 1 else f"t{k + 1}"
        name = f"{type(layer).__name__.lower()}{i}"
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
                raise ExportError(f"layer {i}: only plain Conv2d (groups=1, dilation=1, zero padding) is exported")
            ph, pw = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,) * 2
            inits += [_init(f"{name}_W", layer.weight.detach().double().numpy()),
                      _init(f"{name}_B", layer.bias.detach().double().numpy())]
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
            inits += [_init(f"{name}_W", layer.weight.detach().double().numpy()),
                      _init(f"{name}_B", layer.bias.detach().double().numpy())]
            nodes.append(helper.make_node("Gemm", [cur, f"{name}_W", f"{name}_B"], [out], name=name, transB=1))
        else:
            raise ExportError(f"layer {i}: {type(layer).__name__} is not exportable")
        cur, k = out, k + 1
    n_out = layers[-1].out_features
    graph = helper.make_graph(
        nodes, "usnprune_keypoints",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="usnprune", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def with_image(template: onnx.ModelProto, image: np.ndarray) -> onnx.ModelProto:
    """The same (simplified) graph with another image in the front weights.

    Only the ``front_W`` initializer depends on the image, so one simplified graph serves
    every image of a network; callers still parity-check each model.
    """
    img = np.asarray(image, dtype=np.float32).reshape(-1)
    m = onnx.ModelProto()
    m.CopyFrom(template)
    for i, t in enumerate(m.graph.initializer):
        if t.name == "front_W":
            if tuple(t.dims) != (2, img.size):
                raise ExportError(f"image has {img.size} pixels, the model expects {t.dims[1]}")
            m.graph.initializer[i].CopyFrom(_init("front_W", np.stack([img, np.ones_like(img)])))
            return m
    raise ExportError("the template model has no front_W initializer (was it simplified away?)")


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim, then pin opset and IR version again (simplifiers may raise them)."""
    import onnxsim

    try:
        simp, ok = onnxsim.simplify(model)
    except Exception as e:  # onnxsim raises its own types; the unsimplified model is fine
        raise ExportError(f"onnxsim failed: {type(e).__name__}: {e}") from None
    if not ok:
        raise ExportError("onnxsim could not validate the simplified model")
    simp.ir_version = IR_VERSION
    del simp.opset_import[:]
    simp.opset_import.extend([helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(simp)
    check_structure(simp)
    return simp


def check_structure(model: onnx.ModelProto) -> None:
    """Refuse graphs the verifiers are known to mishandle (see the module docstring)."""
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", None) != OPSET or model.ir_version != IR_VERSION:
        raise ExportError(f"model has opset {opsets} and IR {model.ir_version}, expected opset {OPSET}, IR {IR_VERSION}")
    consumers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, set()).add(n.op_type)
    for t, ops in consumers.items():
        if "Relu" in ops and ops & {"Add", "Sub"}:
            raise ExportError(f"tensor {t!r} feeds both a Relu and an Add/Sub (Marabou misreads this)")
    for n in model.graph.node:
        if n.op_type in ("Clip", "BatchNormalization"):
            raise ExportError(f"node {n.name or n.op_type}: {n.op_type} must not appear in an exported model")


def session(model: onnx.ModelProto | bytes | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, thetas: np.ndarray) -> np.ndarray:
    """Outputs ``[n, 2K]`` (float64) for perturbations ``[n, 2]``, in one batched call."""
    x = np.ascontiguousarray(np.atleast_2d(thetas), dtype=np.float32)
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float64)


def parity_points(box: perturbation.Box, n: int = 25, seed: int = 0) -> np.ndarray:
    """Identity, the four corners, and a grid/uniform fill: at least ``n`` points."""
    rng = np.random.default_rng(seed)
    grid = box.grid(4, 4)
    pts = np.concatenate([box.identity(), box.corners(), grid, box.uniform(max(n - 21, 4), rng)])
    return pts


@torch.no_grad()
def reference_outputs(plain: nn.Sequential, image: np.ndarray, thetas: np.ndarray) -> np.ndarray:
    """PyTorch outputs (float64 arithmetic) of the folded network on perturbed images."""
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if img.ndim == 2:
        img = img[None]
    x = perturbation.apply(img.double().unsqueeze(0).expand(len(thetas), *img.shape),
                           torch.as_tensor(thetas, dtype=torch.float64))
    net = _double(plain)
    return net(x).numpy()


def _double(plain: nn.Sequential) -> nn.Sequential:
    import copy

    return copy.deepcopy(plain).double().eval()


def check_parity(model: onnx.ModelProto, plain: nn.Sequential, image: np.ndarray, box: perturbation.Box,
                 n: int = 25, tol: float = PARITY_TOL) -> float:
    """Max |onnxruntime - PyTorch| over >= n points (identity and corners included).

    Raises ExportError when it exceeds ``tol``: a model that does not compute the network
    is never written. Also runs a batch > 1, which every verifier needs.
    """
    pts = parity_points(box, n)
    got = run(session(model), pts)
    ref = reference_outputs(plain, image, pts)
    err = float(np.max(np.abs(got - ref)))
    if not np.isfinite(err) or err > tol:
        raise ExportError(f"ONNX/PyTorch parity failed: max difference {err:.3g} px > {tol:g} px")
    return err


def export_instance_model(image: np.ndarray, plain: nn.Sequential, box: perturbation.Box,
                          doc: str = "", simplify_model: bool = True) -> tuple[onnx.ModelProto, float]:
    """Build, simplify and parity-check; returns (model, max parity error in px)."""
    model = build_model(image, plain, doc)
    if simplify_model:
        model = simplify(model)
    else:
        check_structure(model)
    err = check_parity(model, plain, image, box)
    return model, err
