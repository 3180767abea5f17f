"""Counterexample search of the builtin verifier: points, projected gradient descent, replay.

Candidates are screened on onnxruntime itself (float32, the judge's own arithmetic: a
point whose onnxruntime output lies in a disjunct's region is a counterexample) and every
one that passes goes through :func:`~usnprune.verifier_specs.replay.replay` on a default
session of the file (the judge's; the screening session differs in the last bit) before
it is reported. Gradients come from the float64 graph (:meth:`Graph.evaluate`). Sources, all
inside the instance's time budget:

* the calibration points (a grid for ``n <= 4`` inputs, the box centre, random points);
* after the root bound: the corner of the box that minimises each row's linear lower
  bound (the *worst corner*), the centre, and PGD from the best of them and of the grid;
* during branch and bound: the centre and the worst vertex/corner of the open domains
  closest to a counterexample, and, when they come close, short PGD restarts from them --
  PGD's share of the elapsed time is capped (``pgd_share``), so it scales with ``k``
  without starving the bounds.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from usnprune.verifier_specs.replay import evaluate as ort_evaluate
from usnprune.verifier_specs.replay import replay


class Found(Exception):
    def __init__(self, x: np.ndarray, message: str) -> None:
        self.x, self.message = x, message


class Deadline(Exception):
    pass


class Falsifier:
    """Mixed into :class:`bab.Search` (which provides graph, model, prop, opts, rng, deadline)."""

    pgd_time = 0.0

    def check_time(self) -> None:
        if time.monotonic() >= self.deadline:
            raise Deadline()

    def screen(self, grp, x: np.ndarray) -> np.ndarray:
        """Violation on onnxruntime of each point (<= 0: inside some disjunct's region);
        replays the best one that is, and raises :class:`Found`."""
        if not len(x):
            return np.zeros(0)
        x = np.clip(x, grp.lo, grp.hi)
        y = torch.as_tensor(ort_evaluate(self.model.session, x))
        v = grp.violation(y).numpy()
        for i in np.argsort(v)[: self.opts.max_replays]:
            if v[i] > 0:
                break
            self.replays += 1
            # the judge's session (default options, as the driver's replay and VNN-COMP's):
            # the screening session skips weight pre-packing, whose kernels round a single
            # point differently (seen: one float32 ulp, a boundary point judged outside)
            res = replay(self.model.source or self.model.session, self.prop, x[i], tol=0.0)
            if res.ok:
                raise Found(res.x, f"counterexample replayed on onnxruntime after {self.boxes} sub-boxes")
        return v

    def start_points(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = len(lo)
        pts = [((lo + hi) / 2)[None]]
        if self.opts.grid > 1 and self.opts.grid ** n <= 20000:
            axes = [np.linspace(lo[i], hi[i], self.opts.grid) for i in range(n)]
            pts.append(np.array(list(itertools.product(*axes))))
        if self.opts.random_samples:
            pts.append(self.rng.uniform(lo, hi, size=(self.opts.random_samples, n)))
        return np.concatenate(pts)

    def calibrate(self, grp) -> tuple[np.ndarray, np.ndarray]:
        """Start points and the max |onnxruntime - float64| per output over them (the safety
        margin's calibration), cached per model and box."""
        key = (grp.lo.tobytes(), grp.hi.tobytes(), self.opts.grid, self.opts.random_samples)
        cached = self.model.calibration.get(key)
        if cached is None:
            pts = self.start_points(grp.lo, grp.hi)
            y32 = ort_evaluate(self.model.session, pts)
            idx = np.unique(np.linspace(0, len(pts) - 1, min(len(pts), self.opts.calibration_points)).astype(int))
            with torch.no_grad():
                y64 = self.graph.evaluate(torch.as_tensor(pts[idx])).numpy()
            dev = np.abs(y32[idx] - y64).max(0)
            if len(self.model.calibration) > 64:
                self.model.calibration.clear()
            cached = self.model.calibration[key] = (pts, y32, dev)
        return cached

    def pgd(self, grp, x0: np.ndarray, steps: int) -> None:
        """Projected sign-gradient descent on the float64 violation; every iterate is
        screened on onnxruntime."""
        if not len(x0) or steps <= 0:
            return
        t0 = time.monotonic()
        lo_t, hi_t = torch.as_tensor(grp.lo), torch.as_tensor(grp.hi)
        width = hi_t - lo_t
        x = torch.as_tensor(np.clip(x0, grp.lo, grp.hi)).clone()
        try:
            for step in range(steps):
                self.check_time()
                x.requires_grad_(True)
                v = grp.violation(self.graph.evaluate(x))
                (grad,) = torch.autograd.grad(v.sum(), x)
                with torch.no_grad():
                    tol = 1e-6 * (1.0 + float(grp.b.abs().max()))
                    near = v.detach().numpy() <= tol
                    if near.any():
                        self.screen(grp, x.detach().numpy()[near])
                    eta = 0.2 * 0.8**step  # shrinking steps settle into a kink instead of bouncing over it
                    x = torch.clamp(x.detach() - eta * width * torch.sign(grad), lo_t, hi_t)
            self.screen(grp, x.numpy())
        finally:
            self.pgd_time += time.monotonic() - t0

    def pgd_allowed(self, started: float) -> bool:
        return self.pgd_time <= self.opts.pgd_share * (time.monotonic() - started)

    @staticmethod
    def worst_points(lo: np.ndarray, hi: np.ndarray, c: np.ndarray, verts: np.ndarray | None) -> np.ndarray:
        """The point of each domain minimising the linear function ``c [B, n]`` (in ``t``):
        the worst vertex of a polygon, else the worst corner of the box."""
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        if verts is not None:
            j = np.einsum("bn,bvn->bv", c, verts).argmin(1)
            return mid + rad * verts[np.arange(len(j)), j]
        return mid - rad * np.sign(c)


__all__ = ["Deadline", "Falsifier", "Found"]
