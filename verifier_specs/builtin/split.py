"""The queue of open sub-domains and the two ways to split one.

A sub-domain is a bounding box ``[lo, hi]``, cut (when ReLU splits are on) by the kink
hyperplanes of first-layer ReLUs it was split along: for two inputs a convex polygon
(vertices in ``x``, at most ``VMAX``, padded by repeating a vertex), for more inputs up to
``MMAX`` half-spaces ``a . x <= c`` (an all-zero row is none). Splits:

* an *input split* halves the bounding box along one input (``x_i <= mid`` / ``>= mid``);
* a *ReLU split* cuts along the kink ``w . x + d = 0`` of a first-layer ReLU (its
  pre-activation is exactly affine in the input): in each half that ReLU is stable,
  together with every ReLU of the same kink (pixels of equal value share it).

Both halves of a split keep every point of the domain: polygon clipping computes one
intersection point per crossed edge and both halves use the bitwise same point (the
clipping of the negated half-plane negates exactly), vertices on the line go to both;
constraints are added as they are. A half of zero area (the line only touched the
polygon) lies on the line, so inside the other half, and is dropped; intersection points
are rounded to float64 (~1e-16 relative), far inside the safety margin, like the rest of
the float64 bound computation (docs/verifiers.md). Dropping a constraint (when ``MMAX`` are already in
use) or replacing a polygon by its bounding box (when it would exceed ``VMAX``
vertices) enlarges a domain, which is sound.
"""

from __future__ import annotations

import numpy as np
import torch

from usnprune.bounds.domains import Domains

VMAX = 16
MMAX = 4


class Queue:
    """Open sub-domains as parallel numpy arrays; ``pop`` takes the lowest priorities."""

    def __init__(self, n: int, D: int) -> None:
        self.n, self.D = n, D
        self.lo = np.zeros((0, n))
        self.hi = np.zeros((0, n))
        self.open = np.zeros((0, D), dtype=bool)
        self.prio = np.zeros(0)
        self.poly = np.zeros((0, VMAX, 2)) if n == 2 else None
        self.nv = np.zeros(0, dtype=np.int64) if n == 2 else None
        self.A = np.zeros((0, MMAX, n)) if n != 2 else None
        self.c = np.zeros((0, MMAX)) if n != 2 else None
        self.alpha = None  # [Q, R, A] float32 alpha-CROWN slopes (nan: none), once any exist

    def __len__(self) -> int:
        return len(self.prio)

    def _fields(self):
        return [f for f in ("lo", "hi", "open", "prio", "poly", "nv", "A", "c", "alpha") if getattr(self, f) is not None]

    def push(self, batch: dict) -> None:
        if "alpha" in batch and self.alpha is None:
            if len(self):  # domains queued before slopes existed start from CROWN's choice
                self.alpha = np.full((len(self),) + batch["alpha"].shape[1:], np.nan, dtype=np.float32)
            else:
                self.alpha = np.zeros((0,) + batch["alpha"].shape[1:], dtype=np.float32)
        for f in self._fields():
            if f == "alpha" and "alpha" not in batch:
                setattr(self, f, np.concatenate([self.alpha, np.full((len(batch["lo"]),) + self.alpha.shape[1:],
                                                                    np.nan, dtype=np.float32)]))
                continue
            setattr(self, f, np.concatenate([getattr(self, f), batch[f]]))

    def pop(self, k: int) -> dict:
        if k < len(self):
            sel = np.argpartition(self.prio, k - 1)[:k]
            keep = np.ones(len(self), dtype=bool)
            keep[sel] = False
        else:
            sel, keep = np.arange(len(self)), np.zeros(len(self), dtype=bool)
        out = {f: getattr(self, f)[sel] for f in self._fields()}
        for f in self._fields():
            setattr(self, f, getattr(self, f)[keep])
        return out

    def root(self, lo: np.ndarray, hi: np.ndarray) -> dict:
        b = {"lo": lo[None].copy(), "hi": hi[None].copy(), "open": np.ones((1, self.D), dtype=bool),
             "prio": np.array([-np.inf])}
        if self.n == 2:
            corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
            b["poly"], b["nv"] = _pad(corners[None], np.array([4])), np.array([4])
        else:
            b["A"], b["c"] = np.zeros((1, MMAX, self.n)), np.zeros((1, MMAX))
        return b

    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self._fields())


def domains(batch: dict) -> Domains:
    """The engine's view of a popped batch: bounding boxes, and the cuts in ``t``."""
    lo, hi = torch.as_tensor(batch["lo"]), torch.as_tensor(batch["hi"])
    mid, rad = (lo + hi) / 2, ((hi - lo) / 2).clamp(min=1e-300)
    if "poly" in batch:
        if _is_box(batch):
            return Domains(lo, hi)
        V = int(batch["nv"].max())  # padding repeats the first vertex: only the columns in use
        verts = (torch.as_tensor(batch["poly"][:, :V]) - mid.unsqueeze(1)) / rad.unsqueeze(1)
        return Domains(lo, hi, verts=verts)
    A = torch.as_tensor(batch["A"])
    if not bool((A != 0).any()):
        return Domains(lo, hi)
    # a . x <= c with x = mid + rad t:  (a * rad) . t <= c - a . mid
    G = A * rad.unsqueeze(1)
    h = torch.as_tensor(batch["c"]) - torch.einsum("bmn,bn->bm", A, mid)
    return Domains(lo, hi, G=G, h=h)


def _is_box(batch: dict) -> bool:
    """Every polygon is still its bounding box (no kink cut yet): skip the vertex path."""
    if np.any(batch["nv"] != 4):
        return False
    p = batch["poly"][:, :4]
    lo, hi = batch["lo"][:, None, :], batch["hi"][:, None, :]
    corner = ((p == lo) | (p == hi)).all(-1)
    # four corners of the box, all different: the whole box (a triangle of three corners is not)
    distinct = [(p[:, i] != p[:, j]).any(-1) for i in range(4) for j in range(i + 1, 4)]
    return bool(corner.all() and np.all(distinct))


def _pad(P: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``[B, V, 2]`` with ``count`` valid leading vertices -> ``[B, VMAX, 2]``, padded with the first."""
    B = P.shape[0]
    out = np.repeat(P[:, :1], VMAX, axis=1)
    v = min(P.shape[1], VMAX)
    idx = np.arange(v)[None] < np.minimum(count, v)[:, None]
    out[:, :v][idx] = P[:, :v][idx]
    return out


def _area(P: np.ndarray, nv: np.ndarray) -> np.ndarray:
    """Twice the area of each polygon (shoelace; padding repeats a vertex and adds nothing)."""
    i = np.arange(P.shape[1])[None]
    nxt = np.where(i + 1 < nv[:, None], i + 1, 0)
    Q = np.take_along_axis(P, nxt[..., None], axis=1)
    cross = P[..., 0] * Q[..., 1] - P[..., 1] * Q[..., 0]
    return np.abs(np.where(i < nv[:, None], cross, 0.0).sum(1))


def clip(P: np.ndarray, nv: np.ndarray, a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sutherland-Hodgman on a batch: the part of each polygon (``[B, V, 2]``, its first
    ``nv`` vertices in order) with ``a . x + d <= 0`` (``a [B, 2]``, ``d [B]``). Returns
    ``(vertices [B, 2V, 2], count [B])``."""
    B, V, _ = P.shape
    i = np.arange(V)[None]
    real = i < nv[:, None]
    nxt = np.where(i + 1 < nv[:, None], i + 1, 0)
    f = np.einsum("bvn,bn->bv", P, a) + d[:, None]
    Q = np.take_along_axis(P, nxt[..., None], axis=1)
    fq = np.take_along_axis(f, nxt, axis=1)
    keep = (f <= 0) & real
    cross = (((f < 0) & (fq > 0)) | ((f > 0) & (fq < 0))) & real
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(cross, f / np.where(cross, f - fq, 1.0), 0.0)
    X = P + s[..., None] * (Q - P)
    cand = np.stack([P, X], axis=2).reshape(B, 2 * V, 2)  # vertex i, then the crossing on edge i
    valid = np.stack([keep, cross], axis=2).reshape(B, 2 * V)
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(cand, order[..., None], axis=1), valid.sum(1)


def split(batch: dict, rows: np.ndarray, kind: np.ndarray, dims: np.ndarray, w: np.ndarray,
          d: np.ndarray, n: int) -> dict:
    """Both halves of each chosen domain. ``kind`` 0: input split of ``dims``; 1: ReLU split
    along ``w . x + d = 0`` (``w [R, n]``, ``d [R]``). Returns the children, halves stacked."""
    lo, hi = batch["lo"][rows], batch["hi"][rows]
    R = len(rows)
    a = w.copy()
    off = d.copy()
    inp = kind == 0
    mids = (lo[np.arange(R), dims] + hi[np.arange(R), dims]) / 2
    a[inp] = 0.0
    a[inp, dims[inp]] = 1.0
    off[inp] = -mids[inp]
    out = {"open": np.concatenate([batch["open"][rows]] * 2), "prio": np.concatenate([batch["prio"][rows]] * 2)}
    if "alpha" in batch:  # both halves start from the parent's alpha-CROWN slopes
        out["alpha"] = np.concatenate([batch["alpha"][rows]] * 2)
    if n == 2:
        P, nv = batch["poly"][rows], batch["nv"][rows]
        halves = [clip(P, nv, a, off), clip(P, nv, -a, -off)]
        polys, los, his, nvs = [], [], [], []
        for V, cnt in halves:
            full = cnt > VMAX
            sub = np.where(np.arange(V.shape[1])[None, :, None] < cnt[:, None, None], V, V[:, :1])
            plo, phi = sub.min(1), sub.max(1)
            P2 = _pad(V, cnt)
            if full.any():  # too many vertices: the bounding box instead (a superset)
                P2[full] = _pad(np.stack([np.stack([plo[full][:, 0], plo[full][:, 1]], 1),
                                          np.stack([phi[full][:, 0], plo[full][:, 1]], 1),
                                          np.stack([phi[full][:, 0], phi[full][:, 1]], 1),
                                          np.stack([plo[full][:, 0], phi[full][:, 1]], 1)], 1), np.full(full.sum(), 4))
            polys.append(P2)
            nvs.append(np.where(full, 4, cnt))
            los.append(plo)  # the polygon's own box holds every vertex exactly
            his.append(phi)
        out.update(poly=np.concatenate(polys), nv=np.concatenate(nvs), lo=np.concatenate(los), hi=np.concatenate(his))
        # a half that is a segment or a point (the line touched the polygon at an edge or a
        # vertex) lies on the line, inside the other half: dropped (see the module docstring)
        keep = (out["nv"] >= 3) & (_area(out["poly"], out["nv"]) > 0) & np.all(out["hi"] > out["lo"], axis=1)
        return {k: v[keep] for k, v in out.items()}
    A, c = batch["A"][rows].copy(), batch["c"][rows].copy()
    lo1, hi1, lo2, hi2 = lo.copy(), hi.copy(), lo.copy(), hi.copy()
    hi1[inp, dims[inp]] = mids[inp]
    lo2[inp, dims[inp]] = mids[inp]
    A1, c1, A2, c2 = A.copy(), c.copy(), A.copy(), c.copy()
    relu = np.nonzero(~inp)[0]
    if len(relu):
        # the newest cut replaces the oldest when all MMAX are in use (rows shift up)
        for Ak, ck, sign in ((A1, c1, 1.0), (A2, c2, -1.0)):
            Ak[relu] = np.concatenate([Ak[relu, 1:], sign * a[relu, None]], axis=1)
            ck[relu] = np.concatenate([ck[relu, 1:], -sign * off[relu, None]], axis=1)
    out.update(lo=np.concatenate([lo1, lo2]), hi=np.concatenate([hi1, hi2]), A=np.concatenate([A1, A2]),
               c=np.concatenate([c1, c2]))
    if len(relu):
        shrink(out, np.concatenate([relu, relu + R]))
    return out


def shrink(batch: dict, rows: np.ndarray) -> None:
    """Tighten the bounding boxes of ``rows`` to their cut domains (the dual bound of
    ``+-x_i``: sound, exact with one cut)."""
    sub = {k: v[rows] for k, v in batch.items()}
    dom = domains(sub)
    if dom.G is None:
        return
    n = sub["lo"].shape[1]
    eye = torch.eye(n, dtype=torch.float64)
    c = torch.zeros((len(rows), 2 * n, n + 1), dtype=torch.float64)
    c[:, :n, :n] = eye
    c[:, n:, :n] = -eye
    v = dom.lower(c)  # min t_i, then -max t_i
    mid, rad = (dom.lo + dom.hi) / 2, (dom.hi - dom.lo) / 2
    tlo, thi = v[:, :n].clamp(-1, 1), (-v[:, n:]).clamp(-1, 1)
    new_lo, new_hi = (mid + rad * tlo).numpy(), (mid + rad * thi).numpy()
    slack = 1e-13 * (np.abs(sub["lo"]) + np.abs(sub["hi"]) + 1e-300)  # outward, over float64 rounding
    new_lo, new_hi = new_lo - slack, new_hi + slack
    ok = new_lo <= new_hi  # an empty domain keeps its box (it will close on its own)
    batch["lo"][rows] = np.where(ok, np.maximum(new_lo, sub["lo"]), sub["lo"])
    batch["hi"][rows] = np.where(ok, np.minimum(new_hi, sub["hi"]), sub["hi"])


__all__ = ["MMAX", "Queue", "VMAX", "clip", "domains", "shrink", "split"]
