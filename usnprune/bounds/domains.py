"""Input domains, and the minimum of an affine function over them.

A batch holds ``B`` domains. Each has a bounding box ``[lo, hi]`` -- every linear bound is
written in ``t`` with ``x = mid + rad * t``, ``t`` in ``[-1, 1]^n`` -- and may be cut
further by half-spaces (branch and bound splits on a first-layer ReLU's kink, see
``verifier_specs/builtin/bab.py``):

* ``n == 2``: a convex polygon given by its vertices in ``t`` (``verts [B, V, 2]``, a short
  polygon repeats a vertex). The minimum of an affine function over a polygon is its
  minimum over the vertices: exact.
* ``n >= 3``: half-spaces ``G t <= h`` (``G [B, m, n]``, ``h [B, m]``; an all-zero row is
  no constraint). The minimum of ``c . t + d`` over ``{t in [-1, 1]^n : G t <= h}`` is bounded
  below by the Lagrangian dual ``d - lam . h - |c + G^T lam|_1`` for every ``lam >= 0``
  (weak duality; equal at the optimum, by LP duality). ``lam`` is maximised one
  coordinate at a time, exactly: in one coordinate the dual is concave piecewise linear,
  its slope drops by ``2 |g_i|`` at each breakpoint ``-c_i / g_i > 0``, and the maximum
  sits where the slope turns negative (a weighted median). Stopping early, or an empty
  domain, still gives a sound bound.

Without cuts the minimum is ``d - sum_i |c_i|`` as everywhere else in the engine.
"""

from __future__ import annotations

import dataclasses

import torch

SWEEPS = 2  # coordinate-ascent passes over the constraints (each one exact in its coordinate)


@dataclasses.dataclass
class Domains:
    lo: torch.Tensor  # [B, n] bounding boxes
    hi: torch.Tensor
    verts: torch.Tensor | None = None  # [B, V, 2] polygon vertices in t (n == 2)
    G: torch.Tensor | None = None  # [B, m, n] half-spaces in t (n >= 3)
    h: torch.Tensor | None = None  # [B, m]
    deep: bool = True  # cut concretization beyond the first layer too (measured: 10x fewer domains)

    @property
    def n(self) -> int:
        return self.lo.shape[1]

    @property
    def cut(self) -> bool:
        return self.verts is not None or self.G is not None

    def lower(self, c: torch.Tensor) -> torch.Tensor:
        """``min_t c[..., :n] . t + c[..., n]`` over each domain, for ``c [B, ..., n + 1]``."""
        n = self.n
        if not self.cut:
            return c[..., n] - c[..., :n].abs().sum(-1)
        B = c.shape[0]
        flat = c.reshape(B, -1, n + 1)
        if self.verts is not None:
            v = torch.einsum("bmn,bvn->bmv", flat[..., :n], self.verts).min(-1).values
        else:
            v = dual_min(flat[..., :n], self.G, self.h)
        return (flat[..., n] + v).reshape(c.shape[:-1])

    def box_concretize(self, lw: torch.Tensor, uw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Over the bounding boxes (a superset of the domains: sound, looser, cheaper)."""
        n = self.n
        return lw[:, n] - lw[:, :n].abs().sum(1), uw[:, n] + uw[:, :n].abs().sum(1)

    def concretize(self, lw: torch.Tensor, uw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval of every element of linear bounds ``[B, K, *shape]`` over the domains."""
        n = self.n
        if not self.cut:
            return lw[:, n] - lw[:, :n].abs().sum(1), uw[:, n] + uw[:, :n].abs().sum(1)
        B, K = lw.shape[:2]
        shape = lw.shape[2:]
        L, U = lw.reshape(B, K, -1), uw.reshape(B, K, -1)
        if self.verts is not None:  # [B, V, N] values at the vertices, without reordering the bounds
            lo = L[:, n] + torch.einsum("bkm,bvk->bvm", L[:, :n], self.verts).min(1).values
            hi = U[:, n] + torch.einsum("bkm,bvk->bvm", U[:, :n], self.verts).max(1).values
        else:
            lo = L[:, n] + dual_min(L[:, :n].transpose(1, 2), self.G, self.h)
            hi = U[:, n] - dual_min(-U[:, :n].transpose(1, 2), self.G, self.h)
        return lo.reshape((B,) + shape), hi.reshape((B,) + shape)


def dual_min(c: torch.Tensor, G: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A lower bound (exact for one constraint) of ``min c . t`` over ``t in [-1, 1]^n, G t <= h``.

    ``c [B, M, n]``, ``G [B, m, n]``, ``h [B, m]`` -> ``[B, M]``.
    """
    used = (G != 0).any(-1).any(0)  # constraints no domain of the batch has are skipped
    G, h = G[:, used], h[:, used]
    B, M, n = c.shape
    m = G.shape[1]
    if m == 0:
        return -c.abs().sum(-1)
    lam = torch.zeros((B, M, m), dtype=c.dtype)
    for _ in range(SWEEPS if m > 1 else 1):
        for j in range(m):
            g = G[:, j].unsqueeze(1)  # [B, 1, n]
            others = c + torch.einsum("bmk,bkn->bmn", lam, G) - lam[..., j:j + 1] * g
            lam[..., j] = _best_step(others, g.expand_as(others), h[:, j].unsqueeze(1).expand(B, M))
    total = c + torch.einsum("bmk,bkn->bmn", lam, G)
    return -(lam * h.unsqueeze(1)).sum(-1) - total.abs().sum(-1)


def _best_step(c: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``argmax_{lam >= 0} -lam h - sum_i |c_i + lam g_i|`` (``[..., n]`` -> ``[...]``)."""
    sign0 = torch.where(c != 0, torch.sign(c), torch.sign(g))
    slope0 = -h - (g * sign0).sum(-1)  # slope just right of 0
    bp = torch.where(c * g < 0, -c / torch.where(g == 0, torch.ones_like(g), g), torch.full_like(c, torch.inf))
    order = torch.argsort(bp, dim=-1)
    bps = torch.gather(bp, -1, order)
    drop = torch.cumsum(2 * torch.gather(g.abs(), -1, order), -1)
    turned = (slope0.unsqueeze(-1) - drop) <= 0  # the slope is <= 0 right after this breakpoint
    finite = torch.isfinite(bps)
    first = torch.where(turned & finite, torch.arange(bps.shape[-1]).expand_as(bps), bps.shape[-1]).min(-1).values
    # the slope never turns: the domain is empty (any lam is sound); take the last breakpoint
    last = torch.where(finite, torch.arange(bps.shape[-1]).expand_as(bps), -1).max(-1).values
    idx = torch.where(first < bps.shape[-1], first, last).clamp(min=0)
    lam = torch.gather(torch.where(finite, bps, torch.zeros_like(bps)), -1, idx.unsqueeze(-1)).squeeze(-1)
    return torch.where(slope0 <= 0, torch.zeros_like(lam), lam)


__all__ = ["Domains", "dual_min"]
