"""Bound rules, one operator family per module, and the registry ONNX op_type -> rule.

Adding an operator means writing a rule (an :class:`AffineRule`, an
:class:`ActivationRule` or a :class:`MaxRule`) in the module of its family and listing it in that module's
``RULES``; the graph reader, the bound engine and the tests pick it up from ``REGISTRY``.
"""

from __future__ import annotations

from . import activation, arithmetic, conv, linear, normalization, pooling, shape
from .base import ActivationRule, AffineRule, MaxRule, NodeInfo, Rule, UnsupportedModel

REGISTRY: dict[str, type[Rule]] = {}
for _module in (linear, conv, activation, pooling, shape, arithmetic, normalization):
    for _rule in _module.RULES:
        for _op in _rule.op_types:
            REGISTRY[_op] = _rule


def supported_ops() -> list[str]:
    return sorted(REGISTRY)


__all__ = ["ActivationRule", "AffineRule", "MaxRule", "NodeInfo", "REGISTRY", "Rule", "UnsupportedModel", "supported_ops"]
