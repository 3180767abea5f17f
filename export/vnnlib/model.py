"""The in-memory form of a query, VNN-LIB 1.0 or 2.0: one model for every reader and backend.

A property describes the *unsafe* set: the union over its disjuncts of
``{x in [lower, upper] : A @ y <= b}`` (every row must hold; a row with ``strict`` set is
``<``). ``sat`` means some input in some disjunct's box produces an output in its region
(a counterexample); ``unsat`` means none does (the network is certified). ``x`` and ``y``
are the network's input and output flattened in row-major order.

What the file declared rides along: its VNN-LIB ``version`` and the :class:`Network` with
its typed, shaped variables (a 2.0 ``declare-network``; for 1.0, the ``X_i``/``Y_j``
scalars of sort ``Real``), which a solver needs to print an assignment in the standard's
format and to check the ONNX files it is given.
"""

from __future__ import annotations

import dataclasses

import math

import numpy as np

VERSION_1 = "1.0"  # the VNN-COMP dialect: (declare-const X_i Real), flat variables
VERSION_2 = "2.0"  # typed networks: (vnnlib-version <2.0>), (declare-network ...), X[0,1]
VERSIONS = (VERSION_1, VERSION_2)
INPUT, OUTPUT = "input", "output"


@dataclasses.dataclass(frozen=True)
class Variable:
    """A declared variable: a whole network input or output (2.0) or one scalar (1.0)."""

    name: str
    kind: str  # INPUT or OUTPUT
    dtype: str  # as declared: "float32", "real", ... (2.0); "Real" (1.0)
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Network:
    """A declared network; ``name`` is empty for VNN-LIB 1.0, which declares none."""

    name: str
    inputs: tuple[Variable, ...]
    outputs: tuple[Variable, ...]

    @property
    def variables(self) -> tuple[Variable, ...]:
        """In declaration order (inputs, then outputs), as an assignment lists them."""
        return self.inputs + self.outputs


def v1_network(n_inputs: int, n_outputs: int) -> Network:
    """What a VNN-LIB 1.0 file declares: scalars ``X_0 ..`` and ``Y_0 ..`` of sort Real."""
    return Network("", tuple(Variable(f"X_{i}", INPUT, "Real", ()) for i in range(n_inputs)),
                   tuple(Variable(f"Y_{j}", OUTPUT, "Real", ()) for j in range(n_outputs)))


@dataclasses.dataclass
class Disjunct:
    lower: np.ndarray  # [n_inputs] input box, float64
    upper: np.ndarray  # [n_inputs]
    A: np.ndarray  # [m, n_outputs] output constraints A @ y <= b (all must hold)
    b: np.ndarray  # [m]
    strict: np.ndarray | None = None  # [m] bool; None means all non-strict

    def __post_init__(self) -> None:
        self.lower = np.asarray(self.lower, dtype=np.float64)
        self.upper = np.asarray(self.upper, dtype=np.float64)
        self.A = np.asarray(self.A, dtype=np.float64).reshape(-1, self.A.shape[-1] if np.ndim(self.A) else 0)
        self.b = np.asarray(self.b, dtype=np.float64).reshape(-1)
        if self.strict is None:
            self.strict = np.zeros(len(self.b), dtype=bool)
        self.strict = np.asarray(self.strict, dtype=bool).reshape(-1)

    def holds(self, y: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Whether outputs ``y`` (``[n, n_outputs]``) satisfy every row (are unsafe).

        ``tol`` > 0 makes the test looser (a point within ``tol`` of the region counts).
        """
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        lhs = y @ self.A.T
        ok = np.where(self.strict, lhs < self.b + tol, lhs <= self.b + tol)
        return np.all(ok, axis=1)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.all((x >= self.lower - tol) & (x <= self.upper + tol), axis=1)


@dataclasses.dataclass
class Property:
    n_inputs: int
    n_outputs: int
    disjuncts: list[Disjunct]
    comments: list[str] = dataclasses.field(default_factory=list)  # header comment lines
    version: str = VERSION_1
    network: Network | None = None  # None: the 1.0 declarations of n_inputs / n_outputs

    @property
    def declared(self) -> Network:
        """The declared network (for 1.0, its scalars)."""
        return self.network if self.network is not None else v1_network(self.n_inputs, self.n_outputs)

    def violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether the point ``x`` with output ``y`` lies in the unsafe set (up to ``tol``)."""
        return any(bool(d.contains(x, tol)[0] and d.holds(y)[0]) for d in self.disjuncts)
