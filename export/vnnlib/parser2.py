"""VNN-LIB 2.0 text -> :class:`~export.vnnlib.model.Property`, through the ``vnnlib`` package.

The standard's own parser (PyPI ``vnnlib`` 1.0.2, a C++ core with Python bindings) reads,
scopes and type-checks the query; this module turns its syntax tree into usnprune's one
model of a query:

* the networks: exactly one ``declare-network`` with one ``declare-input`` and one
  ``declare-output`` and no ``declare-hidden`` -- the theories SNET, SIO and NH of the
  standard's chapter 4 -- since a :class:`Property` has one input vector and one output
  vector. Anything more is an error naming the theory it needs;
* the assertions: each one's disjunctive normal form (``BoolExpr.to_dnf``), conjoined
  across assertions (their cross product, as for 1.0), every comparison read as a linear
  form (``ArithExpr.to_linear_expr``) over the flattened variables (``X[i,j]`` is
  ``x[ravel(i, j)]``, row-major). From there the rules are the 1.0 reader's
  (:class:`~export.vnnlib.parser.Clause`): a comparison over inputs only must bound one
  input, over outputs only it is a row, mixing them is an error (the theory MNC);
  ``!=`` splits its clause in two (``<`` or ``>``), which is exact.

``vnnlib.compat.transform_to_compat`` is not used: it unions separate non-atomic
assertions instead of conjoining them and reads ``==`` as ``<=`` (docs/formats.md).
"""

from __future__ import annotations

import json
import re

import numpy as np

from .errors import VnnlibError
from .model import INPUT, OUTPUT, VERSION_2, Network, Property, Variable
from .parser import Clause, Linear, Reader, to_disjuncts

# The vnnlib package's DType names -> the standard's element type names (ONNX "Set 1",
# plus ``real``), the spelling a query declares and an assignment prints.
DTYPE_NAMES = {
    "Real": "real", "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16",
    "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz",
    "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1", "I8": "int8", "I16": "int16", "I32": "int32",
    "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
    "C128": "complex128", "Bool": "bool",
}
COMPARISONS = {"LessEqual": "<=", "LessThan": "<", "GreaterEqual": ">=", "GreaterThan": ">", "Equal": "="}

_VERSION = re.compile(r"^\s*\(\s*vnnlib-version\s*<\s*(\d+)\.(\d+)\s*>\s*\)")
_SYNTAX = re.compile(r"line (\d+), column (\d+): (.*)$")


class _At:
    """A place in the file for :meth:`Reader.error` (the package gives lines, no columns)."""

    def __init__(self, line: int | None) -> None:
        self.line, self.column = line, None


def declared_version(text: str) -> str | None:
    """``"2.0"`` (as written: ``"2.1"`` ...) when the first form is ``(vnnlib-version <M.m>)``, else None."""
    body = re.sub(r";[^\n]*", "", text)  # comments may come first
    m = _VERSION.match(body)
    return f"{int(m.group(1))}.{int(m.group(2))}" if m else None


def _package():
    try:
        import vnnlib
    except ImportError as e:  # no wheel for this platform, or not installed
        raise VnnlibError(f"reading VNN-LIB 2.0 needs the vnnlib package (pip install 'vnnlib>=1.0.2,<2'): {e}") from None
    return vnnlib


def _error(e: Exception, source: str) -> VnnlibError:
    """The package's exception as one located line: a syntax error gives a line and a
    0-based column; scope and type errors come as a JSON document with lines only."""
    text = str(e).strip()
    m = _SYNTAX.search(text.splitlines()[0] if text else "")
    if text.startswith("Parse error") and m:
        return VnnlibError(f"syntax error at {m.group(3)}", source, int(m.group(1)), int(m.group(2)) + 1)
    try:
        errors = json.loads(text)["errors"]
    except (ValueError, KeyError, TypeError):
        return VnnlibError(text.splitlines()[0] if text else type(e).__name__, source)
    if not errors:
        return VnnlibError(text[:200], source)
    first = errors[0]
    what = f"{first.get('message', 'error')} ({first.get('errorCode', '?')}): {first.get('hint', '')}".rstrip(": ")
    if len(errors) > 1:
        what += f" (and {len(errors) - 1} more)"
    return VnnlibError(what, source, first.get("line"), None)


def _variable(decl, kind: str, source: str) -> Variable:
    name = DTYPE_NAMES.get(decl.dtype.name)
    if name is None:
        raise VnnlibError(f"{decl.name} is declared with an element type the standard does not define "
                          f"(the standard spells real in lower case)", source)
    return Variable(decl.name, kind, name, tuple(int(d) for d in decl.shape))


def _network(query, source: str) -> Network:
    nets = list(query.networks)
    if len(nets) != 1:
        raise VnnlibError(f"{len(nets)} networks are declared; usnprune reads queries over one network "
                          "(the standard's theory SNET)", source)
    net = nets[0]
    if len(net.hidden):
        raise VnnlibError(f"network {net.name} declares hidden nodes; usnprune reads queries without them "
                          "(the standard's theory NH)", source)
    if len(net.inputs) != 1 or len(net.outputs) != 1:
        raise VnnlibError(f"network {net.name} declares {len(net.inputs)} inputs and {len(net.outputs)} outputs; "
                          "usnprune reads one of each (the standard's theory SIO)", source)
    return Network(net.name, (_variable(net.inputs[0], INPUT, source),), (_variable(net.outputs[0], OUTPUT, source),))


def _linear(expr, network: Network, reader: Reader, line: int | None) -> Linear:
    try:
        form = expr.to_linear_expr()
    except Exception as e:  # the package raises VNNLibException for non-linear terms
        raise reader.error(f"non-linear term: {str(e).splitlines()[0][:160]}", _At(line)) from None
    coefs: dict[tuple[str, int], float] = {}
    for t in form.terms:
        var = t.var
        kind = {"Input": "X", "Output": "Y"}.get(var.kind.name)
        if kind is None:
            raise reader.error(f"{t.var_name}: only input and output variables are supported", _At(var.line))
        shape = tuple(network.inputs[0].shape if kind == "X" else network.outputs[0].shape)
        idx = tuple(int(i) for i in var.indices)
        if len(idx) != len(shape) or any(not 0 <= i < d for i, d in zip(idx, shape)):
            raise reader.error(f"{t.var_name}: index out of range for shape {list(shape)}", _At(var.line))
        flat = int(np.ravel_multi_index(idx, shape)) if shape else 0
        coefs[(kind, flat)] = coefs.get((kind, flat), 0.0) + float(t.coeff)
    return Linear(coefs, float(form.constant))


def _line_of(node) -> int | None:
    """The line of the first variable or literal under ``node`` (the package keeps lines
    on those leaves only)."""
    line = getattr(node, "line", None)
    if isinstance(line, int):
        return line
    for child in node.children():
        found = _line_of(child)
        if found is not None:
            return found
    return None


def _clauses(expr, network: Network, reader: Reader) -> list[Clause]:
    """One assertion's DNF as clauses (``!=`` splits a clause; a false constant comparison drops it)."""
    out: list[Clause] = []
    for conj in expr.to_dnf():
        partial = [Clause()]
        for cmp in conj:
            kind = type(cmp).__name__
            line = _line_of(cmp)
            left, right = _linear(cmp.lhs, network, reader, line), _linear(cmp.rhs, network, reader, line)
            ops = ["<", ">"] if kind == "NotEqual" else [COMPARISONS[kind]]
            grown = []
            for c in partial:
                for op in ops:
                    new = c.copy() if len(ops) > 1 else c
                    if new.add(op, left, right, reader, _At(line)):
                        grown.append(new)
            partial = grown
        out += partial
    return out


def parse_text(text: str, source: str = "<string>") -> Property:
    """Read a VNN-LIB 2.x query (the unsafe set in disjunctive normal form)."""
    vnnlib = _package()
    version = declared_version(text) or VERSION_2
    try:
        query = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as e:
        raise _error(e, source) from None
    network = _network(query, source)
    reader = Reader(source)
    clauses = [Clause()]
    for a in query.assertions:
        clauses = reader.conjoin(clauses, _clauses(a.expr, network, reader), _At(None))
    comments = [ln.strip().lstrip(";").strip() for ln in text.splitlines() if ln.strip().startswith(";")]
    n_in, n_out = network.inputs[0].size, network.outputs[0].size
    return Property(n_in, n_out, to_disjuncts(clauses, n_in, n_out), comments, version, network)


__all__ = ["DTYPE_NAMES", "declared_version", "parse_text"]
