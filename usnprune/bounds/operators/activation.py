"""Element-wise activations: Relu, and Clip with constant limits.

ReLU on ``[l, u]``: exact when stable (``u <= 0``: 0; ``l >= 0``: identity). When unstable
the upper bound is the chord through ``(l, 0)`` and ``(u, u)``. The lower bound is a line
through the origin with slope in [0, 1] (every such line is sound), chosen by ``mode``:

* ``adaptive`` -- ``z`` or ``0``, whichever leaves the smaller area (slope 1 when
  ``u > -l``), CROWN's choice;
* ``parallel`` -- the chord's slope ``u / (u - l)``, so lower and upper are parallel (the
  DeepZ/"CROWN-Zono" choice; the gap is then a constant);
* ``zero`` -- slope 0.

Clip is the same construction around each of its two kinks.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import ActivationRule, NodeInfo

NEGLIGIBLE = 1e-9  # a kink this close (relative to the range) to an end of [l, u]


class Relu(ActivationRule):
    op_types = ("Relu",)

    def forward(self, x):
        return torch.relu(x)

    def relax(self, l, u, mode="adaptive"):
        active = l >= 0
        unstable = (l < 0) & (u > 0)
        denom = torch.where(unstable, u - l, torch.ones_like(u))
        chord = torch.where(unstable, u / denom, torch.zeros_like(u))
        us = torch.where(active, torch.ones_like(u), chord)
        ub = torch.where(unstable, -chord * l, torch.zeros_like(u))
        if mode == "adaptive":
            low = (u > -l).to(l.dtype)
        elif mode == "parallel":
            low = chord
        else:
            low = torch.zeros_like(l)
        ls = torch.where(active, torch.ones_like(l), torch.where(unstable, low, torch.zeros_like(l)))
        # Barely unstable (a domain cut along this kink, up to rounding): the chord's slope
        # would be ~1e-16 and its products down the layers subnormal (100x slower float64
        # arithmetic). Use the equally sound 0 <= relu(z) <= u (slope 0, within u of exact)
        # or z <= relu(z) <= z - l instead.
        off = unstable & (u <= NEGLIGIBLE * denom)
        on = unstable & (-l <= NEGLIGIBLE * denom)
        zero, one = torch.zeros_like(l), torch.ones_like(l)
        ls = torch.where(off, zero, torch.where(on, one, ls))
        us = torch.where(off, zero, torch.where(on, one, us))
        ub = torch.where(off, u, torch.where(on, -l, ub))
        return ls, zero, us, ub


class Clip(ActivationRule):
    """``min(max(z, lo), hi)`` with constant ``lo``/``hi`` (inputs since opset 11, attributes before)."""

    op_types = ("Clip",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        lo = info.attr("min", -np.inf)
        hi = info.attr("max", np.inf)
        if 1 in info.consts:
            lo = info.consts[1]
        if 2 in info.consts:
            hi = info.consts[2]
        if np.size(lo) != 1 or np.size(hi) != 1:
            raise info.fail("Clip limits must be scalars")
        self.lo, self.hi = float(np.ravel(lo)[0]), float(np.ravel(hi)[0])
        if self.lo > self.hi:
            raise info.fail(f"Clip min {self.lo} exceeds max {self.hi}")

    def forward(self, x):
        return torch.clamp(x, self.lo, self.hi)

    def relax(self, l, u, mode="adaptive"):
        a, b = self.lo, self.hi
        zero, one = torch.zeros_like(l), torch.ones_like(l)
        # Default: constant bounds f(l) <= f <= f(u) (sound since f is non-decreasing);
        # used when both kinks lie inside (l, u).
        ls, lb = zero.clone(), torch.clamp(l, a, b)
        us, ub = zero.clone(), torch.clamp(u, a, b)
        inside = (l >= a) & (u <= b)
        ls = torch.where(inside, one, ls)
        lb = torch.where(inside, zero, lb)
        us = torch.where(inside, one, us)
        ub = torch.where(inside, zero, ub)
        width = torch.where(u > l, u - l, one)
        # Only the lower kink inside: convex like a + relu(z - a).
        low_kink = (l < a) & (u > a) & (u <= b)
        s = (u - a) / width
        us = torch.where(low_kink, s, us)
        ub = torch.where(low_kink, a - s * l, ub)
        if mode == "parallel":  # s * (z - a) + a: parallel to the upper chord
            ls = torch.where(low_kink, s, ls)
            lb = torch.where(low_kink, a - s * a, lb)
        else:
            take_z = (u - a > a - l) if mode == "adaptive" else torch.zeros_like(l, dtype=torch.bool)
            ls = torch.where(low_kink & take_z, one, torch.where(low_kink, zero, ls))
            lb = torch.where(low_kink, torch.where(take_z, zero, torch.full_like(l, a)), lb)
        # Only the upper kink inside: concave like b - relu(b - z).
        high_kink = (l >= a) & (l < b) & (u > b)
        s = (b - l) / width
        ls = torch.where(high_kink, s, ls)
        lb = torch.where(high_kink, l - s * l, lb)
        if mode == "parallel":  # s * (z - b) + b: parallel to the lower chord
            us = torch.where(high_kink, s, us)
            ub = torch.where(high_kink, b - s * b, ub)
        else:
            take_z = (b - l > u - b) if mode == "adaptive" else torch.zeros_like(l, dtype=torch.bool)
            us = torch.where(high_kink & take_z, one, torch.where(high_kink, zero, us))
            ub = torch.where(high_kink, torch.where(take_z, zero, torch.full_like(l, b)), ub)
        return ls, lb, us, ub


RULES = [Relu, Clip]
__all__ = ["Clip", "Relu", "RULES"]
