"""The VNN-LIB 1.0 reader: our keypoint properties and the general VNN-COMP dialect.

Every file is also read by an independent 1.0 reader, onnxsim's (``onnxsim.vnnlib.parse``,
installed with usnprune), and the boxes and constraint matrices must agree. (The PyPI
``vnnlib`` 0.0.1 package that used to serve here shares its import name with the VNN-LIB
2.0 parser, ``vnnlib`` 1.0.2, which usnprune now needs; the two cannot be installed together.)
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from usnprune.export.vnnlib import Property, VnnlibError, parse_file, parse_text

KEYPOINT = """\
; usnprune keypoint property
; network: large-usn-50  image: 17  keypoint: left_wing_tip (3)
; reference: prediction (14.25, 9.5)  delta: 0.5 px  eps_c: 0.1  eps_b: 0.1
(declare-const X_0 Real)
(declare-const X_1 Real)
""" + "".join(f"(declare-const Y_{j} Real)\n" for j in range(20)) + """\
(assert (>= X_0 0.9))
(assert (<= X_0 1.1))
(assert (>= X_1 -0.1))
(assert (<= X_1 0.1))
(assert (or
    (and (>= Y_6 14.75))
    (and (<= Y_6 13.75))
    (and (>= Y_7 10.0))
    (and (<= Y_7 9.0))
))
"""

# acasxu-style: input bounds at the top level, one conjunction of output comparisons
ACASXU = """\
; ACAS Xu property 3
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const X_4 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(declare-const Y_3 Real)
(declare-const Y_4 Real)
(assert (<= X_0 -0.298552812))
(assert (>= X_0 -0.303531156))
(assert (<= X_1 0.009549297))
(assert (>= X_1 -0.009549297))
(assert (<= X_2 0.5))
(assert (>= X_2 0.493380324))
(assert (<= X_3 0.5))
(assert (>= X_3 0.3))
(assert (<= X_4 -0.45))
(assert (>= X_4 -0.5))
(assert (<= Y_0 Y_1))
(assert (<= Y_0 Y_2))
(assert (<= Y_0 Y_3))
(assert (<= Y_0 Y_4))
"""

# cifar/mnist-style: input bounds inside the disjuncts of one big or
DISJUNCTIVE_BOXES = """\
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (or
    (and (<= X_0 0.5) (>= X_0 0.0) (<= X_1 1.0) (>= X_1 0.5) (<= Y_0 Y_1) (<= Y_0 Y_2))
    (and (<= X_0 1.0) (>= X_0 0.5) (<= X_1 0.5) (>= X_1 0.0) (>= Y_2 Y_1))
))
"""

# linear terms: sums, products by constants, unary and n-ary minus
LINEAR_TERMS = """\
(declare-const X_0 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (>= X_0 -1))
(assert (<= X_0 1))
(assert (or
    (and (<= (+ Y_0 (* -1.0 Y_1)) 0.5))
    (and (>= (+ (* 2 Y_2) (- Y_0) 3) (* 0.25 Y_1)))
    (and (<= (- Y_0 Y_1 Y_2) -2.5e-1))
))
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _reference(path, n_in, n_out):
    from onnxsim.vnnlib import parse

    ref = parse(path.read_text())
    assert (ref.n_inputs, ref.n_outputs) == (n_in, n_out)
    return ref


def _as_sets(prop: Property):
    """{(box, A, b)} rounded, order-free, for comparing two readers."""
    out = set()
    for d in prop.disjuncts:
        box = tuple(np.round(np.stack([d.lower, d.upper], 1), 12).ravel())
        out.add((box, tuple(np.round(d.A, 12).ravel()), tuple(np.round(d.b, 12))))
    return out


def _reference_sets(ref):
    out = set()
    for c in ref.clauses:
        box = tuple(np.round(np.stack([c.lo, c.hi], 1), 12).ravel())
        A = np.array([a.a for a in c.atoms]).reshape(len(c.atoms), ref.n_outputs)
        b = np.array([a.b for a in c.atoms])
        out.add((box, tuple(np.round(A, 12).ravel()), tuple(np.round(b, 12))))
    return out


@pytest.mark.parametrize("name,text,n_in,n_out", [
    ("keypoint.vnnlib", KEYPOINT, 2, 20),
    ("acasxu.vnnlib", ACASXU, 5, 5),
    ("boxes.vnnlib", DISJUNCTIVE_BOXES, 2, 3),
    ("linear.vnnlib", LINEAR_TERMS, 1, 3),
])
def test_agrees_with_an_independent_reader(tmp_path, name, text, n_in, n_out):
    path = _write(tmp_path, name, text)
    prop = parse_file(path)
    assert (prop.n_inputs, prop.n_outputs) == (n_in, n_out)
    assert _as_sets(prop) == _reference_sets(_reference(path, n_in, n_out))


def test_keypoint_property_structure(tmp_path):
    prop = parse_file(_write(tmp_path, "kp.vnnlib", KEYPOINT))
    assert prop.comments[0] == "usnprune keypoint property"
    assert "keypoint: left_wing_tip (3)" in prop.comments[1]
    assert len(prop.disjuncts) == 4
    for d in prop.disjuncts:
        np.testing.assert_array_equal(d.lower, [0.9, -0.1])
        np.testing.assert_array_equal(d.upper, [1.1, 0.1])
        assert d.A.shape == (1, 20) and not d.strict.any()
    # (>= Y_6 14.75) is the row -Y_6 <= -14.75
    d0 = prop.disjuncts[0]
    assert d0.A[0, 6] == -1.0 and d0.b[0] == -14.75 and np.count_nonzero(d0.A) == 1
    y = np.zeros(20)
    y[6], y[7] = 14.25, 9.5  # the reference itself is safe
    assert not prop.violated_by(np.array([1.0, 0.0]), y)
    y[6] = 14.75  # on the boundary: unsafe (non-strict)
    assert prop.violated_by(np.array([1.0, 0.0]), y)
    assert not prop.violated_by(np.array([1.2, 0.0]), y)  # outside the input box


def test_acasxu_conjunction_is_one_disjunct(tmp_path):
    prop = parse_file(_write(tmp_path, "a.vnnlib", ACASXU))
    assert len(prop.disjuncts) == 1
    d = prop.disjuncts[0]
    np.testing.assert_allclose(d.lower, [-0.303531156, -0.009549297, 0.493380324, 0.3, -0.5])
    np.testing.assert_allclose(d.upper, [-0.298552812, 0.009549297, 0.5, 0.5, -0.45])
    np.testing.assert_array_equal(d.A, [[1, -1, 0, 0, 0], [1, 0, -1, 0, 0], [1, 0, 0, -1, 0], [1, 0, 0, 0, -1]])
    np.testing.assert_array_equal(d.b, [0, 0, 0, 0])


def test_strict_comparisons_are_kept_strict():
    text = """(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)
    (assert (<= X_0 1)) (assert (>= X_0 0))
    (assert (or (< Y_0 Y_1) (> Y_0 3) (<= Y_1 2)))"""
    prop = parse_text(text)
    assert [bool(d.strict[0]) for d in prop.disjuncts] == [True, True, False]
    lt = prop.disjuncts[0]
    assert lt.holds(np.array([[0.0, 1.0]]))[0] and not lt.holds(np.array([[1.0, 1.0]]))[0]
    gt = prop.disjuncts[1]  # -Y_0 < -3
    np.testing.assert_array_equal(gt.A, [[-1, 0]])
    assert gt.b[0] == -3 and not gt.holds(np.array([[3.0, 0.0]]))[0] and gt.holds(np.array([[3.5, 0.0]]))[0]


def test_nested_and_or_expand_to_dnf():
    text = """(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)
    (assert (and (>= X_0 0) (<= X_0 1)))
    (assert (or (<= Y_0 1) (<= Y_1 1)))
    (assert (or (>= Y_0 -1) (and (>= Y_1 -1) (<= Y_1 0))))"""
    prop = parse_text(text)
    assert len(prop.disjuncts) == 4  # (a or b) and (c or (d and e))
    assert sorted(len(d.b) for d in prop.disjuncts) == [2, 2, 3, 3]
    for d in prop.disjuncts:
        np.testing.assert_array_equal([d.lower[0], d.upper[0]], [0, 1])


def test_equality_constant_comparisons_and_chains():
    text = """(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)
    (assert (= X_1 0.25))
    (assert (<= 0 X_0 1))
    (assert (or (= Y_0 2) (<= 1 0) (and (<= 0 1) (>= Y_0 5))))"""
    prop = parse_text(text)
    assert len(prop.disjuncts) == 2  # the false constant comparison drops its disjunct
    eq, ge = prop.disjuncts
    np.testing.assert_array_equal(eq.lower, [0, 0.25])
    np.testing.assert_array_equal(eq.upper, [1, 0.25])
    np.testing.assert_array_equal(eq.A, [[1], [-1]])
    np.testing.assert_array_equal(eq.b, [2, -2])
    np.testing.assert_array_equal(ge.A, [[-1]])


def test_linear_terms_by_hand():
    prop = parse_text(LINEAR_TERMS)
    a, b, c = prop.disjuncts
    np.testing.assert_array_equal(a.A, [[1, -1, 0]])
    assert a.b[0] == 0.5
    # 2 Y_2 - Y_0 + 3 >= Y_1 / 4   <=>   Y_0 + 0.25 Y_1 - 2 Y_2 <= 3
    np.testing.assert_array_equal(b.A, [[1, 0.25, -2]])
    assert b.b[0] == 3
    np.testing.assert_array_equal(c.A, [[1, -1, -1]])
    assert c.b[0] == -0.25
    div = parse_text("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (/ (* 3 Y_0) 4) (/ 1 2)))")
    np.testing.assert_array_equal(div.disjuncts[0].A, [[0.75]])
    assert div.disjuncts[0].b[0] == 0.5


def test_unbounded_inputs_stay_infinite():
    prop = parse_text("(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
                      "(assert (<= X_0 1))(assert (<= Y_0 0))")
    d = prop.disjuncts[0]
    assert d.lower[0] == -np.inf and d.upper[0] == 1 and d.lower[1] == -np.inf and d.upper[1] == np.inf


def test_gzip_file(tmp_path):
    p = tmp_path / "kp.vnnlib.gz"
    p.write_bytes(gzip.compress(KEYPOINT.encode()))
    assert _as_sets(parse_file(p)) == _as_sets(parse_text(KEYPOINT))


def test_ignored_smtlib_commands():
    text = "(set-logic QF_LRA)(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= Y_0 1))(check-sat)(get-model)"
    assert len(parse_text(text).disjuncts) == 1


def test_error_type_is_a_usnprune_error():
    from usnprune.errors import UsnpruneError

    with pytest.raises(UsnpruneError):
        parse_text("(assert")
    assert issubclass(VnnlibError, UsnpruneError)
