"""The Unbiased and Smooth Neuron (USN) metric, and the per-layer analysis.

For calibration images ``x`` and perturbations ``theta`` (identity ``theta_0`` and the box's
corners included), with ``z_j(x, theta)`` unit j's pre-activation (a channel's averaged over
its spatial positions):

* bias       ``B_j = mean_x | mean_theta z_j(x, theta) - z_j(x, theta_0) |``
* smoothness ``S_j = mean_x std_theta z_j(x, theta)``
* scale      ``s_j = std_x z_j(x, theta_0) + eps``
* ``USN_j = exp(-(B_j + S_j) / s_j)`` in (0, 1]; 1 for a unit whose response does not
  depend on (c, b).

Optional bound term (``bound_weight`` w > 0): ``stab_j``, the share of calibration images
(and, for a channel, spatial positions) on which the unit's pre-activation interval over the
whole box, from sound linear bounds, does not contain zero; the score becomes
``USN_j * (1 - w + w * stab_j)``.

All (image, perturbation) pairs run in large batched forward passes with a hook, never a
Python loop per sample.
"""

from __future__ import annotations

import numpy as np
import torch

from usnprune.bounds import forward, read_graph

from .. import perturbation
from ..onnx_graph import build_model
from .base import Calibration, Importance

EPS_REL = 1e-3  # eps = EPS_REL * (median scale of the layer) + 1e-12: keeps dead units finite


@torch.no_grad()
def collect_preactivations(model, calib: Calibration, batch: int = 4096) -> dict[str, torch.Tensor]:
    """``{layer: [n_images, n_thetas, units]}`` pre-activations (channels spatially averaged)."""
    model.eval()
    dev = next(model.parameters()).device
    m = len(calib.thetas)
    per = max(1, batch // m)
    chunks: dict[str, list[torch.Tensor]] = {}

    def hook(name, z):
        z = z.mean(dim=(2, 3)) if z.ndim == 4 else z
        chunks.setdefault(name, []).append(z.double().cpu())

    for i in range(0, len(calib.images), per):
        x = perturbation.pairs(calib.images[i : i + per], calib.thetas, calib.box).to(dev)
        model.features(x, hook=hook)
    return {n: torch.cat(c).view(-1, m, c[0].shape[-1]) for n, c in chunks.items()}


def usn_from_preactivations(z: torch.Tensor) -> dict[str, np.ndarray]:
    """USN terms from ``[n_images, n_thetas, units]`` (theta 0 = identity)."""
    z0 = z[:, 0]
    bias = (z.mean(1) - z0).abs().mean(0)
    smooth = z.std(1, unbiased=False).mean(0)
    scale = z0.std(0, unbiased=False) if z.shape[0] > 1 else torch.zeros_like(z0[0])
    eps = EPS_REL * float(scale.median()) + 1e-12
    s = scale + eps
    usn = torch.exp(-(bias + smooth) / s)
    return {"bias": bias.numpy(), "smoothness": smooth.numpy(), "scale": s.numpy(), "usn": usn.numpy()}


@torch.no_grad()
def stability(model, calib: Calibration) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per unit: share of (image[, position]) pre-activation intervals over the whole box that
    do not contain zero, and the mean relaxation gap ``-l*u/(u-l)`` of the unstable ones.

    The intervals come from usnprune's one bound engine (:mod:`usnprune.bounds`, the builtin
    verifier's), run on the ONNX graph of each calibration image with its lighting front."""
    plain = model.to_plain()
    names = model.arch.layer_names()
    lo = torch.as_tensor(np.asarray(calib.box.lower, dtype=np.float64)[None])
    hi = torch.as_tensor(np.asarray(calib.box.upper, dtype=np.float64)[None])
    stab: dict[str, torch.Tensor] = {}
    loose: dict[str, torch.Tensor] = {}
    for image in calib.images:
        graph = read_graph(build_model(image.numpy(), plain, fam=calib.box.family))
        fwd = forward(graph, lo, hi, keep_intervals=True)
        relus = [n for n in graph.nodes if n.op_type == "Relu" and not n.name.startswith("clip")]
        for name, node in zip(names, relus):  # the unit layers' ReLUs, in order (onnx_graph names them)
            lb, ub = (v[0] for v in fwd.intervals[node.inputs[0]])
            unstable = (lb < 0) & (ub > 0)
            gap = torch.where(unstable, -lb * ub / (ub - lb).clamp_min(1e-12), torch.zeros_like(lb))
            dims = (1, 2) if lb.ndim == 3 else ()
            stab[name] = stab.get(name, 0) + ((~unstable).double().sum(dims) if dims else (~unstable).double())
            loose[name] = loose.get(name, 0) + (gap.sum(dims) if dims else gap)
    sizes = _positions(model)
    n = len(calib.images)
    return ({k: (stab[k] / (n * sizes[k])).numpy() for k in names},
            {k: (loose[k] / (n * sizes[k])).numpy() for k in names})


def _positions(model) -> dict[str, int]:
    """Spatial positions per unit of each layer (1 for fc layers)."""
    sizes = {}
    s = model.arch.input_size
    for i, c in enumerate(model.arch.conv):
        s = (s + 2 * c.pad - c.kernel) // c.stride + 1
        sizes[f"conv{i}"] = s * s
    for i in range(len(model.arch.fc)):
        sizes[f"fc{i}"] = 1
    return sizes


class USNImportance(Importance):
    comparable = True  # USN is in (0, 1] and normalized per unit
    name = "usn"

    def __init__(self, bound_weight: float = 0.0, batch: int = 4096) -> None:
        self.bound_weight = float(bound_weight)
        self.batch = batch
        self.last_terms: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, model, calib: Calibration) -> dict[str, np.ndarray]:
        z = collect_preactivations(model, calib, self.batch)
        terms = {n: usn_from_preactivations(v) for n, v in z.items()}
        if self.bound_weight > 0:
            stab, _ = stability(model, calib)
            for n in terms:
                terms[n]["stability"] = stab[n]
                terms[n]["usn_bound"] = terms[n]["usn"] * (1 - self.bound_weight + self.bound_weight * stab[n])
        self.last_terms = terms
        key = "usn_bound" if self.bound_weight > 0 else "usn"
        return {n: t[key] for n, t in terms.items()}


def usn_terms(model, calib: Calibration, batch: int = 4096) -> dict[str, dict[str, np.ndarray]]:
    z = collect_preactivations(model, calib, batch)
    return {n: usn_from_preactivations(v) for n, v in z.items()}


def layer_analysis(model, calib: Calibration) -> list[dict]:
    """Per layer: units, mean/min USN, share of unstable units over the box, share of the
    network's bound looseness (sum of relaxation gaps), mean bias/smoothness."""
    terms = usn_terms(model, calib)
    stab, loose = stability(model, calib)
    total_loose = sum(float(v.sum()) for v in loose.values()) or 1.0
    rows = []
    for name in model.arch.layer_names():
        t = terms[name]
        rows.append({
            "layer": name,
            "units": int(len(t["usn"])),
            "mean_usn": float(t["usn"].mean()),
            "min_usn": float(t["usn"].min()),
            "mean_bias": float(t["bias"].mean()),
            "mean_smoothness": float(t["smoothness"].mean()),
            "unstable_share": float(1.0 - stab[name].mean()),
            "looseness_share": float(loose[name].sum()) / total_loose,
        })
    return rows
