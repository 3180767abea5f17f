"""Counterexample replay: is a claimed ``sat`` input really a counterexample?

Every ``falsified`` verdict of every backend goes through :func:`replay` before the driver
believes it (a failed replay becomes an ``error`` row). The check is the VNN-COMP one, run
on the real ONNX file with onnxruntime in float32, never on a verifier's own arithmetic:

1. ``x`` must lie in some disjunct's input box. Verifiers report float32 inputs (alpha-
   beta-CROWN's -0.1 comes back as -0.10000000149011612, 1.5e-9 outside the box), so a point
   within ``tol`` of a box is first clamped into it; the clamped point is what is replayed
   and returned.
2. ``y = onnxruntime(x)`` (float32 in, output read back as float64).
3. ``y`` must satisfy every row of that disjunct: ``A @ y <= b``, strictly ``<`` for strict
   rows. No tolerance on the output side: a point on the wrong side of the boundary by any
   amount is not a counterexample.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from usnprune.export.vnnlib import Property


@dataclasses.dataclass
class ReplayResult:
    ok: bool  # x is a genuine counterexample
    x: np.ndarray  # the (clamped) input that was replayed
    y: np.ndarray  # onnxruntime's output for it (float64 copy of float32 values)
    message: str


@functools.lru_cache(maxsize=8)
def _session_for_file(path: str, mtime_ns: int, size: int):  # keyed on mtime: a rewritten file is re-read
    from usnprune.export.onnx_model import session

    return session(Path(path).read_bytes())


def get_session(model: Any):
    """An onnxruntime session for a path, a ModelProto, serialized bytes, or a session."""
    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        return model
    if isinstance(model, (str, os.PathLike)):
        st = os.stat(model)
        return _session_for_file(str(Path(model).resolve()), st.st_mtime_ns, st.st_size)
    from usnprune.export.onnx_model import session

    if isinstance(model, onnx.ModelProto):
        return session(model)
    return session(bytes(model))


def evaluate(sess, x: np.ndarray, n_outputs: int | None = None) -> np.ndarray:
    """onnxruntime outputs ``[n, n_out]`` (float64) for inputs ``[n, n_in]`` fed as float32."""
    inp = sess.get_inputs()[0]
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    dims = list(inp.shape)
    per_sample = [d if isinstance(d, int) and d > 0 else -1 for d in dims[1:]]
    feed = x.astype(np.float32).reshape([x.shape[0]] + (per_sample if per_sample.count(-1) <= 1 else [-1]))
    if isinstance(dims[0], int) and dims[0] == 1 and x.shape[0] > 1:  # a model fixed to batch 1
        ys = [sess.run(None, {inp.name: feed[i:i + 1]})[0] for i in range(x.shape[0])]
        y = np.concatenate([np.asarray(v).reshape(1, -1) for v in ys])
    else:
        y = sess.run(None, {inp.name: feed})[0]
    y = np.asarray(y, dtype=np.float64).reshape(x.shape[0], -1)
    if n_outputs is not None and y.shape[1] != n_outputs:
        raise ValueError(f"the network has {y.shape[1]} outputs but the property declares {n_outputs}")
    return y


def replay(model: Any, prop: Property, x, tol: float = 1e-6) -> ReplayResult:
    """Replay ``x`` through ``model`` (path, ModelProto, bytes or session) against ``prop``."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    empty = np.zeros(0)
    if x.size != prop.n_inputs:
        return ReplayResult(False, x, empty, f"x has {x.size} values, the property has {prop.n_inputs} inputs")
    if not np.all(np.isfinite(x)):
        return ReplayResult(False, x, empty, "x is not finite")
    sess = get_session(model)
    tried: dict[bytes, np.ndarray] = {}  # clamped x -> y, so disjuncts sharing a box run once
    best = None
    for k, d in enumerate(prop.disjuncts):
        if not bool(d.contains(x, tol)[0]):
            continue
        xc = np.clip(x, d.lower, d.upper)  # within tol: move onto the box (module docstring)
        key = xc.tobytes()
        if key not in tried:
            tried[key] = evaluate(sess, xc, prop.n_outputs)[0]
        y = tried[key]
        if not np.all(np.isfinite(y)):
            return ReplayResult(False, xc, y, "the network output is not finite")
        if bool(d.holds(y)[0]):
            return ReplayResult(True, xc, y, f"replayed: disjunct {k} holds at x = {_fmt(xc)}")
        slack = (d.A @ y - d.b).max() if len(d.b) else 0.0
        if best is None or slack < best[0]:
            best = (slack, k, xc, y)
    if best is None:
        return ReplayResult(False, x, empty, f"x = {_fmt(x)} lies outside every disjunct's input box (tol {tol:g})")
    slack, k, xc, y = best
    return ReplayResult(False, xc, y, f"not a counterexample: onnxruntime output misses the unsafe region "
                                      f"(closest: disjunct {k}, max over its rows of A y - b = {slack:.6g})")


def _fmt(x: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.9g}" for v in x) + ")"


__all__ = ["ReplayResult", "evaluate", "get_session", "replay"]
