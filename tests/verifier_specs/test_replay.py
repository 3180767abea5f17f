"""Counterexample replay through onnxruntime, on a model whose outputs are known exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from usnprune.export.vnnlib import parse_text
from usnprune.verifier_specs.replay import REPLAY_TOL, float32_inside, get_session, replay

W = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], dtype=np.float32)
B = np.array([0.5, 0.0, 0.0], dtype=np.float32)


def linear_model() -> onnx.ModelProto:
    """Y = X @ W + B: every value below is exact in float32."""
    g = helper.make_graph(
        [helper.make_node("Gemm", ["X", "W", "B"], ["Y"])], "lin",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


PROP = parse_text("""
(declare-const X_0 Real)(declare-const X_1 Real)
(declare-const Y_0 Real)(declare-const Y_1 Real)(declare-const Y_2 Real)
(assert (>= X_0 0.9)) (assert (<= X_0 1.1)) (assert (>= X_1 -0.1)) (assert (<= X_1 0.1))
(assert (or (and (>= Y_0 1.5)) (and (<= Y_2 1.75))))
""")


@pytest.fixture(scope="module")
def model():
    return linear_model()


def test_genuine_counterexample(model):
    res = replay(model, PROP, [1.0, 0.0])  # Y = (1.5, 0, 2): Y_0 >= 1.5 holds on the boundary
    assert res.ok
    np.testing.assert_array_equal(res.y, [1.5, 0.0, 2.0])
    assert "disjunct 0" in res.message


def test_not_a_counterexample(model):
    res = replay(model, PROP, [0.95, -0.05])  # Y = (1.45, -0.05, 1.95)
    assert not res.ok
    np.testing.assert_allclose(res.y, [1.45, -0.05, 1.95], atol=1e-6)
    assert "not a counterexample" in res.message


def test_float32_input_just_outside_the_box_is_clamped(model):
    x = [np.float64(np.float32(1.1)), np.float64(np.float32(-0.1))]  # 1.1 -> 1.10000002, -0.1 -> -0.100000001
    assert x[0] > 1.1 and x[1] < -0.1
    res = replay(model, PROP, x)  # Y_0 = 1.6 >= 1.5
    assert res.ok
    # the replayed point is the float32 input that was run, and it lies inside the box exactly
    np.testing.assert_array_equal(res.x, [np.nextafter(np.float32(1.1), np.float32(0)),
                                          np.nextafter(np.float32(-0.1), np.float32(1))])
    assert 0.9 <= res.x[0] <= 1.1 and -0.1 <= res.x[1] <= 0.1
    assert np.array_equal(res.x.astype(np.float32).astype(np.float64), res.x)


def test_outside_the_box_beyond_tolerance(model):
    res = replay(model, PROP, [1.2, 0.0])
    assert not res.ok and "outside every disjunct" in res.message
    assert not replay(model, PROP, [1.1 + 1e-5, 0.0], tol=1e-6).ok
    assert replay(model, PROP, [1.1 + 1e-7, 0.0], tol=1e-6).ok


def test_the_documented_tolerance_is_vnncomps_and_never_admits_a_point_outside(model):
    assert REPLAY_TOL == 1e-4
    near = replay(model, PROP, [1.1 + 9e-5, 0.1 + 9e-5])  # within 1e-4: taken up, moved inside
    assert near.ok and near.x[0] <= 1.1 and near.x[1] <= 0.1
    assert not replay(model, PROP, [1.1 + 2e-4, 0.0]).ok  # beyond 1e-4: refused


def test_a_corner_on_a_bound_with_no_float32_is_run_inside():
    """float32(-0.45) = -0.449999988 lies 1.2e-8 outside X <= -0.45: the replayed input is
    the float32 just below it, inside."""
    lo, hi = np.array([-1.0]), np.array([-0.45])
    x = float32_inside(np.array([-0.45]), lo, hi)
    assert x[0] <= -0.45 and np.float64(np.float32(x[0])) == x[0]
    assert np.float64(np.float32(-0.45)) > -0.45


def test_strict_rows_are_strict(model):
    strict = parse_text("""
    (declare-const X_0 Real)(declare-const X_1 Real)
    (declare-const Y_0 Real)(declare-const Y_1 Real)(declare-const Y_2 Real)
    (assert (>= X_0 0.9)) (assert (<= X_0 1.1)) (assert (>= X_1 -0.1)) (assert (<= X_1 0.1))
    (assert (> Y_0 1.5))""")
    assert not replay(model, strict, [1.0, 0.0]).ok  # Y_0 == 1.5 exactly
    assert replay(model, strict, [1.0625, 0.0]).ok  # Y_0 = 1.5625 > 1.5
    nonstrict = parse_text("""
    (declare-const X_0 Real)(declare-const X_1 Real)
    (declare-const Y_0 Real)(declare-const Y_1 Real)(declare-const Y_2 Real)
    (assert (>= X_0 0.9)) (assert (<= X_0 1.1)) (assert (>= X_1 -0.1)) (assert (<= X_1 0.1))
    (assert (>= Y_0 1.5))""")
    assert replay(model, nonstrict, [1.0, 0.0]).ok


def test_disjuncts_with_their_own_boxes(model):
    prop = parse_text("""
    (declare-const X_0 Real)(declare-const X_1 Real)
    (declare-const Y_0 Real)(declare-const Y_1 Real)(declare-const Y_2 Real)
    (assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_0 10))
                (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (>= Y_0 2.5))))""")
    assert not replay(model, prop, [1.0, 0.0]).ok  # first box, Y_0 = 1.5 < 10
    res = replay(model, prop, [2.0, 0.0])  # second box, Y_0 = 2.5
    assert res.ok and "disjunct 1" in res.message


def test_bad_inputs(model):
    assert "inputs" in replay(model, PROP, [1.0]).message
    assert "not finite" in replay(model, PROP, [np.nan, 0.0]).message


def test_path_and_session_forms(model, tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    assert replay(p, PROP, [1.0, 0.0]).ok
    assert replay(str(p), PROP, [1.0, 0.0]).ok
    assert replay(model.SerializeToString(), PROP, [1.0, 0.0]).ok
    sess = get_session(p)
    assert get_session(p) is sess  # cached per file
    assert replay(sess, PROP, [1.0, 0.0]).ok
