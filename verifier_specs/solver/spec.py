"""Every spelling the VNN-LIB 2.0 standard's command line defines, in the standard's order.

Transcribed from chapter 5 ("Command-line Interface") and chapter 4 ("Theories and
Logics") of the standard (github VNNLIB/VNNLIB-Standard, ``document/chapters/``). Both
sides of the interface use these names: ``usnprune-solver`` answers with them and the
``vnnlib`` backend (``verifier_specs/vnnlib_solver.py``) drives other solvers with them, so
a spelling cannot drift between the two.
"""

from __future__ import annotations

# ---- 5.1 Invocation: "<solver> [global-options] <command> [command-options] [arguments]"
VERIFY = "verify"
SUPPORTS = "supports"
COMMANDS = (VERIFY, SUPPORTS)
CAPABILITIES_COMMAND = "capabilities"  # 5.1 calls the command so; 5.4 and every example say `supports`

# ---- 5.2 Global options
NAME = "--name"
VERSION = "--version"
GLOBAL_OPTIONS = (NAME, VERSION)

# ---- 5.3 The verify command: "<solver> verify <filepath> [--network <name>=<filepath>]
#      [--timeout <seconds>] [--serialise-assignments <folder>]"
NETWORK = "--network"  # once per declared network not marked equal-to
TIMEOUT = "--timeout"  # "an integer number of seconds"
SERIALISE_ASSIGNMENTS = "--serialise-assignments"  # also the capability of 5.4.3
VERIFY_OPTIONS = (NETWORK, TIMEOUT, SERIALISE_ASSIGNMENTS)
ASSIGNMENTS_ALIAS = "--assignments"  # 5.3's usage block spells the option so; its text says the above

# ---- 5.3.1 Output of the verify command: the first line of stdout, one of
TIMED_OUT = "timed-out"  # the allotted time elapsed first
UNKNOWN = "unknown"  # terminated without proving either way
UNSAT = "unsat"  # proved the query unsatisfiable
SAT = "sat"  # proved it satisfiable; the assignment follows (5.3.1, command-line format)
RESULTS = (TIMED_OUT, UNKNOWN, UNSAT, SAT)

# ---- 5.4 The supports command: "<solver> supports <capability>"
# 5.4.1 ONNX capabilities
ONNX_OPSET_VERSIONS = "--onnx-opset-versions"  # two lines: minimum, maximum
ONNX_ELEMENT_TYPES = "--onnx-element-types"  # one element type per line
ONNX_OPERATORS = "--onnx-operators"  # one line per operator: name, then element types (none: all)
# 5.4.2 VNN-LIB query capabilities
VNNLIB_VERSIONS = "--vnnlib-versions"  # two lines: minimum, maximum (inclusive)
HIDDEN_NODE_THEORIES = "--hidden-node-theories"
MULTIPLE_INPUT_OUTPUT_THEORIES = "--multiple-input-output-theories"
MULTIPLE_NETWORK_THEORIES = "--multiple-network-theories"
MULTIPLE_NODE_COMPARISON_THEORIES = "--multiple-node-comparison-theories"
ARITHMETIC_COMPLEXITY_THEORIES = "--arithmetic-complexity-theories"
OPTIMISED_DISJUNCTIVE_REASONING = "--optimised-disjunctive-reasoning"  # true or false
# 5.4.3 Other capabilities: SERIALISE_ASSIGNMENTS (above), true or false
CAPABILITIES = (
    ONNX_OPSET_VERSIONS, ONNX_ELEMENT_TYPES, ONNX_OPERATORS,
    VNNLIB_VERSIONS, HIDDEN_NODE_THEORIES, MULTIPLE_INPUT_OUTPUT_THEORIES, MULTIPLE_NETWORK_THEORIES,
    MULTIPLE_NODE_COMPARISON_THEORIES, ARITHMETIC_COMPLEXITY_THEORIES, OPTIMISED_DISJUNCTIVE_REASONING,
    SERIALISE_ASSIGNMENTS,
)
# 5.4.2's example spells this flag with an extra 's'; accepted, never printed
MULTIPLE_INPUT_OUTPUT_ALIAS = "--multiple-inputs-output-theories"
TRUE, FALSE = "true", "false"

# ---- 4.1 Theories, each set weakest first
HIDDEN_NODES = ("NH", "H")
MULTIPLE_INPUTS_OUTPUTS = ("SIO", "MIO")
MULTIPLE_NETWORKS = ("SNET", "MENET", "MINET", "MNET")
MULTIPLE_NODE_COMPARISONS = ("SNC", "MNC")
ARITHMETIC_COMPLEXITY = ("BND", "OUTC", "LIN", "POLY")
# 4.1.6 Element types: the ONNX "Set 1" names, plus the one type ONNX does not have
REAL = "real"  # 3.5: a query written in real consents to analysis that may be unsound in floating point

__all__ = [name for name in dir() if name.isupper()]
