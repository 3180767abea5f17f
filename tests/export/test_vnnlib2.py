"""VNN-LIB 2.0: our writer, our reading through the standard's ``vnnlib`` package, and the
same query in 1.0 and 2.0 read to the same unsafe set."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import vnnlib
import vnnlib.compat

from usnprune.export.templates.generate_properties import _num2, format_property, format_property_v2
from usnprune.export.vnnlib import VERSION_2, VnnlibError, parse_file, parse_text, text_version

from test_vnnlib_parser import ACASXU, DISJUNCTIVE_BOXES, KEYPOINT, LINEAR_TERMS, _as_sets


def _v2(n_in_shape, n_out_shape, body, dtype="float32"):
    dims = lambda s: "[" + ",".join(str(d) for d in s) + "]"  # noqa: E731
    return (f"(vnnlib-version <2.0>)\n(declare-network N\n    (declare-input X {dtype} {dims(n_in_shape)})\n"
            f"    (declare-output Y {dtype} {dims(n_out_shape)})\n)\n" + body)


def _num(v: float) -> str:
    return _num2(v)


def to_v2(prop) -> str:
    """A 1.0 property re-written in 2.0 (flat [n] shapes), one ``or`` of its disjuncts."""
    parts = []
    for d in prop.disjuncts:
        lits = []
        for i, (lo, hi) in enumerate(zip(d.lower, d.upper)):
            if np.isfinite(lo):
                lits.append(f"(>= X[{i}] {_num(lo)})")
            if np.isfinite(hi):
                lits.append(f"(<= X[{i}] {_num(hi)})")
        for row, rhs, strict in zip(d.A, d.b, d.strict):
            terms = " ".join(f"(* {_num(a)} Y[{j}])" for j, a in enumerate(row) if a != 0)
            lits.append(f"({'<' if strict else '<='} (+ {terms} 0.0) {_num(rhs)})")
        parts.append("(and " + " ".join(lits) + ")")
    return _v2([prop.n_inputs], [prop.n_outputs], "(assert (or\n  " + "\n  ".join(parts) + "\n))\n")


def test_the_keypoint_property_reads_the_same_in_both_versions():
    lower, upper, ref = [0.9, -0.1], [1.1, 0.1], (14.25, 9.5)
    one = parse_text(format_property(20, 3, ref, 0.5, lower, upper, ["c1", "c2"]))
    text = format_property_v2(20, 3, ref, 0.5, lower, upper, ["c1", "c2"])
    two = parse_text(text)
    assert text.startswith("(vnnlib-version <2.0>)\n") and text_version(text) == VERSION_2
    assert (two.version, one.version) == ("2.0", "1.0")
    assert _as_sets(one) == _as_sets(two) and two.comments[:2] == ["c1", "c2"]
    net = two.network
    assert net.name == "net" and [(v.name, v.dtype, v.shape) for v in net.variables] == [
        ("X", "float32", (1, 2)), ("Y", "float32", (1, 20))]
    assert [v.name for v in one.declared.variables] == [f"X_{i}" for i in range(2)] + [f"Y_{j}" for j in range(20)]


def test_the_standards_parser_reads_our_writer_to_the_same_box_and_rows():
    text = format_property_v2(20, 7, (3.0, 28.125), 0.25, [0.8, -0.2], [1.2, 0.2])
    q = vnnlib.parse_query_string(text)  # type-checks too: float literals against float32
    (case,) = vnnlib.compat.transform_to_compat(q)  # atomic box + one `or`: its safe pattern
    assert [tuple(b) for b in case.input_box] == [(0.8, 1.2), (-0.2, 0.2)]
    theirs = sorted((tuple(p.coeff_matrix[0]), p.rhs[0]) for p in case.output_constraints)
    ours = sorted((tuple(d.A[0]), d.b[0]) for d in parse_text(text).disjuncts)
    assert theirs == ours and len(ours) == 4


@pytest.mark.parametrize("v", [1e-05, -2.5e-10, 300.0, 1e20, -0.0, 0.1 + 0.2, 14.75])
def test_literals_are_positional_and_exact(v):
    s = _num2(v)
    assert "e" not in s.lower() and "." in s and float(s) == v


@pytest.mark.parametrize("text,n_in,n_out", [(KEYPOINT, 2, 20), (ACASXU, 5, 5), (DISJUNCTIVE_BOXES, 2, 3),
                                             (LINEAR_TERMS, 1, 3)])
def test_one_point_zero_corpus_rewritten_in_two_point_zero_reads_the_same(text, n_in, n_out):
    one = parse_text(text)
    two = parse_text(to_v2(one))
    assert (two.n_inputs, two.n_outputs) == (n_in, n_out)
    assert _as_sets(two) == _as_sets(one)


def test_separate_assertions_are_conjoined_not_unioned():
    # vnnlib.compat.transform_to_compat unions the two non-atomic assertions; the query means their conjunction
    body = ("(assert (and (>= X[0] 0.0) (<= X[0] 1.0)))\n"
            "(assert (or (<= Y[0] 1.0) (and (>= Y[1] 2.0) (<= Y[1] 3.0))))\n")
    prop = parse_text(_v2([1], [2], body))
    assert len(prop.disjuncts) == 2
    for d in prop.disjuncts:
        assert (d.lower[0], d.upper[0]) == (0.0, 1.0)
    assert sorted(len(d.b) for d in prop.disjuncts) == [1, 2]


def test_not_equal_splits_strict_and_equality_is_two_rows():
    body = "(assert (>= X[0] 0.0))\n(assert (<= X[0] 1.0))\n(assert (or (!= Y[0] 2.0) (== Y[1] 3.5)))\n"
    prop = parse_text(_v2([1], [2], body))
    assert len(prop.disjuncts) == 3
    ne_lt, ne_gt, eq = prop.disjuncts
    assert ne_lt.strict.all() and ne_gt.strict.all() and not eq.strict.any()
    np.testing.assert_array_equal(ne_lt.A, [[1, 0]])
    np.testing.assert_array_equal(ne_gt.A, [[-1, 0]])
    np.testing.assert_array_equal(eq.A, [[0, 1], [0, -1]])
    assert ne_lt.holds(np.array([[1.0, 0]]))[0] and not ne_lt.holds(np.array([[2.0, 0]]))[0]


def test_indices_flatten_row_major_and_scalars_have_none():
    body = ("(assert (>= X 0.0))\n(assert (<= X 2.0))\n"
            "(assert (<= (- Y[1,0,2] (* 2.0 Y[0,1,0])) -1.5))\n")
    text = "(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 []) " \
           "(declare-output Y float32 [2,2,3]))\n" + body
    prop = parse_text(text)
    (d,) = prop.disjuncts
    assert prop.n_inputs == 1 and prop.n_outputs == 12
    row = np.zeros(12)
    row[1 * 6 + 0 * 3 + 2], row[0 * 6 + 1 * 3 + 0] = 1.0, -2.0
    np.testing.assert_array_equal(d.A, [row])
    assert d.b[0] == -1.5 and (d.lower[0], d.upper[0]) == (0.0, 2.0)


def test_real_declarations_and_gzip(tmp_path):
    text = _v2([1, 2], [1, 1], "(assert (<= X[0,0] 1.0))\n(assert (>= Y[0,0] 0.5))\n", dtype="real")
    p = tmp_path / "q.vnnlib.gz"
    p.write_bytes(gzip.compress(text.encode()))
    prop = parse_file(p)
    assert prop.network.inputs[0].dtype == "real" and prop.disjuncts[0].upper[0] == 1.0


def _fails(tmp_path, text, match, line=None):
    p = tmp_path / "bad.vnnlib"
    p.write_text(text)
    with pytest.raises(VnnlibError, match=match) as info:
        parse_file(p)
    assert str(info.value).startswith(str(p))
    if line is not None:
        assert info.value.line == line, str(info.value)
    return info.value


def test_syntax_errors_name_line_and_column(tmp_path):
    e = _fails(tmp_path, _v2([1], [1], "(assert (<= Y[0] 1e-5))\n"), r"syntax error at 'e'", line=6)
    assert e.column == 19  # 1-based, where the exponent starts


def test_type_errors_name_the_line(tmp_path):
    _fails(tmp_path, _v2([1], [1], "(assert (<= X[0] 1.0))\n(assert (<= Y[0] 1))\n"),
           r"Type mismatch.*TypeMismatch.*PositiveIntConstant", line=7)
    _fails(tmp_path, _v2([1], [1], "(assert (<= Z[0] 1.0))\n"), r"UndeclaredVariable", line=6)


@pytest.mark.parametrize("decls,match", [
    ("(declare-network N (declare-input X float32 [1]) (declare-hidden H float32 [1] \"h\") "
     "(declare-output Y float32 [1]))", r"hidden nodes.*theory NH"),
    ("(declare-network N (declare-input X float32 [1]) (declare-input Z float32 [1]) "
     "(declare-output Y float32 [1]))", r"2 inputs and 1 outputs.*theory SIO"),
    ("(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [1]))\n"
     "(declare-network M (declare-input A float32 [1]) (declare-output B float32 [1]))", r"2 networks.*theory SNET"),
    ("(declare-network N (declare-input X Real [1]) (declare-output Y Real [1]))",
     r"element type the standard does not define"),
])
def test_what_the_model_cannot_hold_is_refused_naming_the_theory(tmp_path, decls, match):
    _fails(tmp_path, f"(vnnlib-version <2.0>)\n{decls}\n(assert (<= X[0] 1.0))\n", match)


def test_mixed_and_nonlinear_constraints_are_refused(tmp_path):
    _fails(tmp_path, _v2([1], [1], "(assert (<= X[0] Y[0]))\n"), r"mixing inputs", line=6)
    _fails(tmp_path, _v2([2], [1], "(assert (<= (+ X[0] X[1]) 1.0))\n"), r"several inputs", line=6)
    _fails(tmp_path, _v2([1], [2], "(assert (<= (* Y[0] Y[1]) 1.0))\n"), r"non-linear", line=6)
