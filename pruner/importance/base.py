"""What every importance receives: a calibration set of clean images and perturbations."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from usnprune.errors import ConfigError

from ..perturbation import Box


@dataclasses.dataclass
class Calibration:
    images: torch.Tensor  # [n, C, H, W] clean images in [0, 1]
    thetas: np.ndarray  # [m, k] perturbations; row 0 is the identity, then (capped) corners
    box: Box
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images.shape[0] == 0:
            raise ConfigError("the calibration set is empty (no images to score units on)")
        if len(self.thetas) == 0 or not np.allclose(self.thetas[0], self.box.identity()[0]):
            raise ValueError("calibration perturbations must start with the identity")


def make_calibration(images, box: Box, n_images: int, n_thetas: int, seed: int) -> Calibration:
    """``n_images`` images drawn (seeded) from ``images``; identity, (capped) corners and
    uniform thetas of the box's family."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if len(x) == 0 or n_images < 1:
        raise ConfigError("the calibration set is empty (no images to score units on)")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(n_images, len(x)), replace=False)
    return Calibration(x[np.sort(idx)], box.calibration(n_thetas, rng), box, seed)


class Importance:
    """``imp(model, calib) -> {layer: scores}``; higher is kept.

    ``comparable`` says whether scores of different layers can be ranked together as they
    are; when False the global ranking divides each layer's scores by the layer's mean.
    """

    comparable: bool = False
    name: str = "?"

    def __call__(self, model, calib: Calibration) -> dict[str, np.ndarray]:
        raise NotImplementedError
