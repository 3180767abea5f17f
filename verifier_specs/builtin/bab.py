"""Branch and bound on the input box, with falsification: one property -> one outcome.

For each group of disjuncts that share an input box:

1. *Falsify first.* Evaluate a grid (plus random points) in float64, run a few projected
   sign-gradient steps from the most promising points, and replay every point that looks
   unsafe through onnxruntime (``verifier_specs.replay``). The same grid, run through
   onnxruntime, calibrates the float32-vs-float64 deviation used in the safety margin.
2. *Bound, close, split.* A queue of sub-boxes is processed in batches. For each box and
   property row ``C_r y <= b_r`` the lower bound of ``C_r y`` is the best of forward-mode
   linear bounds, the backward (CROWN) pass and interval bounds; a disjunct is closed on a
   box when one of its rows has ``lower - b_r > margin_r``; a box is closed when every
   disjunct is. Open boxes are split in two along one input dimension (by default the one
   that drives the most not-exactly-relaxed neurons, see ``bounds._instability``); the
   centres and worst corners of the most promising ones are tried as counterexamples.
3. ``certified`` when the queue empties; ``falsified`` as soon as a candidate replays;
   ``timeout`` when the deadline passes (checked before every batch); ``unknown`` when a box
   that cannot be closed is narrower than ``min_width`` (the property is within the safety
   margin of its boundary there) or the queue outgrows ``max_boxes``.

The safety margin of row ``r`` is
``margin_rel * (1 + |b_r|) + margin_calibration * |C_r| . d`` where ``d`` is the largest
observed per-output difference between onnxruntime (float32) and the float64 evaluation
on the calibration grid; with ``rigorous_float32`` the worst-case float32 error bound of
``bounds.float32_error`` is added too. The root box is first widened to the float32
neighbours of its bounds, so that float32-rounded inputs (what onnxruntime really
evaluates) are inside what is proven.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import torch

from usnprune.bounds import propagate as bounds
from usnprune.bounds.graph import Graph
from usnprune.export.vnnlib import Disjunct, Property
from usnprune.verifier_specs.replay import evaluate as ort_evaluate
from usnprune.verifier_specs.replay import replay

from .options import BuiltinOptions

SCREEN_TOL = 1e-6  # float64 slack (relative to 1 + |b|) under which a candidate is replayed


@dataclasses.dataclass
class Outcome:
    status: str  # certified | falsified | timeout | unknown | error
    x: np.ndarray | None = None
    message: str = ""
    boxes: int = 0  # sub-boxes bounded
    replays: int = 0


@dataclasses.dataclass
class PreparedModel:
    """A graph with its onnxruntime session, shared by every instance of one ONNX file."""

    graph: Graph
    session: object
    source: str = ""
    calibration: dict = dataclasses.field(default_factory=dict)  # box key -> (points, y64, deviation)


def widen_to_float32(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box grown to the float32 neighbours of its bounds (onnxruntime rounds inputs)."""
    lo32 = lo.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    hi32 = hi.astype(np.float32)
    hi32 = np.where(hi32.astype(np.float64) < hi, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return np.minimum(lo, lo32.astype(np.float64)), np.maximum(hi, hi32.astype(np.float64))


class _Deadline(Exception):
    pass


class _TooManyBoxes(Exception):
    pass


class _Found(Exception):
    def __init__(self, x: np.ndarray, message: str) -> None:
        self.x, self.message = x, message


class _Group:
    """Disjuncts that share one input box, with their rows stacked."""

    def __init__(self, items: list[tuple[int, Disjunct]]) -> None:
        self.indices = [k for k, _ in items]
        d0 = items[0][1]
        self.lo, self.hi = d0.lower.copy(), d0.upper.copy()
        rows, rhs, owner = [], [], []
        for j, (_, d) in enumerate(items):
            rows.append(d.A)
            rhs.append(d.b)
            owner += [j] * len(d.b)
        self.C = torch.as_tensor(np.concatenate(rows), dtype=torch.float64)
        self.b = torch.as_tensor(np.concatenate(rhs), dtype=torch.float64)
        self.owner = torch.as_tensor(owner, dtype=torch.long)
        self.D = len(items)
        self.R = len(owner)

    def per_disjunct_max(self, v: torch.Tensor) -> torch.Tensor:
        """``[N, R]`` row values -> ``[N, D]`` max over each disjunct's rows."""
        out = torch.full((v.shape[0], self.D), -torch.inf, dtype=v.dtype)
        return out.scatter_reduce(1, self.owner.expand(v.shape[0], -1), v, reduce="amax")

    def violation(self, y: torch.Tensor) -> torch.Tensor:
        """``[N]``: min over disjuncts of max over rows of ``C y - b`` (<= 0: unsafe in float64)."""
        return self.per_disjunct_max(y @ self.C.T - self.b).min(1).values


class Search:
    """One property on one prepared model, within a deadline."""

    def __init__(self, model: PreparedModel, prop: Property, opts: BuiltinOptions, deadline: float) -> None:
        self.model, self.graph, self.prop, self.opts, self.deadline = model, model.graph, prop, opts, deadline
        self.boxes = 0
        self.replays = 0
        self.rng = np.random.default_rng(0)  # deterministic candidates: reruns give the same verdicts

    # ---- entry point ----------------------------------------------------------------

    def run(self) -> Outcome:
        g, prop = self.graph, self.prop
        if prop.n_inputs != g.n_inputs:
            return Outcome("error", message=f"the property has {prop.n_inputs} inputs, the network {g.n_inputs}")
        if prop.n_outputs != g.n_outputs:
            return Outcome("error", message=f"the property has {prop.n_outputs} outputs, the network {g.n_outputs}")
        groups: dict[bytes, list] = {}
        for k, d in enumerate(prop.disjuncts):
            if np.any(d.lower > d.upper):
                continue  # an empty input box holds no counterexample
            if not (np.all(np.isfinite(d.lower)) and np.all(np.isfinite(d.upper))):
                return Outcome("error", message=f"disjunct {k} has an unbounded input box; "
                                                "the builtin verifier needs every input bounded")
            groups.setdefault(d.lower.tobytes() + d.upper.tobytes(), []).append((k, d))
        unresolved = 0
        try:
            for items in groups.values():
                unresolved += self._group(_Group(items))
        except _Found as f:
            return Outcome("falsified", f.x, f.message, self.boxes, self.replays)
        except _Deadline:
            return Outcome("timeout", message=f"deadline reached after {self.boxes} sub-boxes", boxes=self.boxes,
                           replays=self.replays)
        except _TooManyBoxes:
            return Outcome("unknown", message=f"more than max_boxes={self.opts.max_boxes} open sub-boxes "
                                              f"after {self.boxes} bounded", boxes=self.boxes, replays=self.replays)
        if unresolved:
            return Outcome("unknown", message=f"{unresolved} sub-boxes narrower than min_width stayed open "
                                              "(the outputs are within the safety margin of the boundary)",
                           boxes=self.boxes, replays=self.replays)
        return Outcome("certified", message=f"every disjunct excluded on {self.boxes} sub-boxes",
                       boxes=self.boxes, replays=self.replays)

    # ---- falsification ----------------------------------------------------------------

    def _check_time(self) -> None:
        if time.monotonic() >= self.deadline:
            raise _Deadline()

    def _try(self, grp: _Group, x: np.ndarray, v: np.ndarray) -> None:
        """Replay the most promising candidates whose float64 violation is near or below 0."""
        tol = SCREEN_TOL * (1.0 + (float(grp.b.abs().max()) if grp.R else 0.0))
        order = np.argsort(v)
        for i in order[: self.opts.max_replays]:
            if v[i] > tol:
                break
            self.replays += 1
            res = replay(self.model.session, self.prop, x[i], tol=0.0)
            if res.ok:
                raise _Found(res.x, f"counterexample replayed on onnxruntime after {self.boxes} sub-boxes")

    def _eval(self, x: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            out = [self.graph.evaluate(torch.as_tensor(x[i:i + 512])) for i in range(0, len(x), 512)]
        return torch.cat(out) if out else torch.zeros((0, self.graph.n_outputs), dtype=torch.float64)

    def _start_points(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = len(lo)
        pts = []
        if self.opts.grid > 1 and self.opts.grid ** n <= 20000:
            axes = [np.linspace(lo[i], hi[i], self.opts.grid) for i in range(n)]
            pts.append(np.array(list(itertools.product(*axes))))
        else:
            pts.append(((lo + hi) / 2)[None])
        if self.opts.random_samples:
            pts.append(self.rng.uniform(lo, hi, size=(self.opts.random_samples, n)))
        return np.concatenate(pts)

    def _calibrate(self, grp: _Group) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """Grid points, their float64 outputs, and the max |onnxruntime - float64| per output."""
        key = (grp.lo.tobytes(), grp.hi.tobytes(), self.opts.grid, self.opts.random_samples)
        cached = self.model.calibration.get(key)
        if cached is None:
            pts = self._start_points(grp.lo, grp.hi)
            y64 = self._eval(pts)
            y32 = ort_evaluate(self.model.session, pts)
            dev = np.abs(y32 - y64.numpy()).max(0)
            if len(self.model.calibration) > 64:
                self.model.calibration.clear()
            cached = self.model.calibration[key] = (pts, y64, dev)
        return cached

    def _pgd(self, grp: _Group, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Projected sign-gradient descent on the violation from the best starting points."""
        if not len(x0) or not self.opts.pgd_steps:
            return
        width = torch.as_tensor(hi - lo)
        lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
        x = torch.as_tensor(x0).clone()
        for step in range(self.opts.pgd_steps):
            self._check_time()
            x.requires_grad_(True)
            v = grp.violation(self.graph.evaluate(x))
            (grad,) = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                self._try(grp, x.detach().numpy().copy(), v.detach().numpy())
                eta = 0.2 * 0.8**step  # shrinking steps settle into a kink instead of bouncing over it
                x = torch.clamp(x.detach() - eta * width * torch.sign(grad), lo_t, hi_t)

    # ---- bounds -----------------------------------------------------------------------

    def _bound(self, grp: _Group, lo: torch.Tensor, hi: torch.Tensor,
               open_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``lb [B, R]`` of ``C y``, the linear lower-bound functions ``[B, R, K]`` behind it,
        and the per-input instability scores ``[B, n]`` (for ``branching: unstable``).

        The backward pass, the expensive part, only runs for the rows of disjuncts still
        open on each box (``open_`` ``[B, D]``); closed rows keep their cheaper bounds.
        """
        g, opts = self.graph, self.opts
        B, n = lo.shape
        keep = bounds.stop_tensors(g, opts.depth)
        fwd = bounds.forward(g, lo, hi, keep=keep, ibp=opts.ibp, relu_lower=opts.relu_lower,
                             split_scores=opts.branching == "unstable")
        cf = bounds.forward_rows(fwd, grp.C)
        lbf = bounds.lower_of(cf, n)
        rows_open = open_[:, grp.owner]  # [B, R]
        width = int(rows_open.sum(1).max())
        idx = torch.argsort((~rows_open).to(torch.int8), dim=1, stable=True)[:, :width]  # open rows first
        valid = torch.gather(rows_open, 1, idx)
        C_sel = grp.C[idx] * valid.unsqueeze(-1).to(grp.C.dtype)  # [B, width, n_out]
        cc_sel = bounds.backward(g, fwd, C_sel, opts.depth)
        lbc_sel = torch.where(valid, bounds.lower_of(cc_sel, n), -torch.inf)
        lbc = torch.full_like(lbf, -torch.inf).scatter(1, idx, lbc_sel)
        cc = cf.scatter(1, idx.unsqueeze(-1).expand(-1, -1, cf.shape[-1]), cc_sel)
        use_c = lbc >= lbf
        coefs = torch.where(use_c.unsqueeze(-1), cc, cf)
        lb = torch.maximum(torch.maximum(lbf, lbc), bounds.interval_rows(fwd, grp.C))
        self.boxes += B
        return lb, coefs, fwd.split_scores

    def margins(self, grp: _Group, dev: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
        C_abs = grp.C.abs()
        m = self.opts.margin_rel * (1.0 + grp.b.abs())
        m = m + self.opts.margin_calibration * (C_abs @ torch.as_tensor(dev))
        if self.opts.rigorous_float32:
            e = bounds.float32_error(self.graph, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
            m = m + C_abs @ e
        return m

    # ---- branch and bound ------------------------------------------------------------

    def _group(self, grp: _Group) -> int:
        """Decide one group; returns the number of unresolvable boxes (raises on cex/deadline)."""
        opts = self.opts
        if grp.R == 0 or any(len(d.b) == 0 for d in (self.prop.disjuncts[k] for k in grp.indices)):
            # a disjunct without output rows: its whole box is unsafe; any point shows it
            centre = (grp.lo + grp.hi) / 2
            self._try(grp, centre[None], np.array([-1.0]))
            return 1
        self._check_time()
        pts, y64, dev = self._calibrate(grp)
        v = grp.violation(y64).numpy()
        self._try(grp, pts, v)
        if opts.pgd_starts:
            self._pgd(grp, pts[np.argsort(v)[: opts.pgd_starts]], grp.lo, grp.hi)
        root_lo, root_hi = widen_to_float32(grp.lo, grp.hi)
        margin = self.margins(grp, dev, root_lo, root_hi)  # over the box that is proven
        root_w = np.where(root_hi > root_lo, root_hi - root_lo, 1.0)
        q_lo = root_lo[None].copy()
        q_hi = root_hi[None].copy()
        q_open = np.ones((1, grp.D), dtype=bool)
        q_prio = np.array([-np.inf])
        unresolved = 0
        true_lo, true_hi = grp.lo, grp.hi
        while len(q_prio):
            self._check_time()
            if len(q_prio) > opts.max_boxes:
                raise _TooManyBoxes()
            take = min(opts.batch, len(q_prio))
            if take < len(q_prio):
                sel = np.argpartition(q_prio, take - 1)[:take]
                keep = np.ones(len(q_prio), dtype=bool)
                keep[sel] = False
            else:
                sel = np.arange(len(q_prio))
                keep = np.zeros(len(q_prio), dtype=bool)
            b_lo, b_hi, b_open = q_lo[sel], q_hi[sel], q_open[sel]
            q_lo, q_hi, q_open, q_prio = q_lo[keep], q_hi[keep], q_open[keep], q_prio[keep]

            lo_t, hi_t = torch.as_tensor(b_lo), torch.as_tensor(b_hi)
            lb, coefs, scores = self._bound(grp, lo_t, hi_t, torch.as_tensor(b_open))
            gap = lb - grp.b - margin  # > 0: the row is infeasible on the box
            score = grp.per_disjunct_max(gap)  # [B, D] > 0: the disjunct is excluded
            # "closed" must be proven: written as ~(score > 0) so that a NaN bound keeps it open
            still = torch.as_tensor(b_open) & ~(score > 0)
            alive = still.any(1)
            if not bool(alive.any()):
                continue
            idx = torch.nonzero(alive).flatten()
            worst = torch.where(still[idx], score[idx], torch.inf).min(1)
            wd = worst.values.numpy()

            if opts.box_candidates:
                # the boxes closest to a counterexample: their centres and worst corners
                pick = idx.numpy()[np.argsort(wd)[: opts.box_candidates]]
                self._box_candidates(grp, b_lo[pick], b_hi[pick], coefs[pick], gap[pick], still[pick],
                                     true_lo, true_hi)

            p_lo, p_hi, p_open = b_lo[idx.numpy()], b_hi[idx.numpy()], still[idx].numpy()
            dims = self._split_dims(grp, p_lo, p_hi, root_w, coefs[idx], gap[idx], still[idx],
                                    scores[idx] if scores is not None else None)
            rows = np.arange(len(dims))
            width = p_hi[rows, dims] - p_lo[rows, dims]
            ok = width >= opts.min_width
            unresolved += int((~ok).sum())
            rows, dims = rows[ok], dims[ok]
            mid = (p_lo[rows, dims] + p_hi[rows, dims]) / 2
            left_hi = p_hi[rows].copy()
            left_hi[np.arange(len(rows)), dims] = mid
            right_lo = p_lo[rows].copy()
            right_lo[np.arange(len(rows)), dims] = mid
            q_lo = np.concatenate([q_lo, p_lo[rows], right_lo])
            q_hi = np.concatenate([q_hi, left_hi, p_hi[rows]])
            q_open = np.concatenate([q_open, p_open[rows], p_open[rows]])
            q_prio = np.concatenate([q_prio, wd[rows], wd[rows]])
        return unresolved

    def _split_dims(self, grp, lo, hi, root_w, coefs, gap, still, scores) -> np.ndarray:
        rel = (hi - lo) / root_w
        if self.opts.branching == "unstable":
            sc = scores.numpy()
            dims = sc.argmax(1)
            flat = sc.max(1) <= 0  # nothing unstable left: fall back to the widest
            dims[flat] = rel[flat].argmax(1)
            return dims
        if self.opts.branching == "gradient":
            n = lo.shape[1]
            # The worst open row's linear bound: split where it varies most across the box.
            g = torch.where(still[:, grp.owner], gap, torch.inf)
            r = g.argmin(1)
            c = coefs[torch.arange(len(r)), r, :n].abs().numpy()
            dims = c.argmax(1)
            flat = c.max(1) <= 0
            dims[flat] = rel[flat].argmax(1)
            return dims
        return rel.argmax(1)

    def _box_candidates(self, grp, lo, hi, coefs, gap, still, true_lo, true_hi) -> None:
        """Centres, and the corner minimising each box's worst row bound, as counterexamples."""
        n = lo.shape[1]
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        g = torch.where(still[:, grp.owner], gap, torch.inf)
        r = g.argmin(1)
        c = coefs[torch.arange(len(r)), r, :n].numpy()
        corner = mid - rad * np.sign(c)
        x = np.clip(np.concatenate([mid, corner]), true_lo, true_hi)
        v = grp.violation(self._eval(x)).numpy()
        self._try(grp, x, v)


def verify(model: PreparedModel, prop: Property, timeout: float, opts: BuiltinOptions,
           start: float | None = None) -> Outcome:
    """Decide ``prop`` on ``model`` within ``timeout`` seconds of ``start`` (default: now)."""
    start = time.monotonic() if start is None else start
    return Search(model, prop, opts, start + float(timeout)).run()


__all__ = ["Outcome", "PreparedModel", "Search", "verify", "widen_to_float32"]
