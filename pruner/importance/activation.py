"""Activation-magnitude importance: mean |post-ReLU activation| over the calibration pairs
(clean images under the calibration perturbations), the score Linearity Grafting uses."""

from __future__ import annotations

import numpy as np
import torch

from .. import perturbation
from .base import Calibration, Importance


class ActivationImportance(Importance):
    comparable = False
    name = "activation"

    def __init__(self, batch: int = 4096) -> None:
        self.batch = batch

    @torch.no_grad()
    def __call__(self, model, calib: Calibration) -> dict[str, np.ndarray]:
        sums: dict[str, torch.Tensor] = {}
        count = 0
        model.eval()
        dev = next(model.parameters()).device

        def hook(name, z):
            a = torch.relu(z).abs()
            a = a.mean(dim=(2, 3)) if a.ndim == 4 else a
            sums[name] = sums.get(name, 0) + a.double().sum(0).cpu()

        per = max(1, self.batch // len(calib.thetas))
        for i in range(0, len(calib.images), per):
            x = perturbation.pairs(calib.images[i : i + per], calib.thetas, calib.box).to(dev)
            model.features(x, hook=hook)
            count += len(x)
        return {n: (s / count).numpy() for n, s in sums.items()}
