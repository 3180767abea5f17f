"""Counterexample replay: is a claimed ``sat`` input really a counterexample?

Every ``falsified`` verdict of every backend goes through :func:`replay` before the driver
believes it (a failed replay becomes an ``error`` row). The check is the VNN-COMP one, run
on the real ONNX file with onnxruntime in float32, never on a verifier's own arithmetic:

1. ``x`` must lie within ``tol`` of some disjunct's input box. Verifiers report float32
   inputs (alpha-beta-CROWN's -0.1 comes back as -0.10000000149011612, 1.5e-9 outside the
   box), so a point within ``tol`` is accepted as a *claim* and moved into the box: clamped,
   then rounded to the float32 value nearest to it on the inside of every bound
   (:func:`float32_inside`). That float32 point is what is run and returned, so the stored
   counterexample lies in the box exactly, with no tolerance, and is exactly the network's
   input (float32(-0.45) = -0.449999988 would sit 1.2e-8 outside ``X <= -0.45``).
2. ``y = onnxruntime(x)`` (float32 in, output read back as float64).
3. ``y`` must satisfy every row of that disjunct: ``A @ y <= b``, strictly ``<`` for strict
   rows. No tolerance on the output side: a point on the wrong side of the boundary by any
   amount is not a counterexample.

The input tolerance is :data:`REPLAY_TOL` = 1e-4, VNN-COMP's: it only decides which claimed
points are taken up at all (a verifier's point 1e-4 outside is as good a starting point as
VNN-COMP accepts); it never lets a point outside the box be believed, because the replayed
point is the one inside (step 1). A point farther out is refused (an ``error`` row).
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

    return session(path)  # onnxruntime reads the file itself: no bytes copy of a large model


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


REPLAY_TOL = 1e-4  # VNN-COMP's input tolerance (see the module docstring)


def float32_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``x`` (already within [lower, upper]) as float32 values that lie in [lower, upper]:
    each coordinate rounded to float32, then stepped one float32 toward the inside when the
    rounding left the box (float64 copy). Where no float32 fits a bound pair, the nearest."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    below = f.astype(np.float64) < lo
    f = np.where(below, np.nextafter(f, np.float32(np.inf)), f)
    above = f.astype(np.float64) > hi
    f = np.where(above, np.nextafter(f, np.float32(-np.inf)), f)
    return f.astype(np.float64)


def replay(model: Any, prop: Property, x, tol: float = REPLAY_TOL) -> ReplayResult:
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
        xc = float32_inside(np.clip(x, d.lower, d.upper), d.lower, d.upper)  # module docstring, step 1
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


__all__ = ["REPLAY_TOL", "ReplayResult", "evaluate", "float32_inside", "get_session", "replay"]
