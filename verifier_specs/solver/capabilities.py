"""What ``usnprune-solver`` claims, per capability of section 5.4: exactly what it decides soundly.

* Operators (5.4.1): the bound engine's registry, :func:`usnprune.bounds.supported_ops`,
  so a rule added there is claimed here without an edit -- except ``Mul`` and ``Div``. Their
  rules scale by a constant (the product or quotient of two computed tensors is not linear
  and has no bound rule); ONNX's ``Mul``/``Div`` take any two tensors and the standard's
  operator lines cannot say "with a constant operand", and the conformance suite's cases of
  both multiply or divide the input by itself. Models that scale by constants still verify.
* Element types (5.4.1, 4.1.6): ``float32`` and ``real``. A ``real`` query is analysed in
  real arithmetic (the bounds are sound there; section 3.5's consent is not even needed). A
  ``float32`` query is analysed with the worst-case float32 rounding bound added to every
  proof (``rigorous_float32``: Higham's gamma_k per layer, over the graph as written), the
  strong reason to believe soundness section 5.4.1 asks for. Other types: 5.3.2(3).
* Theories (4.1): one network (SNET), one input and one output (SIO), no hidden nodes (NH),
  comparisons within a node (SNC), bounds and output comparisons (BND, OUTC) -- the query
  model of :mod:`usnprune.export.vnnlib`. LIN is not claimed: a linear constraint over
  several inputs is refused (only bounds define the box), though linear output rows are fine.
* VNN-LIB versions: 1.0 (the VNN-COMP dialect) to 2.0.
* Disjunctions (5.4.2): ``true``. Disjuncts that share an input box are decided by one
  branch and bound (a sub-box is closed when every disjunct is), so splitting the DNF outside
  would repeat the search per disjunct.
* Serialised assignments (5.4.3): ``false``; assignments are printed (5.3.1's default).
"""

from __future__ import annotations

from . import spec

ONNX_OPSETS = ("13", "18")  # our exported models (13) to the conformance suite's (18): the opsets tested
ELEMENT_TYPES = ("float32", spec.REAL)
SOUND_FOR = ("float32",)  # declared types analysed soundly in floating point (5.3.2(3)); real needs no soundness
NOT_CLAIMED = {
    "Mul": "its rule takes one constant operand; ONNX Mul takes any two tensors",
    "Div": "its rule divides by a constant; ONNX Div takes any two tensors",
}
VNNLIB_VERSION_RANGE = ("1.0", "2.0")
THEORIES = {
    spec.HIDDEN_NODE_THEORIES: ("NH",),
    spec.MULTIPLE_INPUT_OUTPUT_THEORIES: ("SIO",),
    spec.MULTIPLE_NETWORK_THEORIES: ("SNET",),
    spec.MULTIPLE_NODE_COMPARISON_THEORIES: ("SNC",),
    spec.ARITHMETIC_COMPLEXITY_THEORIES: ("BND", "OUTC"),
}
BOOLEANS = {spec.OPTIMISED_DISJUNCTIVE_REASONING: True, spec.SERIALISE_ASSIGNMENTS: False}


def operators() -> list[str]:
    """The operators claimed: the bound engine's registry less :data:`NOT_CLAIMED`."""
    from usnprune.bounds import supported_ops  # imports torch: only `supports --onnx-operators` pays for it

    return [op for op in supported_ops() if op not in NOT_CLAIMED]


def answer(capability: str) -> list[str]:
    """The lines of stdout answering one capability flag (section 5.4), in order."""
    if capability == spec.ONNX_OPSET_VERSIONS:
        return list(ONNX_OPSETS)
    if capability == spec.ONNX_ELEMENT_TYPES:
        return list(ELEMENT_TYPES)
    if capability == spec.ONNX_OPERATORS:
        return operators()  # bare names: every element type reported above (5.4.1)
    if capability == spec.VNNLIB_VERSIONS:
        return list(VNNLIB_VERSION_RANGE)
    if capability in THEORIES:
        return list(THEORIES[capability])
    if capability in BOOLEANS:
        return [spec.TRUE if BOOLEANS[capability] else spec.FALSE]
    raise KeyError(capability)


__all__ = ["ELEMENT_TYPES", "NOT_CLAIMED", "ONNX_OPSETS", "SOUND_FOR", "THEORIES", "answer", "operators"]
