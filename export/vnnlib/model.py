"""The in-memory form of a VNN-COMP property.

A property describes the *unsafe* set: the union over its disjuncts of
``{x in [lower, upper] : A @ y <= b}`` (every row must hold; a row with ``strict`` set is
``<``). ``sat`` means some input in some disjunct's box produces an output in its region
(a counterexample); ``unsat`` means none does (the network is certified).
"""

from __future__ import annotations

import dataclasses

import numpy as np


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

    def violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether the point ``x`` with output ``y`` lies in the unsafe set (up to ``tol``)."""
        return any(bool(d.contains(x, tol)[0] and d.holds(y)[0]) for d in self.disjuncts)
