"""The trust layer: whether a verification's inputs are sound to verify, and whether a
backend's verdict stands.

Inputs (:func:`check_property`, :func:`check_onnx`): ``usnprune verify`` refuses, before it
starts, a VNNLIB whose input box is empty (``lower > upper``) or not finite, whose output
thresholds or coefficients are not finite, and an ONNX model with a NaN or infinite weight:
each would otherwise be verified into a meaningless answer (an empty box is vacuously
``certified``) or burn its whole timeout.

Verdicts (:class:`Checker`): every verdict of every backend passes through it before it is
recorded:

* a ``falsified`` verdict is believed only after its counterexample replays through
  onnxruntime against the VNNLIB (:func:`~usnprune.verifier_specs.replay.replay`); otherwise
  it becomes an ``error``;
* every instance is also attacked by sampling through onnxruntime, on a fixed budget that
  does not grow with the input dimension k (a 21^k grid was 4 million points at k = 5):
  :data:`BUDGET` points per (model, box), shared by that box's properties -- a grid when
  one of at least 3 points per axis fits in half the budget (21 x 21 at k = 2), else the
  corners (at most :data:`MAX_CORNERS`, drawn at random beyond that) and the centre; the
  rest uniform -- then, per property, :data:`REFINE_ROUNDS` rounds of
  :data:`REFINE_POINTS` points in a shrinking box around the point closest to violating
  it. Every sample is a float32 input inside the box exactly
  (:func:`~usnprune.verifier_specs.replay.float32_inside`). ``sample_violated`` records
  whether a sample breaks the property (the empirical ceiling); a ``certified`` verdict
  that a sample refutes becomes an ``error`` row with a SOUNDNESS ALARM. A ``falsified``
  verdict whose counterexample replays is not sampled: its replayed point is an
  onnxruntime sample inside the box that breaks the property (``sample_violated`` true),
  so a fast falsification does not pay for a search it has already won (on a batch-1
  model such as ACAS Xu's the sample costs ~40 ms, more than a 16 ms falsification).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from usnprune.export.vnnlib import Property, parse_file

from usnprune.errors import UsnpruneError

from .base import Instance, Verdict
from .replay import evaluate, float32_inside, get_session, replay

BUDGET = 1024  # sampled points per (model, box), whatever the input dimension
MAX_CORNERS = 256  # corners sampled at most (all of them up to k = 8)
REFINE_ROUNDS = 4  # per property: rounds of sampling around the point closest to violating
REFINE_POINTS = 24  # ... points per round


class InputError(UsnpruneError):
    """A benchmark file that cannot be verified meaningfully (named, with the reason)."""


# ---- inputs -------------------------------------------------------------------------


def check_property(prop: Property, source: str) -> None:
    """Refuse a property with an empty or unbounded input box or non-finite constraints."""
    for k, d in enumerate(prop.disjuncts):
        where = f"{source}: disjunct {k}" if len(prop.disjuncts) > 1 else source
        for i, (lo, hi) in enumerate(zip(d.lower, d.upper)):
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise InputError(f"{where}: X_{i} has no finite bounds ([{lo:g}, {hi:g}]); a box must be bounded")
            if lo > hi:
                raise InputError(f"{where}: the input box is empty (X_{i} >= {lo:g} and X_{i} <= {hi:g})")
        if not (np.all(np.isfinite(d.A)) and np.all(np.isfinite(d.b))):
            bad = int(np.flatnonzero(~(np.isfinite(d.b) & np.all(np.isfinite(d.A), axis=1)))[0])
            raise InputError(f"{where}: output constraint {bad} is not finite (threshold {d.b[bad]:g}); "
                             f"NaN or infinite thresholds are refused")


def check_onnx(path: str) -> None:
    """Refuse an ONNX model that does not load or holds a NaN or infinite weight."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf raises several types for a corrupt file
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(n.name or n.output[0], a.t) for n in model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    for name, t in tensors:
        try:
            arr = numpy_helper.to_array(t)
        except Exception:
            continue  # external data the runtime will report on
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            n_bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise InputError(f"{path}: weight {name!r} holds {n_bad} NaN or infinite value(s); refused")


# ---- sampling -----------------------------------------------------------------------


def base_points(lo: np.ndarray, hi: np.ndarray, budget: int = BUDGET, seed: int = 0) -> np.ndarray:
    """The shared sample of a box (module docstring): ``[<= budget, k]`` float32 points inside."""
    k = len(lo)
    rng = np.random.default_rng(seed)
    per_axis = int(np.floor((budget / 2) ** (1.0 / k) + 1e-9))
    per_axis -= (per_axis % 2 == 0)  # odd: the centre is a grid point
    if per_axis >= 3:
        axes = [np.linspace(a, b, per_axis) for a, b in zip(lo, hi)]
        structured = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k)
    else:
        if 2 ** k <= MAX_CORNERS:
            bits = (np.arange(2 ** k)[:, None] >> np.arange(k)[None, :]) & 1
        else:
            bits = rng.integers(0, 2, size=(MAX_CORNERS, k))
        structured = np.concatenate([np.where(bits == 1, hi, lo), ((lo + hi) / 2)[None, :]])
    rest = max(0, budget - len(structured))
    pts = np.concatenate([structured, rng.uniform(lo, hi, size=(rest, k))])
    return float32_inside(np.clip(pts, lo, hi), lo, hi)


def _margins(prop: Property, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per point: the least, over the disjuncts whose box holds it, of the largest
    ``A y - b`` over the disjunct's rows (<= 0: violated; strictness aside)."""
    out = np.full(len(x), np.inf)
    for d in prop.disjuncts:
        inside = d.contains(x)
        m = (y @ d.A.T - d.b).max(axis=1) if len(d.b) else np.full(len(x), -np.inf)
        out = np.where(inside, np.minimum(out, m), out)
    return out


def _violated(prop: Property, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    hit = np.zeros(len(x), dtype=bool)
    for d in prop.disjuncts:
        hit |= d.contains(x) & d.holds(y)
    return hit


class Checker:
    """Replays counterexamples and samples the box; caches the shared sample of one model
    and box at a time (a chunk runs one ONNX file after the other)."""

    def __init__(self, budget: int = BUDGET, refine_rounds: int = REFINE_ROUNDS,
                 refine_points: int = REFINE_POINTS) -> None:
        self.budget = budget
        self.refine_rounds = refine_rounds
        self.refine_points = refine_points
        self._samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.last_seconds = 0.0  # time of the last check (the row's check_time)

    def _sampled(self, inst: Instance, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = f"{inst.onnx_path}|{lo.tobytes().hex()}|{hi.tobytes().hex()}"
        if key not in self._samples:
            pts = base_points(lo, hi, self.budget)
            self._samples = {key: (pts, evaluate(get_session(str(inst.onnx_path)), pts))}  # one box at a time
        return self._samples[key]

    def sample(self, inst: Instance, prop: Property) -> tuple[np.ndarray, np.ndarray]:
        """Every sampled point of this property and whether it violates the property."""
        lo = np.min([d.lower for d in prop.disjuncts], axis=0)
        hi = np.max([d.upper for d in prop.disjuncts], axis=0)
        pts, ys = self._sampled(inst, lo, hi)
        sess = get_session(str(inst.onnx_path))
        all_pts, hits = [pts], [_violated(prop, pts, ys)]
        margins = _margins(prop, pts, ys)
        best = int(np.argmin(margins))
        centre, best_m = pts[best], margins[best]
        radius = (hi - lo) / 8
        rng = np.random.default_rng(1)
        for _ in range(self.refine_rounds):
            if hits[-1].any() or not np.isfinite(best_m):
                break
            cand = rng.uniform(np.maximum(lo, centre - radius), np.minimum(hi, centre + radius),
                               size=(self.refine_points, len(lo)))
            cand = float32_inside(np.clip(cand, lo, hi), lo, hi)
            ycand = evaluate(sess, cand)
            m = _margins(prop, cand, ycand)
            all_pts.append(cand)
            hits.append(_violated(prop, cand, ycand))
            j = int(np.argmin(m))
            if m[j] < best_m:
                centre, best_m = cand[j], m[j]
            radius = radius / 2
        return np.concatenate(all_pts), np.concatenate(hits)

    def check(self, inst: Instance, verdict: Verdict) -> tuple[Verdict, bool | None]:
        """The verdict to record, and whether sampling alone violates the property."""
        t0 = time.perf_counter()
        try:
            return self._check(inst, verdict)
        finally:
            self.last_seconds = time.perf_counter() - t0

    def _check(self, inst: Instance, verdict: Verdict) -> tuple[Verdict, bool | None]:
        try:
            prop = parse_file(inst.vnnlib_path)
            check_property(prop, str(inst.vnnlib))
        except Exception:  # unreadable files are already the backend's error rows
            return verdict, None
        if verdict.status == "falsified" and verdict.counterexample is not None:
            r = replay(str(inst.onnx_path), prop, np.asarray(verdict.counterexample, dtype=np.float64))
            if r.ok:  # the replayed point is itself an onnxruntime sample that breaks the property
                return dataclasses.replace(verdict, counterexample=tuple(float(v) for v in r.x)), True
        try:
            pts, violated = self.sample(inst, prop)
        except Exception:
            return verdict, None
        sample_violated = bool(violated.any())
        if verdict.status == "falsified":
            why = (f"counterexample does not replay: {r.message}" if verdict.counterexample is not None
                   else "falsified without a counterexample")
            return dataclasses.replace(verdict, status="error", message=f"{why}; {verdict.message}"), sample_violated
        if verdict.status == "certified" and sample_violated:
            x = pts[np.flatnonzero(violated)[0]]
            return dataclasses.replace(
                verdict, status="error", counterexample=tuple(float(v) for v in x),
                message=f"SOUNDNESS ALARM: certified, but the sample {tuple(np.round(x, 9))} violates the property "
                        f"(onnxruntime); {verdict.message}"), sample_violated
        return verdict, sample_violated


__all__ = ["BUDGET", "Checker", "InputError", "base_points", "check_onnx", "check_property"]
