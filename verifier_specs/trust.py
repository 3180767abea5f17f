"""The trust layer: whether a backend's verdict stands.

Every verdict of every backend passes through :class:`Checker` before it is recorded:

* a ``falsified`` verdict is believed only after its counterexample replays through
  onnxruntime against the VNNLIB (:func:`~usnprune.verifier_specs.replay.replay`); otherwise
  it becomes an ``error``;
* every instance is also sampled on a grid of the box through onnxruntime:
  ``sample_violated`` records whether sampling alone breaks it (the empirical ceiling), and
  a ``certified`` verdict that a sample refutes becomes an ``error`` row with a SOUNDNESS
  ALARM.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from usnprune.export.vnnlib import parse_file

from .base import Instance, Verdict
from .replay import evaluate, get_session, replay

SAMPLE_GRID = 21  # points per axis of the sanity sampling grid


class Checker:
    """Replays counterexamples and samples the box; caches per ONNX file."""

    def __init__(self, grid: int = SAMPLE_GRID) -> None:
        self.grid = grid
        self._samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _sampled(self, inst: Instance, prop) -> tuple[np.ndarray, np.ndarray]:
        lo = np.min([d.lower for d in prop.disjuncts], axis=0)
        hi = np.max([d.upper for d in prop.disjuncts], axis=0)
        key = f"{inst.onnx_path}|{lo.tobytes().hex()}|{hi.tobytes().hex()}"
        if key not in self._samples:
            axes = [np.linspace(a, b, self.grid) for a, b in zip(lo, hi)]
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lo))
            rng = np.random.default_rng(0)
            pts = np.concatenate([pts, rng.uniform(lo, hi, size=(64, len(lo)))])
            self._samples = {key: (pts, evaluate(get_session(str(inst.onnx_path)), pts))}  # one file at a time
        return self._samples[key]

    def check(self, inst: Instance, verdict: Verdict) -> tuple[Verdict, bool | None]:
        """The verdict to record, and whether sampling alone violates the property."""
        try:
            prop = parse_file(inst.vnnlib_path)
            pts, ys = self._sampled(inst, prop)
        except Exception:  # unreadable files are already the backend's error rows
            return verdict, None
        violated = np.zeros(len(pts), dtype=bool)
        for d in prop.disjuncts:
            violated |= d.contains(pts) & d.holds(ys)
        sample_violated = bool(violated.any())
        if verdict.status == "falsified":
            if verdict.counterexample is None:
                return dataclasses.replace(verdict, status="error",
                                           message=f"falsified without a counterexample; {verdict.message}"), sample_violated
            r = replay(str(inst.onnx_path), prop, np.asarray(verdict.counterexample, dtype=np.float64))
            if not r.ok:
                return dataclasses.replace(verdict, status="error",
                                           message=f"counterexample does not replay: {r.message}"), sample_violated
            return dataclasses.replace(verdict, counterexample=tuple(float(v) for v in r.x)), sample_violated
        if verdict.status == "certified" and sample_violated:
            x = pts[np.flatnonzero(violated)[0]]
            return dataclasses.replace(
                verdict, status="error", counterexample=tuple(float(v) for v in x),
                message=f"SOUNDNESS ALARM: certified, but the sample {tuple(np.round(x, 9))} violates the property "
                        f"(onnxruntime); {verdict.message}"), sample_violated
        return verdict, sample_violated
