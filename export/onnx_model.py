"""The semantic-perturbation ONNX model of one (network, image) as exported: the graph of
:mod:`usnprune.pruner.onnx_graph`, simplified with onnxsim, pinned to a fixed opset, and
parity-checked against PyTorch through onnxruntime before it is written.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

from usnprune.pruner import perturbation
from usnprune.pruner.onnx_graph import (  # noqa: F401
    INPUT_NAME,
    IR_VERSION,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    build_model,
    front_initializers,
    initializer,
)

PARITY_TOL = 1e-4  # max |onnxruntime - pytorch| in pixels

def with_image(template: onnx.ModelProto, image: np.ndarray,
               fam: str | perturbation.Family = perturbation.DEFAULT_FAMILY) -> onnx.ModelProto:
    """The same (simplified) graph with another image in the front weights.

    Only the front initializers (``front_W``, ``front_b0``, ``front_b1``) depend on the
    image, so one simplified graph serves every image of a network; callers still
    parity-check each model.
    """
    m = onnx.ModelProto()
    m.CopyFrom(template)
    new = {t.name: t for t in front_initializers(image, fam)}
    where = {t.name: i for i, t in enumerate(m.graph.initializer)}
    if "front_W" not in where:
        raise ExportError("the template model has no front_W initializer (was it simplified away?)")
    old = m.graph.initializer[where["front_W"]]
    if tuple(old.dims) != tuple(new["front_W"].dims):
        raise ExportError(f"image and family give front weights {tuple(new['front_W'].dims)}, "
                          f"the model has {tuple(old.dims)}")
    for name, t in new.items():
        if name in where:
            m.graph.initializer[where[name]].CopyFrom(t)
        elif np.any(numpy_helper.to_array(t) != (-1.0 if name == "front_b1" else 0.0)):
            raise ExportError(f"the template model has no {name} initializer, and this image needs one")
    return m


def simplify(model: onnx.ModelProto, structure: bool = True) -> onnx.ModelProto:
    """onnxsim, then pin opset and IR version again (simplifiers may raise them).
    ``structure``: also refuse what :func:`check_structure` refuses (our own networks; a
    user's graph keeps its own operators and fan-outs: docs/formats.md)."""
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
    if structure:
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
    """Outputs ``[n, 2K]`` (float64) for perturbations ``[n, k]``, in one batched call."""
    x = np.ascontiguousarray(np.atleast_2d(thetas), dtype=np.float32)
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float64)


def parity_points(box: perturbation.Box, n: int = 25, seed: int = 0) -> np.ndarray:
    """At least ``n`` points: the identity, every corner (capped at ``CORNER_CAP``: all of
    them up to k = 6), then (k = 2) a 4 x 4 grid and uniform draws, (other k) uniform draws."""
    rng = np.random.default_rng(seed)
    fixed = [box.identity(), box.corners()] + ([box.grid(4, 4)] if box.k == 2 else [])
    have = sum(len(p) for p in fixed)
    return np.concatenate(fixed + [box.uniform(max(n - have, 4), rng)])


@torch.no_grad()
def reference_outputs(plain: nn.Sequential, image: np.ndarray, thetas: np.ndarray,
                      fam: str | perturbation.Family = perturbation.DEFAULT_FAMILY) -> np.ndarray:
    """PyTorch outputs (float64 arithmetic) of the folded network on perturbed images."""
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if img.ndim == 2:
        img = img[None]
    x = perturbation.apply(img.double().unsqueeze(0).expand(len(thetas), *img.shape),
                           torch.as_tensor(thetas, dtype=torch.float64), fam)
    net = _double(plain)
    return net(x).numpy()


def _double(plain: nn.Sequential) -> nn.Sequential:
    import copy

    return copy.deepcopy(plain).double().eval()


def check_parity(model: onnx.ModelProto, plain: nn.Sequential, image: np.ndarray, box: perturbation.Box,
                 n: int = 25, tol: float = PARITY_TOL) -> float:
    """Max |onnxruntime - PyTorch| over >= n points of the box (identity and corners included).

    Raises ExportError when it exceeds ``tol``: a model that does not compute the network
    is never written. Also runs a batch > 1, which every verifier needs.
    """
    pts = parity_points(box, n)
    got = run(session(model), pts)
    ref = reference_outputs(plain, image, pts, box.fam)
    err = float(np.max(np.abs(got - ref)))
    if not np.isfinite(err) or err > tol:
        raise ExportError(f"ONNX/PyTorch parity failed: max difference {err:.3g} px > {tol:g} px")
    return err


def export_instance_model(image: np.ndarray, plain: nn.Sequential, box: perturbation.Box,
                          doc: str = "", simplify_model: bool = True) -> tuple[onnx.ModelProto, float]:
    """Build, simplify and parity-check; returns (model, max parity error in px)."""
    model = build_model(image, plain, doc, box.family)
    if simplify_model:
        model = simplify(model)
    else:
        check_structure(model)
    err = check_parity(model, plain, image, box)
    return model, err
