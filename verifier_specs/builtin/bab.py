"""Branch and bound on the input domain, with falsification: one property -> one outcome.

For each group of disjuncts that share an input box:

1. *Calibrate and screen.* The start points (a grid for few inputs, the centre, random
   points) run through onnxruntime: any that lands in the unsafe region is replayed; their
   deviation from the float64 graph calibrates the safety margin.
2. *Bound the root.* If every disjunct is excluded, certified -- no attack was needed.
   Otherwise the worst corners of the root's linear bounds, the centre and the best start
   points seed PGD (``falsify.py``).
3. *Bound, close, split.* A queue of sub-domains is processed in batches. For each domain
   and property row ``C_r y <= b_r`` the lower bound of ``C_r y`` is the best of
   forward-mode linear bounds, the backward (CROWN) pass and interval bounds, minimised
   over the domain (``bounds.domains``); a disjunct is closed on a domain when one of its
   rows has ``lower - b_r > margin_r``; a domain is closed when every disjunct is. An open
   domain is split (``split.py``) by whichever the scores favour: along the kink of its
   most influential first-layer ReLU (``relu_split``: BaBSR's score, the multiplier that
   reached the ReLU times its relaxation's gap, for the worst open row), or halving an
   input (``branching``) when a deeper ReLU scores higher. The centres and worst vertices
   of the domains closest to a counterexample are screened, with short PGD restarts.
4. ``certified`` when the queue empties; ``falsified`` as soon as a candidate replays;
   ``timeout`` when the deadline passes (checked before every batch); ``unknown`` when a
   domain that cannot be closed is narrower than ``min_width`` (the property is within the
   safety margin of its boundary there) or the queue outgrows its memory budget.

The safety margin of row ``r`` is
``margin_rel * (1 + |b_r|) + margin_calibration * |C_r| . d`` where ``d`` is the largest
observed per-output difference between onnxruntime (float32) and the float64 evaluation
on the calibration points; with ``rigorous_float32`` the worst-case float32 error bound of
``bounds.float32_error`` is added too. The root box is first widened to the float32
neighbours of its bounds, so that float32-rounded inputs (what onnxruntime really
evaluates) are inside what is proven.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from usnprune.bounds import propagate as bounds
from usnprune.bounds.graph import Graph
from usnprune.export.vnnlib import Disjunct, Property

from . import split as splitting
from .branching import Branching
from .falsify import Deadline, Falsifier, Found
from .options import BuiltinOptions


@dataclasses.dataclass
class Outcome:
    status: str  # certified | falsified | timeout | unknown | error
    x: np.ndarray | None = None
    message: str = ""
    boxes: int = 0  # sub-domains bounded
    replays: int = 0


@dataclasses.dataclass
class PreparedModel:
    """A graph with its onnxruntime session, shared by every instance of one ONNX file."""

    graph: Graph
    session: object
    source: str = ""
    calibration: dict = dataclasses.field(default_factory=dict)  # box key -> (points, y32, deviation)


def widen_to_float32(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box grown to the float32 neighbours of its bounds (onnxruntime rounds inputs)."""
    lo32 = lo.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    hi32 = hi.astype(np.float32)
    hi32 = np.where(hi32.astype(np.float64) < hi, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return np.minimum(lo, lo32.astype(np.float64)), np.maximum(hi, hi32.astype(np.float64))


class _TooManyBoxes(Exception):
    pass


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
        """``[N]``: min over disjuncts of max over rows of ``C y - b`` (<= 0: in the region)."""
        return self.per_disjunct_max(y @ self.C.T - self.b).min(1).values


@dataclasses.dataclass
class _Bounds:
    lb: torch.Tensor  # [B, R] lower bounds of C y
    coefs: torch.Tensor  # [B, R, K] the linear lower bounds behind them (in t)
    scores: torch.Tensor | None  # [B, n] input-split scores
    lams: dict  # activation output -> multiplier [B, R', *shape] of the backward pass
    relax: dict  # activation output -> relaxation
    rows: torch.Tensor  # [B, R'] which row each backward row is
    verts: np.ndarray | None  # [B, V, 2] polygon vertices in t
    alpha: np.ndarray | None = None  # [B, R, A] optimised slopes, for the children's warm start


class Search(Falsifier, Branching):
    """One property on one prepared model, within a deadline."""

    def __init__(self, model: PreparedModel, prop: Property, opts: BuiltinOptions, deadline: float) -> None:
        self.model, self.graph, self.prop, self.opts, self.deadline = model, model.graph, prop, opts, deadline
        self.boxes = 0
        self.replays = 0
        self.rng = np.random.default_rng(0)  # deterministic candidates: reruns give the same verdicts
        # ReLU splits need exact cut domains: polygons, i.e. two inputs (with more, the dual
        # bound over several cuts is loose and cost more sub-domains than it saved)
        self.first = self.graph.first_layer() if opts.relu_split and self.graph.n_inputs == 2 else {}
        self.relus = {n.output for n in self.graph.nodes if n.op_type == "Relu"}
        self.use_refine = opts.refine == "always"
        self.use_alpha = opts.alpha == "always"
        self.batch = opts.batch or auto_batch(self.graph, opts, self.use_refine)

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
        except Found as f:
            return Outcome("falsified", f.x, f.message, self.boxes, self.replays)
        except Deadline:
            return Outcome("timeout", message=f"deadline reached after {self.boxes} sub-boxes", boxes=self.boxes,
                           replays=self.replays)
        except _TooManyBoxes:
            return Outcome("unknown", message=f"more than max_boxes={self.opts.max_boxes} open sub-boxes, or more "
                                              f"than memory_mb={self.opts.memory_mb} MB of them, after "
                                              f"{self.boxes} bounded",
                           boxes=self.boxes, replays=self.replays)
        if unresolved:
            return Outcome("unknown", message=f"{unresolved} sub-boxes narrower than min_width stayed open "
                                              "(the outputs are within the safety margin of the boundary)",
                           boxes=self.boxes, replays=self.replays)
        return Outcome("certified", message=f"every disjunct excluded on {self.boxes} sub-boxes",
                       boxes=self.boxes, replays=self.replays)

    # ---- bounds -----------------------------------------------------------------------

    def _bound(self, grp: _Group, batch: dict, open_: torch.Tensor, refine: bool | None = None,
               alpha: bool | None = None) -> _Bounds:
        """Lower bounds of every row over each domain of ``batch``. The backward pass, the
        expensive part, only runs for the rows of disjuncts still open (``open_ [B, D]``)."""
        g, opts = self.graph, self.opts
        refine = self.use_refine if refine is None else refine
        alpha = self.use_alpha if alpha is None else alpha
        dom = splitting.domains(batch)
        B, n = dom.lo.shape
        keep = bounds.stop_tensors(g, opts.depth)
        fwd = bounds.forward(g, dom.lo, dom.hi, keep=keep, ibp=opts.ibp, relu_lower=opts.relu_lower,
                             split_scores=True, domains=dom, refine=opts.refine_neurons if refine else 0)
        cf = bounds.forward_rows(fwd, grp.C)
        lbf = dom.lower(cf)
        rows_open = open_[:, grp.owner]  # [B, R]
        width = int(rows_open.sum(1).max())
        idx = torch.argsort((~rows_open).to(torch.int8), dim=1, stable=True)[:, :width]  # open rows first
        valid = torch.gather(rows_open, 1, idx)
        C_sel = grp.C[idx] * valid.unsqueeze(-1).to(grp.C.dtype)  # [B, width, n_out]
        record = {t: None for t in fwd.relax} if self.first else None
        cc_sel = bounds.backward(g, fwd, C_sel, opts.depth, record=record)
        store = None
        if alpha:
            init, iters = self._alpha_init(batch, idx), opts.alpha_iterations
            if init is not None:
                iters = opts.alpha_child_iterations  # warm start from the parent's slopes
            with torch.enable_grad():
                cc_sel, found = bounds.optimize_alpha(g, fwd, C_sel, opts.depth, dom.lower, iters, opts.alpha_lr, init)
            store = self._alpha_store(batch, idx, found, grp.R)
        lbc_sel = torch.where(valid, dom.lower(cc_sel), -torch.inf)
        lbc = torch.full_like(lbf, -torch.inf).scatter(1, idx, lbc_sel)
        cc = cf.scatter(1, idx.unsqueeze(-1).expand(-1, -1, cf.shape[-1]), cc_sel)
        use_c = lbc >= lbf
        coefs = torch.where(use_c.unsqueeze(-1), cc, cf)
        lb = torch.maximum(torch.maximum(lbf, lbc), bounds.interval_rows(fwd, grp.C))
        self.boxes += B
        verts = dom.verts.numpy() if dom.verts is not None else None
        return _Bounds(lb, coefs, fwd.split_scores, record or {}, fwd.relax, idx, verts, store)

    # ---- alpha-CROWN warm start: the queue keeps each domain's slopes (float32, every ReLU
    # neuron of every row, flattened) when that is small; children start from their parent's

    def _alpha_layout(self, R: int):
        if getattr(self, "_layout", None) is None:
            layout, off = [], 0
            for node in self.graph.nodes:
                if node.op_type == "Relu":
                    shape = tuple(self.graph.shapes[node.output])
                    size = int(np.prod(shape))
                    layout.append((node.output, shape, off, size))
                    off += size
            self._layout = (layout, off if R * off * 4 <= self.opts.alpha_store_kb * 1024 else 0)
        return self._layout

    def _alpha_init(self, batch: dict, idx: torch.Tensor) -> dict | None:
        if "alpha" not in batch:
            return None
        stored = torch.as_tensor(batch["alpha"], dtype=torch.float64)  # [B, R, A]
        B, W = idx.shape
        rows = torch.gather(stored, 1, idx.unsqueeze(-1).expand(B, W, stored.shape[-1]))
        layout, _ = self._alpha_layout(stored.shape[1])
        return {t: rows[..., off:off + size].reshape((B, W) + shape) for t, shape, off, size in layout}

    def _alpha_store(self, batch: dict, idx: torch.Tensor, found: dict, R: int) -> np.ndarray | None:
        layout, A = self._alpha_layout(R)
        if not A or not found:
            return None
        B, W = idx.shape
        if "alpha" in batch:
            store = torch.as_tensor(batch["alpha"], dtype=torch.float32).clone()
        else:
            store = torch.full((B, R, A), float("nan"), dtype=torch.float32)  # nan: no slope yet
        rows = torch.gather(store, 1, idx.unsqueeze(-1).expand(B, W, A))
        for t, shape, off, size in layout:
            if t in found:
                rows[..., off:off + size] = found[t].reshape(B, W, size).to(torch.float32)
        store.scatter_(1, idx.unsqueeze(-1).expand(B, W, A), rows)
        return store.numpy()

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
        """Decide one group; returns the number of unresolvable domains (raises on cex/deadline)."""
        opts = self.opts
        started = time.monotonic()
        if grp.R == 0 or any(len(d.b) == 0 for d in (self.prop.disjuncts[k] for k in grp.indices)):
            # a disjunct without output rows: its whole box is unsafe; any point shows it
            self.screen(grp, ((grp.lo + grp.hi) / 2)[None])
            return 1
        self.check_time()
        pts, y32, dev = self.calibrate(grp)
        v0 = grp.violation(torch.as_tensor(y32)).numpy()
        self.screen(grp, pts[np.argsort(v0)[: opts.max_replays]])
        root_lo, root_hi = widen_to_float32(grp.lo, grp.hi)
        margin = self.margins(grp, dev, root_lo, root_hi)  # over the box that is proven
        root_w = np.where(root_hi > root_lo, root_hi - root_lo, 1.0)
        q = splitting.Queue(len(root_lo), grp.D)
        q.push(q.root(root_lo, root_hi))
        first = None  # the root's bounds under the chosen settings, when a trial computed them
        if "auto" in (opts.refine, opts.alpha):
            # decided once per model, box and property rows C, whatever the thresholds b: the
            # tolerances of one keypoint share it (the trials cost about as much as a cheap
            # instance's whole search); a root that closed as it was decides nothing
            key = ("tune", root_lo.tobytes(), root_hi.tobytes(), grp.C.numpy().tobytes())
            if key in self.model.calibration:
                self.use_refine, self.use_alpha = self.model.calibration[key]
            else:
                decided, first = self._tune(grp, q.root(root_lo, root_hi), margin)
                if decided:
                    self.model.calibration[key] = (self.use_refine, self.use_alpha)
            self.batch = opts.batch or auto_batch(self.graph, opts, self.use_refine)
        unresolved = 0
        seeds, seed_v, attacked = None, None, False
        per_box = 0
        while len(q):
            self.check_time()
            if len(q) > opts.max_boxes or q.nbytes() + per_box * len(q) > opts.memory_mb * 2**20:
                raise _TooManyBoxes()
            batch = q.pop(self.batch)
            b_open = torch.as_tensor(batch["open"])
            if first is not None:  # the root, bounded by the tuning trial already
                res, first = first, None
            else:
                res = self._bound(grp, batch, b_open)
            gap = res.lb - grp.b - margin  # > 0: the row is infeasible on the domain
            score = grp.per_disjunct_max(gap)  # [B, D] > 0: the disjunct is excluded
            # "closed" must be proven: written as ~(score > 0) so that a NaN bound keeps it open
            still = b_open & ~(score > 0)
            alive = still.any(1)
            if not bool(alive.any()):
                continue
            idx = torch.nonzero(alive).flatten()
            worst = torch.where(still[idx], score[idx], torch.inf).min(1).values.numpy()
            ii = idx.numpy()
            wrow = torch.where(still[idx][:, grp.owner], gap[idx], torch.inf).argmin(1)  # worst open row
            c_worst = res.coefs[idx, wrow, : len(root_lo)].numpy()
            if seeds is None:  # the root did not close: screen its worst corners (every row's)
                c_all = res.coefs[idx, :, : len(root_lo)].numpy()
                reps = c_all.shape[1]
                corners = self.worst_points(np.repeat(batch["lo"][ii], reps, 0), np.repeat(batch["hi"][ii], reps, 0),
                                            c_all.reshape(-1, len(root_lo)), None)
                seeds = np.concatenate([corners, pts[np.argsort(v0)[: opts.pgd_starts]]])
                seed_v = self.screen(grp, seeds)
            elif not attacked and self.boxes >= opts.attack_after:
                # not certified quickly: PGD from the best of them (cheap instances never pay it)
                attacked = True
                self.pgd(grp, seeds[np.argsort(seed_v)[: opts.pgd_starts]], opts.pgd_steps)
            if opts.box_candidates:
                pick = np.argsort(worst)[: opts.box_candidates]
                verts = res.verts[ii[pick]] if res.verts is not None else None
                cand = np.concatenate([(batch["lo"][ii[pick]] + batch["hi"][ii[pick]]) / 2,
                                       self.worst_points(batch["lo"][ii[pick]], batch["hi"][ii[pick]],
                                                         c_worst[pick], verts)])
                v = self.screen(grp, cand)
                if opts.pgd_restarts and self.pgd_allowed(started):
                    self.pgd(grp, cand[np.argsort(v)[: opts.pgd_restarts]], opts.pgd_restart_steps)
            kind, dims, w, d = self.choose(grp, batch, res, idx, wrow, root_w)
            lo_i, hi_i = batch["lo"][ii], batch["hi"][ii]
            span = np.where(kind == 0, (hi_i - lo_i)[np.arange(len(ii)), dims], (hi_i - lo_i).max(1))
            ok = span >= opts.min_width
            unresolved += int((~ok).sum())
            if not ok.any():
                continue
            sub = {k_: v_[ii] for k_, v_ in batch.items()}
            if res.alpha is not None:
                sub["alpha"] = res.alpha[ii]
            sub["open"] = still[idx].numpy()
            sub["prio"] = worst
            children = splitting.split(sub, np.nonzero(ok)[0], kind[ok], dims[ok], w[ok], d[ok], len(root_lo))
            q.push(children)
            per_box = max(per_box, self._bytes_per_domain(res, len(batch["lo"])))
        return unresolved

    def _bytes_per_domain(self, res: _Bounds, B: int) -> int:
        return 0  # the queue holds no per-domain tensors of the bound engine

    def _tune(self, grp: _Group, root: dict, margin: torch.Tensor) -> tuple[bool, _Bounds]:
        """Refinement where it pays: bound the root plainly, then with CROWN intermediate
        bounds and with alpha-CROWN, and keep each where ``(gap ratio)^n`` -- roughly how
        much fewer sub-domains a gap that much smaller needs in ``n`` dimensions -- beats
        twice its extra cost per domain, and that cost is at most ``tune_max_cost`` times
        the plain bound's (``auto``; ``always``/``never`` skip the test). Returns whether a
        choice was made (not when the plain root closes) and the root's bounds under the
        settings chosen, which the search starts from instead of bounding the root again."""
        opts = self.opts
        open_ = torch.ones((1, grp.D), dtype=torch.bool)
        done = {}

        def trial(**kw):
            t = time.process_time()
            res = done[kw["refine"], kw["alpha"]] = self._bound(grp, root, open_, **kw)
            worst = float(grp.per_disjunct_max(res.lb - grp.b - margin).min())
            return worst, max(time.process_time() - t, 1e-6)

        g0, t0 = trial(refine=self.use_refine, alpha=False)
        if g0 > 0:
            return False, done[self.use_refine, False]  # the root closes as it is
        n = min(len(grp.lo), 4)

        def pays(g1, t1):
            # conservative: measured on the root alone, the cost ratio is noisy and the tree
            # shrinks less than the gap ratio suggests once ReLU splits cut the domains
            cost = t1 / t0
            return g1 > 0 or (g1 > g0 and cost <= opts.tune_max_cost and (g0 / g1) ** n > 2 * cost)

        if opts.refine == "auto" and self.refinable():
            g1, t1 = trial(refine=True, alpha=False)
            if pays(g1, t1):
                self.use_refine, g0, t0 = True, g1, t1
        big = any(getattr(n.rule, "W", None) is not None and n.rule.W.dtype != torch.float64 for n in self.graph.nodes)
        if opts.alpha == "auto" and not big and t0 <= opts.alpha_trial_max_s:
            # (autograd through a model with float32-held weights would keep widened copies)
            g1, t1 = trial(refine=self.use_refine, alpha=True)
            if self._alpha_layout(grp.R)[1] and opts.alpha_iterations:
                # the trial ran alpha_iterations steps; a child runs alpha_child_iterations
                # from its parent's slopes: its extra cost over the plain bound is that share
                t1 = t0 + (t1 - t0) * min(1.0, opts.alpha_child_iterations / opts.alpha_iterations)
            self.use_alpha = pays(g1, t1)
        return True, done.get((self.use_refine, self.use_alpha))

    def refinable(self) -> bool:
        """Some ReLU layer beyond the first has at most ``refine_neurons`` neurons."""
        g = self.graph
        return any(n.op_type == "Relu" and n.output not in g.first_layer()
                   and int(np.prod(g.shapes[n.inputs[0]])) <= self.opts.refine_neurons for n in g.nodes)


def auto_batch(graph: Graph, opts: BuiltinOptions, refine: bool) -> int:
    """Sub-domains per batch from the memory budget: an eighth of ``memory_mb`` for the
    batch's bound tensors, estimated from the graph -- lower and upper linear bounds of the
    largest tensors alive at once, every activation's relaxation (kept for the backward
    pass), the backward pass's multipliers and refinement rows -- with a factor 2 for
    temporaries (measured: 2.3 MB per sub-domain on a 4-layer 4096-wide MLP, estimated 3.5)."""
    K = graph.n_inputs + 1
    sizes = sorted((int(np.prod(s)) for s in graph.shapes.values()), reverse=True)
    acts = sum(int(np.prod(graph.shapes[n.output])) for n in graph.nodes if not n.affine)
    rows = 8 + (2 * opts.refine_neurons if refine else 0)
    per_box = 16 * (2 * K * sum(sizes[:3]) + 4 * acts + 2 * rows * sizes[0]) + 4096
    return int(min(4096, max(4, opts.memory_mb * 2**20 // 8 // per_box)))


def verify(model: PreparedModel, prop: Property, timeout: float, opts: BuiltinOptions,
           start: float | None = None) -> Outcome:
    """Decide ``prop`` on ``model`` within ``timeout`` seconds of ``start`` (default: now)."""
    start = time.monotonic() if start is None else start
    return Search(model, prop, opts, start + float(timeout)).run()


__all__ = ["Outcome", "PreparedModel", "Search", "verify", "widen_to_float32"]
