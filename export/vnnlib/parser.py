"""Tokens -> :class:`~export.vnnlib.model.Property`: VNN-LIB 1.0, the VNN-COMP dialect.

Grammar read here::

    script   := command*
    command  := (declare-const X_i Real) | (declare-const Y_j Real) | (assert formula)
              | (check-sat) | (get-model) | (exit) | (set-logic ..) | (set-info ..)  -- ignored
    formula  := (and formula*) | (or formula*) | (op term term+)     op in <= >= < > =
    term     := numeral | X_i | Y_j | (+ term*) | (- term+) | (* term+) | (/ term term)

Every ``assert`` is conjoined, and the whole formula is expanded into disjunctive normal
form: a list of disjuncts, each an input box plus output rows ``A @ y <= b`` (strict for
``<``/``>``). A comparison may relate inputs only (it must then bound one input variable:
it tightens the box) or outputs only (a linear row); mixing the two, products of
variables and commands outside the list above are errors naming the line and column.

Strict input bounds (``(< X_0 1)``) are read as their closure, since a disjunct's box is
closed: proving the closure safe proves the open box safe, so certification stays sound.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import re
from pathlib import Path
from typing import Union

import numpy as np

from .errors import VnnlibError
from .model import VERSION_1, Disjunct, Property
from .tokenizer import LPAREN, RPAREN, Token, tokenize

MAX_DISJUNCTS = 100_000  # beyond this the DNF expansion is almost certainly a mistake
IGNORED_COMMANDS = frozenset({"check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"})
COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})

_VAR = re.compile(r"^([XY])_(0|[1-9]\d*)$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclasses.dataclass
class SExpr:
    """A parenthesised list, with the position of its ``(``."""

    items: list["Node"]
    line: int
    column: int


Node = Union[SExpr, Token]


# ---- s-expressions -------------------------------------------------------------------


def read_sexprs(tokens: list[Token], source: str) -> list[Node]:
    """Tokens -> top-level s-expressions; unbalanced parentheses name where they are."""
    top: list[Node] = []
    stack: list[SExpr] = []
    for tok in tokens:
        if tok.kind == LPAREN:
            stack.append(SExpr([], tok.line, tok.column))
        elif tok.kind == RPAREN:
            if not stack:
                raise VnnlibError("unbalanced ')': no '(' is open here", source, tok.line, tok.column)
            done = stack.pop()
            (stack[-1].items if stack else top).append(done)
        else:
            (stack[-1].items if stack else top).append(tok)
    if stack:
        open_ = stack[0]  # the command that never ends is the clearest place to point at
        raise VnnlibError("unbalanced '(': it is never closed", source, open_.line, open_.column)
    return top


def _pos(node: Node) -> tuple[int, int]:
    return node.line, node.column


def _head(node: SExpr, source: str) -> str:
    if not node.items:
        raise VnnlibError("empty '()'", source, *_pos(node))
    h = node.items[0]
    if not isinstance(h, Token):
        raise VnnlibError("expected an operator after '('", source, *_pos(h))
    return h.text


# ---- linear terms --------------------------------------------------------------------

Var = tuple[str, int]  # ("X", i) or ("Y", j)


@dataclasses.dataclass
class Linear:
    """``sum(coefs[v] * v) + const``."""

    coefs: dict[Var, float]
    const: float

    def scaled(self, k: float) -> "Linear":
        return Linear({v: c * k for v, c in self.coefs.items()}, self.const * k)

    def plus(self, other: "Linear", sign: float = 1.0) -> "Linear":
        coefs = dict(self.coefs)
        for v, c in other.coefs.items():
            coefs[v] = coefs.get(v, 0.0) + sign * c
        return Linear(coefs, self.const + sign * other.const)


class Reader:
    """The state of one read: declared variables, the source name for messages."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: dict[Var, tuple[int, int]] = {}

    def error(self, what: str, node: Node) -> VnnlibError:
        return VnnlibError(what, self.source, *_pos(node))

    # -- terms --
    def term(self, node: Node) -> Linear:
        if isinstance(node, Token):
            text = node.text
            m = _VAR.match(text)
            if m:
                var = (m.group(1), int(m.group(2)))
                if var not in self.declared:
                    raise self.error(f"undeclared variable {text} (declare it with (declare-const {text} Real))", node)
                return Linear({var: 1.0}, 0.0)
            if _NUMBER.match(text):
                return Linear({}, float(text))
            raise self.error(f"unknown symbol {text!r} (expected a number, X_i or Y_j)", node)
        op = _head(node, self.source)
        args = node.items[1:]
        if op == "+":
            out = Linear({}, 0.0)
            for a in args:
                out = out.plus(self.term(a))
            return out
        if op == "-":
            if not args:
                raise self.error("'-' needs at least one operand", node)
            first = self.term(args[0])
            if len(args) == 1:
                return first.scaled(-1.0)
            for a in args[1:]:
                first = first.plus(self.term(a), -1.0)
            return first
        if op == "*":
            if not args:
                raise self.error("'*' needs at least one operand", node)
            out = Linear({}, 1.0)
            for a in args:
                t = self.term(a)
                if t.coefs and out.coefs:
                    raise self.error("non-linear term: a product of two variables", a)
                if t.coefs:
                    out = t.scaled(out.const)
                else:
                    out = out.scaled(t.const)
            return out
        if op == "/":
            if len(args) != 2:
                raise self.error("'/' takes exactly two operands", node)
            num, den = self.term(args[0]), self.term(args[1])
            if den.coefs:
                raise self.error("non-linear term: division by a variable", args[1])
            if den.const == 0.0:
                raise self.error("division by zero", args[1])
            return num.scaled(1.0 / den.const)
        if op in COMPARISONS or op in ("and", "or"):
            raise self.error(f"'{op}' is a formula, not a term", node)
        raise self.error(f"unknown operator {op!r} in a term (expected +, -, *, /)", node)

    # -- formulas -> DNF --
    def formula(self, node: Node) -> list["Clause"]:
        if isinstance(node, Token):
            if node.text == "true":
                return [Clause()]
            if node.text == "false":
                return []
            raise self.error(f"expected a formula, got {node.text!r}", node)
        op = _head(node, self.source)
        args = node.items[1:]
        if op == "and":
            clauses = [Clause()]
            for a in args:
                clauses = self.conjoin(clauses, self.formula(a), a)
            return clauses
        if op == "or":
            out: list[Clause] = []
            for a in args:
                out += self.formula(a)
                if len(out) > MAX_DISJUNCTS:
                    raise self.error(f"more than {MAX_DISJUNCTS} disjuncts", node)
            return out
        if op in COMPARISONS:
            if len(args) < 2:
                raise self.error(f"'{op}' needs at least two operands", node)
            terms = [self.term(a) for a in args]
            clause = Clause()
            for left, right in zip(terms, terms[1:]):  # SMT-LIB chains: (<= a b c)
                if not clause.add(op, left, right, self, node):
                    return []  # a constant comparison that is false
            return [clause]
        if op in ("not", "=>", "xor", "ite", "distinct"):
            raise self.error(f"'{op}' is not supported (VNN-COMP properties use and/or over comparisons)", node)
        raise self.error(f"unknown operator {op!r} in a formula", node)

    def conjoin(self, clauses: list["Clause"], more: list["Clause"], node: Node) -> list["Clause"]:
        if len(more) == 1:  # the common case (top-level bounds): merge in place, no copies
            for c in clauses:
                c.merge(more[0])
            return clauses
        if len(clauses) * len(more) > MAX_DISJUNCTS:
            raise self.error(f"the and/or expansion has more than {MAX_DISJUNCTS} disjuncts", node)
        out = []
        for c in clauses:
            for m in more:
                new = c.copy()
                new.merge(m)
                out.append(new)
        return out


@dataclasses.dataclass
class Clause:
    """A conjunction: per-input bounds plus output rows ``coefs . y <= rhs``."""

    lo: dict[int, float] = dataclasses.field(default_factory=dict)
    hi: dict[int, float] = dataclasses.field(default_factory=dict)
    rows: list[tuple[dict[int, float], float, bool]] = dataclasses.field(default_factory=list)

    def copy(self) -> "Clause":
        return Clause(dict(self.lo), dict(self.hi), list(self.rows))

    def merge(self, other: "Clause") -> None:
        for i, v in other.lo.items():
            self.lo[i] = max(self.lo.get(i, -math.inf), v)
        for i, v in other.hi.items():
            self.hi[i] = min(self.hi.get(i, math.inf), v)
        self.rows += other.rows

    def add(self, op: str, left: Linear, right: Linear, reader: Reader, node: SExpr) -> bool:
        """Add ``left op right``; False when it is a constant comparison that fails."""
        diff = left.plus(right, -1.0)  # diff.coefs . v + diff.const  (op)  0
        coefs = {v: c for v, c in diff.coefs.items() if c != 0.0}
        k = diff.const
        # Each piece is "coefs . v + k <= 0" (or < 0 when strict).
        if op in ("<=", "<"):
            pieces = [(coefs, k, op == "<")]
        elif op in (">=", ">"):
            pieces = [({v: -c for v, c in coefs.items()}, -k, op == ">")]
        else:
            pieces = [(coefs, k, False), ({v: -c for v, c in coefs.items()}, -k, False)]
        kinds = {kind for kind, _ in coefs}
        if not kinds:
            return all((kk < 0.0) if strict else (kk <= 0.0) for _, kk, strict in pieces)
        if kinds == {"X", "Y"}:
            raise reader.error("a constraint mixing inputs (X) and outputs (Y) is not supported", node)
        for pc, pk, strict in pieces:
            if kinds == {"X"}:
                if len(pc) != 1:
                    raise reader.error("a constraint over several inputs is not supported "
                                       "(only bounds on one input variable define the box)", node)
                ((_, i), a), = pc.items()
                bound = -pk / a
                if a > 0:  # strict input bounds are read as their closure (module docstring)
                    self.hi[i] = min(self.hi.get(i, math.inf), bound)
                else:
                    self.lo[i] = max(self.lo.get(i, -math.inf), bound)
            else:
                self.rows.append(({j: a for (_, j), a in pc.items()}, -pk, strict))
        return True


# ---- commands and the whole script ---------------------------------------------------


def parse_text(text: str, source: str = "<string>") -> Property:
    """Read a VNNLIB text into a :class:`Property` (unsafe set in disjunctive normal form)."""
    tokens, comments = tokenize(text, source)
    reader = Reader(source)
    formulas: list[Node] = []
    for form in read_sexprs(tokens, source):
        if isinstance(form, Token):
            raise reader.error(f"unexpected {form.text!r} outside a command", form)
        cmd = _head(form, source)
        args = form.items[1:]
        if cmd == "declare-const":
            _declare(reader, form, args)
        elif cmd == "assert":
            if len(args) != 1:
                raise reader.error("'assert' takes exactly one formula", form)
            formulas.append(args[0])
        elif cmd in IGNORED_COMMANDS:
            continue
        else:
            raise reader.error(f"unsupported command {cmd!r} (expected declare-const or assert)", form.items[0])
    n_in = _count(reader, "X", source)
    n_out = _count(reader, "Y", source)
    clauses = [Clause()]
    for f in formulas:
        clauses = reader.conjoin(clauses, reader.formula(f), f)
    return Property(n_in, n_out, to_disjuncts(clauses, n_in, n_out), comments, VERSION_1)


def to_disjuncts(clauses: list["Clause"], n_in: int, n_out: int) -> list[Disjunct]:
    """Clauses (per-input bounds and output rows) -> disjuncts with dense boxes and matrices."""
    disjuncts = []
    for c in clauses:
        lower = np.full(n_in, -np.inf)
        upper = np.full(n_in, np.inf)
        for i, v in c.lo.items():
            lower[i] = v
        for i, v in c.hi.items():
            upper[i] = v
        A = np.zeros((len(c.rows), n_out))
        b = np.zeros(len(c.rows))
        strict = np.zeros(len(c.rows), dtype=bool)
        for r, (coefs, rhs, s) in enumerate(c.rows):
            for j, a in coefs.items():
                A[r, j] += a
            b[r], strict[r] = rhs, s
        disjuncts.append(Disjunct(lower, upper, A, b, strict))
    return disjuncts


def _declare(reader: Reader, form: SExpr, args: list[Node]) -> None:
    if len(args) != 2 or not all(isinstance(a, Token) for a in args):
        raise reader.error("expected (declare-const NAME Real)", form)
    name, sort = args
    if sort.text != "Real":
        raise reader.error(f"unsupported sort {sort.text!r} (only Real)", sort)
    m = _VAR.match(name.text)
    if not m:
        raise reader.error(f"variable {name.text!r} must be named X_<i> (input) or Y_<j> (output)", name)
    var = (m.group(1), int(m.group(2)))
    if var in reader.declared:
        line, col = reader.declared[var]
        raise reader.error(f"{name.text} is declared twice (first at line {line}, column {col})", name)
    reader.declared[var] = _pos(name)


def _count(reader: Reader, kind: str, source: str) -> int:
    idx = sorted(i for k, i in reader.declared if k == kind)
    if not idx:
        what = "inputs (X_0 ...)" if kind == "X" else "outputs (Y_0 ...)"
        raise VnnlibError(f"the property declares no {what}", source, 1, 1)
    n = idx[-1] + 1
    if len(idx) != n:
        missing = min(set(range(n)) - set(idx))
        line, col = reader.declared[(kind, idx[-1])]
        raise VnnlibError(f"{kind}_{idx[-1]} is declared but {kind}_{missing} is not "
                          f"({kind} variables must be numbered from 0 without gaps)", source, line, col)
    return n


def read_text(path: str | Path) -> str:
    """The text of a ``.vnnlib`` file, plain or gzip-compressed (detected by its magic
    bytes, whatever the file is called)."""
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise VnnlibError("no such file", source)
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise VnnlibError(f"cannot read: {e}", source) from None
    except UnicodeDecodeError as e:
        raise VnnlibError(f"not a text file (byte {e.start} is not UTF-8)", source) from None


def parse_file(path: str | Path) -> Property:
    """Read a VNN-LIB 1.0 ``.vnnlib`` (or gzip-compressed ``.vnnlib.gz``) file."""
    return parse_text(read_text(path), str(path))


__all__ = ["Clause", "Linear", "Reader", "parse_file", "parse_text", "read_sexprs", "read_text", "to_disjuncts", "VnnlibError"]
