"""Sound forward linear bounds of every pre-activation over the (c, b) box.

Used by the USN bound term and the layer analysis (which ReLUs are stable over the whole
box, how loose the relaxation is per layer). Every tensor carries a lower and an upper
linear function of (c, b) per element, ``coef_c * c + coef_b * b + const``; with only two
input variables this forward mode costs about three forward passes. Computed in float64;
this is an analysis tool -- the verifier backends do their own sound bounding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .perturbation import Box


def _concretize(lin: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> torch.Tensor:
    """``lin``: ``[n, 3, *shape]`` (coef_c, coef_b, const) -> min (or max) over the box."""
    shape = (1, -1) + (1,) * (lin.ndim - 2)
    a, b = lin[:, :2] * lo.view(shape), lin[:, :2] * hi.view(shape)
    pick = torch.maximum(a, b) if upper else torch.minimum(a, b)
    return lin[:, 2] + pick.sum(1)


def _affine(layer: nn.Module, L: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = L.shape[0]
    w = layer.weight.double()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    if isinstance(layer, nn.Conv2d):
        def f(x, wt):
            return nn.functional.conv2d(x.flatten(0, 1), wt, None, layer.stride, layer.padding).unflatten(0, (n, 3))
    else:
        def f(x, wt):
            return x @ wt.T
    newL, newU = f(L, wp) + f(U, wn), f(U, wp) + f(L, wn)
    bias = layer.bias.double().view((1, -1) + (1,) * (newL.ndim - 3)) if layer.bias is not None else 0.0
    newL[:, 2] += bias
    newU[:, 2] += bias
    return newL, newU


def _relu(L, U, lb, ub):
    """Triangle relaxation (upper chord, adaptive lower slope) of ReLU given pre-bounds."""
    active, inactive = lb >= 0, ub <= 0
    unstable = ~(active | inactive)
    denom = torch.where(unstable, ub - lb, torch.ones_like(ub))
    s = torch.where(unstable, ub / denom, active.double())
    alpha = torch.where(unstable, (ub > -lb).double(), active.double())
    newU = U * s.unsqueeze(1)
    newU[:, 2] -= torch.where(unstable, s * lb, torch.zeros_like(lb))
    newL = L * alpha.unsqueeze(1)
    return newL, newU


@torch.no_grad()
def preactivation_bounds(plain: nn.Sequential, images: torch.Tensor, box: Box) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sound ``(lower, upper)`` of every ReLU's input (excluding the input clip), for each
    image over the whole box; list in layer order, each ``[n, *shape]``."""
    x = images.double()
    n = x.shape[0]
    lo = torch.tensor(box.lower, dtype=torch.float64)
    hi = torch.tensor(box.upper, dtype=torch.float64)
    z = torch.stack([x, torch.ones_like(x), torch.zeros_like(x)], 1)  # c*x + b exactly
    zm1 = z.clone()
    zm1[:, 2] -= 1.0
    lb, ub = _concretize(z, lo, hi, False), _concretize(z, lo, hi, True)
    L1, U1 = _relu(z, z.clone(), lb, ub)
    L2, U2 = _relu(zm1, zm1.clone(), lb - 1, ub - 1)
    L, U = L1 - U2, U1 - L2  # clip = relu(z) - relu(z - 1)
    out = []
    for layer in plain:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            L, U = _affine(layer, L, U)
        elif isinstance(layer, nn.ReLU):
            lb, ub = _concretize(L, lo, hi, False), _concretize(U, lo, hi, True)
            out.append((lb, ub))
            L, U = _relu(L, U, lb, ub)
        elif isinstance(layer, nn.AvgPool2d):
            L = nn.functional.avg_pool2d(L.flatten(0, 1), layer.kernel_size, layer.stride).unflatten(0, (n, 3))
            U = nn.functional.avg_pool2d(U.flatten(0, 1), layer.kernel_size, layer.stride).unflatten(0, (n, 3))
        elif isinstance(layer, nn.Flatten):
            L, U = L.flatten(2), U.flatten(2)
        else:
            raise TypeError(f"no bound rule for {type(layer).__name__}")
    return out


def output_bounds(plain: nn.Sequential, images: torch.Tensor, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of the network outputs (the last layer has no ReLU after it)."""
    hooked = nn.Sequential(*list(plain), nn.ReLU())  # read the bounds at the final "ReLU" input
    lb, ub = preactivation_bounds(hooked, images, box)[-1]
    return lb.numpy(), ub.numpy()
