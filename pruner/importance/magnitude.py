"""Weight-magnitude importance: L1 norm of each unit's incoming weights (BatchNorm folded)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Calibration, Importance


class MagnitudeImportance(Importance):
    comparable = False
    name = "magnitude"

    @torch.no_grad()
    def __call__(self, model, calib: Calibration) -> dict[str, np.ndarray]:
        plain = model.to_plain()
        weighted = [m for m in plain if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]  # not the head
        return {name: m.weight.detach().abs().flatten(1).sum(1).double().numpy()
                for name, m in zip(model.arch.layer_names(), weighted)}
