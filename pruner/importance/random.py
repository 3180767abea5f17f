"""Random importance: the baseline every method must beat."""

from __future__ import annotations

import numpy as np

from .base import Calibration, Importance


class RandomImportance(Importance):
    comparable = True
    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.calls = 0

    def __call__(self, model, calib: Calibration) -> dict[str, np.ndarray]:
        # seeded by the calibration seed and the call count: reproducible, but each step of
        # a progressive schedule draws afresh
        rng = np.random.default_rng([calib.seed if self.seed is None else self.seed, self.calls])
        self.calls += 1
        return {n: rng.random(w) for n, w in model.widths().items()}
