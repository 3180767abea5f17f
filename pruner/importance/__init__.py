"""Unit importances: interchangeable callables ``imp(model, calibration) -> {layer: scores}``.

Higher scores are kept. One strategy per module (as in Torch-Pruning): ``usn`` (this
project's metric), ``random``, ``magnitude`` (L1 of the unit's weights), ``activation``
(mean |activation|, the score Linearity Grafting uses).
"""

from __future__ import annotations

from typing import Any

from usnprune.errors import ConfigError

from .activation import ActivationImportance
from .base import Calibration, Importance, make_calibration
from .magnitude import MagnitudeImportance
from .random import RandomImportance
from .usn import USNImportance, layer_analysis, usn_terms

IMPORTANCES: dict[str, type[Importance]] = {
    "usn": USNImportance,
    "random": RandomImportance,
    "magnitude": MagnitudeImportance,
    "activation": ActivationImportance,
}


def get_importance(name: str, **options: Any) -> Importance:
    if name not in IMPORTANCES:
        raise ConfigError(f"unknown importance {name!r} (known: {', '.join(IMPORTANCES)})")
    return IMPORTANCES[name](**options)


__all__ = [
    "Calibration", "Importance", "IMPORTANCES", "get_importance", "make_calibration", "usn_terms",
    "layer_analysis", "USNImportance", "RandomImportance", "MagnitudeImportance", "ActivationImportance",
]
