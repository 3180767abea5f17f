"""Writing keypoint properties in the VNN-COMP VNNLIB dialect.

One property per (network, image, keypoint, delta). The input box is the (c, b) box; the
asserted output region is the *unsafe* set, the keypoint leaving the closed L-inf box of
half-width delta around its reference, as a four-way disjunction::

    (assert (or (and (>= Y_2k u+d)) (and (<= Y_2k u-d)) (and (>= Y_2k+1 v+d)) (and (<= Y_2k+1 v-d))))

A point exactly on the boundary counts as unsafe, so ``unsat`` (certified) means the
keypoint stays strictly inside. Numbers are written with ``repr`` (shortest text that reads
back to the same float64), never rounded.
"""

from __future__ import annotations

import numpy as np

from .model import Disjunct, Property


def _num(v: float) -> str:
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"cannot write non-finite number {v!r} to VNNLIB")
    s = repr(v)
    return "0.0" if s == "-0.0" else s


def keypoint_property(n_outputs: int, keypoint: int, reference: tuple[float, float], delta: float,
                      lower: np.ndarray, upper: np.ndarray) -> Property:
    """The in-memory property (what :func:`write_property` writes for a keypoint)."""
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    u, v = float(reference[0]), float(reference[1])
    iu, iv = 2 * keypoint, 2 * keypoint + 1
    rows = [(iu, -1.0, -(u + delta)), (iu, 1.0, u - delta), (iv, -1.0, -(v + delta)), (iv, 1.0, v - delta)]
    disjuncts = []
    for idx, sign, rhs in rows:
        a = np.zeros((1, n_outputs))
        a[0, idx] = sign
        disjuncts.append(Disjunct(np.asarray(lower, float), np.asarray(upper, float), a, np.array([rhs])))
    return Property(len(lower), n_outputs, disjuncts)


def format_keypoint_property(n_outputs: int, keypoint: int, reference: tuple[float, float], delta: float,
                             lower, upper, comments: list[str] = ()) -> str:
    """VNNLIB text for one keypoint property."""
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    u, v = float(reference[0]), float(reference[1])
    iu, iv = 2 * keypoint, 2 * keypoint + 1
    lines = [f"; {c}" if c else ";" for c in comments]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    lines.append("")
    lines.append("; the (contrast, brightness) box")
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append(f"(assert (>= X_{i} {_num(lo)}))")
        lines.append(f"(assert (<= X_{i} {_num(hi)}))")
    lines.append("")
    lines.append(f"; unsafe: keypoint {keypoint} (Y_{iu}, Y_{iv}) leaves the box of half-width {_num(delta)} px")
    lines.append("(assert (or")
    lines.append(f"    (and (>= Y_{iu} {_num(u + delta)}))")
    lines.append(f"    (and (<= Y_{iu} {_num(u - delta)}))")
    lines.append(f"    (and (>= Y_{iv} {_num(v + delta)}))")
    lines.append(f"    (and (<= Y_{iv} {_num(v - delta)}))")
    lines.append("))")
    return "\n".join(lines) + "\n"
