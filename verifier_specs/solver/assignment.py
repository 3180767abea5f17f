"""Section 5.3.1's command-line assignment format, written and read in one place.

After a ``sat`` line, every declared variable in declaration order (per network: inputs,
then outputs), each as a header ``<name> <type> <dimensions>`` -- the type as declared, the
dimensions as ``[2,2]`` without spaces (``[]`` for a scalar) -- followed by its values one
per line, row-major::

    sat
    X float32 [1,2]
    0.95
    -0.05
    Y float32 [1,20]
    ...

Values are written as the shortest decimal that reads back to the same double (Python's
``repr``), so a float32 value round-trips exactly. Reading is strict about what identifies
a value (each header's name and dimensions, in order, and the number of values) and lenient
about what does not: the type token (the standard's own example prints ``Real`` for a
``float32`` variable), spaces inside the dimensions, any numeral ``float()`` reads.
"""

from __future__ import annotations

import math

import numpy as np

from usnprune.errors import UsnpruneError
from usnprune.export.vnnlib import Network


class AssignmentError(UsnpruneError):
    """A ``sat`` answer's assignment does not fit the query's declarations."""


def dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def render(network: Network, values: dict[str, np.ndarray]) -> list[str]:
    """The lines of an assignment (``values``: variable name -> its values, any shape)."""
    lines = []
    for var in network.variables:
        flat = np.asarray(values[var.name], dtype=np.float64).reshape(-1)
        if flat.size != var.size:
            raise ValueError(f"{var.name}: {flat.size} values for shape {list(var.shape)}")
        lines.append(f"{var.name} {var.dtype} {dims(var.shape)}")
        lines += [repr(float(v)) for v in flat]
    return lines


def parse(lines: list[str], network: Network) -> dict[str, np.ndarray]:
    """Variable name -> flat values, from the lines that follow ``sat``."""
    rest = [ln.strip() for ln in lines]
    while rest and not rest[-1]:
        rest.pop()
    out: dict[str, np.ndarray] = {}
    pos = 0
    for var in network.variables:
        if pos >= len(rest):
            raise AssignmentError(f"the assignment ends before {var.name} (expected {len(network.variables)} variables)")
        head = rest[pos].split(None, 2)
        if len(head) != 3 or head[0] != var.name:
            raise AssignmentError(f"expected the header of {var.name} ('{var.name} {var.dtype} {dims(var.shape)}'), "
                                  f"got {rest[pos][:80]!r}")
        if head[2].replace(" ", "") != dims(var.shape):
            raise AssignmentError(f"{var.name} is declared {dims(var.shape)}, the assignment says {head[2][:40]}")
        values = rest[pos + 1:pos + 1 + var.size]
        if len(values) != var.size:
            raise AssignmentError(f"{var.name} needs {var.size} values, the assignment has {len(values)}")
        try:
            out[var.name] = np.array([float(v) for v in values])
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise AssignmentError(f"{var.name}: {bad[:40]!r} is not a number") from None
        pos += 1 + var.size
    if any(rest[pos:]):
        raise AssignmentError(f"unexpected text after the assignment: {next(r for r in rest[pos:] if r)[:80]!r}")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def inputs_of(network: Network, values: dict[str, np.ndarray]) -> np.ndarray:
    """The flat input vector ``x`` of a query's model (its inputs, in declaration order)."""
    return np.concatenate([values[v.name].reshape(-1) for v in network.inputs]) if network.inputs else np.zeros(0)


def is_finite(values: dict[str, np.ndarray]) -> bool:
    return all(math.isfinite(float(v)) for arr in values.values() for v in np.ravel(arr))


__all__ = ["AssignmentError", "dims", "inputs_of", "is_finite", "parse", "render"]
