"""Keypoint properties: the in-memory :class:`Property` and its VNN-LIB 1.0 and 2.0 text.

The text is produced by the benchmark folder's own ``generate_properties.py`` (copied from
``export/templates``), the single writer of keypoint VNN-LIB, so that a folder regenerated
without usnprune is byte-identical to what usnprune wrote. See that file for the formats
(``format_property`` for 1.0, ``format_property_v2`` for 2.0). The 2.0 writer is ours, not
the ``vnnlib`` package's printer: the folder regenerates with numpy alone, and the package's
printer writes ``X [0, 1]`` with spaces where the standard's examples write ``X[0,1]``.
"""

from __future__ import annotations

import numpy as np

from ..templates.generate_properties import format_property, format_property_v2
from .model import Disjunct, Property

__all__ = ["format_property", "format_property_v2", "keypoint_property"]


def keypoint_property(n_outputs: int, keypoint: int, reference: tuple[float, float], delta: float,
                      lower, upper) -> Property:
    """What ``format_property`` writes, as a Property: four disjuncts, one per side."""
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    u, v = float(reference[0]), float(reference[1])
    iu, iv = 2 * keypoint, 2 * keypoint + 1
    disjuncts = []
    for idx, sign, rhs in ((iu, -1.0, -(u + delta)), (iu, 1.0, u - delta), (iv, -1.0, -(v + delta)), (iv, 1.0, v - delta)):
        a = np.zeros((1, n_outputs))
        a[0, idx] = sign
        disjuncts.append(Disjunct(np.asarray(lower, float), np.asarray(upper, float), a, np.array([rhs])))
    return Property(len(lower), n_outputs, disjuncts)
