"""Malformed VNNLIB: every error names the file, line and column of what is wrong."""

from __future__ import annotations

import re

import pytest

from usnprune.export.vnnlib import VnnlibError, parse_file

HEAD = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def _fails(tmp_path, body: str, match: str, line: int, column: int) -> VnnlibError:
    p = tmp_path / "bad.vnnlib"
    p.write_text(body)
    with pytest.raises(VnnlibError, match=match) as info:
        parse_file(p)
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert str(e).startswith(f"{p}:{line}:{column}: ")
    return e


def test_unbalanced_close_paren(tmp_path):
    _fails(tmp_path, HEAD + "(assert (<= Y_0 1)))\n", r"unbalanced '\)'", 4, 20)


def test_unclosed_open_paren_points_at_the_open_paren(tmp_path):
    _fails(tmp_path, HEAD + "(assert (or\n  (<= Y_0 1)\n", r"unbalanced '\('.*never closed", 4, 1)


def test_unknown_symbol(tmp_path):
    _fails(tmp_path, HEAD + "(assert (<= Y_0 one))\n", r"unknown symbol 'one'", 4, 17)


def test_undeclared_variable(tmp_path):
    _fails(tmp_path, HEAD + "(assert (or (<= Y_0 1)\n            (>= Y_2 3)))\n", r"undeclared variable Y_2", 5, 17)


def test_non_linear_product(tmp_path):
    _fails(tmp_path, HEAD + "(assert (<= (* Y_0 Y_1) 1))\n", r"non-linear term", 4, 20)


def test_division_by_a_variable(tmp_path):
    _fails(tmp_path, HEAD + "(assert (<= (/ 1 Y_1) 1))\n", r"non-linear term: division", 4, 18)


def test_constraint_mixing_inputs_and_outputs(tmp_path):
    _fails(tmp_path, HEAD + "(assert (<= X_0 Y_0))\n", r"mixing inputs \(X\) and outputs \(Y\)", 4, 9)


def test_constraint_over_two_inputs(tmp_path):
    body = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 X_1))\n"
    _fails(tmp_path, body, r"several inputs", 4, 9)


def test_unsupported_command(tmp_path):
    _fails(tmp_path, HEAD + "(define-fun f () Real 1.0)\n", r"unsupported command 'define-fun'", 4, 2)


def test_unsupported_connective(tmp_path):
    _fails(tmp_path, HEAD + "(assert (not (<= Y_0 1)))\n", r"'not' is not supported", 4, 9)


def test_declared_twice(tmp_path):
    _fails(tmp_path, HEAD + "(declare-const Y_0 Real)\n", r"Y_0 is declared twice \(first at line 2, column 16\)", 4, 16)


def test_bad_variable_name_and_sort(tmp_path):
    _fails(tmp_path, "(declare-const Z Real)\n", r"must be named X_<i>", 1, 16)
    _fails(tmp_path, "(declare-const X_0 Int)\n", r"unsupported sort 'Int'", 1, 20)


def test_gap_in_numbering(tmp_path):
    _fails(tmp_path, "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_2 Real)\n",
           r"Y_2 is declared but Y_1 is not", 3, 16)


def test_no_outputs(tmp_path):
    _fails(tmp_path, "(declare-const X_0 Real)\n(assert (<= X_0 1))\n", r"declares no outputs", 1, 1)


def test_atom_outside_a_command(tmp_path):
    _fails(tmp_path, HEAD + "\n  assert\n", r"unexpected 'assert' outside a command", 5, 3)


def test_empty_list_and_formula_where_a_term_belongs(tmp_path):
    _fails(tmp_path, HEAD + "(assert ())\n", r"empty '\(\)'", 4, 9)
    _fails(tmp_path, HEAD + "(assert (<= (and) 1))\n", r"'and' is a formula, not a term", 4, 13)


def test_quoted_symbol(tmp_path):
    _fails(tmp_path, HEAD + '(assert (<= |Y_0| 1))\n', r"quoted symbols", 4, 13)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.vnnlib"
    with pytest.raises(VnnlibError, match=re.escape(f"{p}: no such file")) as info:
        parse_file(p)
    assert info.value.line is None


def test_binary_file(tmp_path):
    p = tmp_path / "bin.vnnlib"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VnnlibError, match="not a text file"):
        parse_file(p)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "bad.vnnlib.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00truncated")
    with pytest.raises(VnnlibError, match="cannot read"):
        parse_file(p)
