"""``usnprune-solver``: the builtin verifier behind the standard's command line (chapter 5).

Spellings are checked against the standard's own test solver (vnnlib-test-solver, an
independent transcription of the same chapter), answers against onnxruntime sampling,
and the command line end to end in a subprocess."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import vnnlib_models as vm
from onnx import TensorProto

from usnprune.export.onnx_model import session
from usnprune.export.vnnlib import parse_text
from usnprune.verifier_specs.solver import assignment, capabilities, spec
from usnprune.verifier_specs.solver.lift import lift, with_shapes
from usnprune.verifier_specs.solver.verify import Request, SolverError, verify

SOLVER_DIR = Path(__file__).resolve().parents[2] / "verifier_specs" / "solver"
EXE = str(Path(sys.executable).parent / "usnprune-solver")


def _files(tmp_path, m, text, name="q"):
    onnx.save(m, tmp_path / f"{name}.onnx")
    (tmp_path / f"{name}.vnnlib").write_text(text)
    return tmp_path / f"{name}.vnnlib", str(tmp_path / f"{name}.onnx")


def _ask(tmp_path, m, text, networks=None, timeout=60.0, name="q"):
    q, o = _files(tmp_path, m, text, name)
    return verify(Request(q, [("N", o)] if networks is None else networks, timeout))


# ---- spellings --------------------------------------------------------------------------


def test_spellings_agree_with_the_standards_test_solver():
    from vnnlib_test_solver import spec as theirs
    from vnnlib_test_solver import supports
    from vnnlib_test_solver.verify import VERIFY_OPTIONS

    assert spec.CAPABILITIES == supports.CAPABILITIES  # all eleven, in section 5.4's order
    assert spec.MULTIPLE_INPUT_OUTPUT_ALIAS == supports.MULTIPLE_INPUT_OUTPUT_ALIAS
    assert set(spec.RESULTS) == set(theirs.RESULTS) and spec.SAT == theirs.SAT and spec.TIMED_OUT == theirs.TIMED_OUT
    assert set(spec.HIDDEN_NODES) == theirs.HIDDEN_NODE_THEORIES
    assert set(spec.MULTIPLE_INPUTS_OUTPUTS) == theirs.MULTIPLE_INPUT_OUTPUT_THEORIES
    assert set(spec.MULTIPLE_NETWORKS) == theirs.MULTIPLE_NETWORK_THEORIES
    assert set(spec.MULTIPLE_NODE_COMPARISONS) == theirs.MULTIPLE_NODE_COMPARISON_THEORIES
    assert set(spec.ARITHMETIC_COMPLEXITY) == theirs.ARITHMETIC_COMPLEXITY_THEORIES
    assert set(capabilities.ELEMENT_TYPES) <= theirs.ELEMENT_TYPES and spec.REAL == theirs.REAL
    assert set(spec.VERIFY_OPTIONS) <= set(VERIFY_OPTIONS)


def test_only_cli_writes_stdout():
    """House rule of vnnlib-test-solver: one module writes stdout, so it can be audited alone."""
    for path in SOLVER_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                assert path.name == "cli.py", f"{path.name} prints"
                assert any(k.arg == "file" for k in node.keywords), f"{path.name}:{node.lineno} prints to stdout"
            if isinstance(node, ast.Attribute) and node.attr == "stdout":
                assert path.name == "cli.py", f"{path.name} touches sys.stdout"


def test_claims_are_the_registry_less_the_constant_operand_rules():
    from usnprune.bounds import supported_ops

    assert capabilities.operators() == [op for op in supported_ops() if op not in ("Mul", "Div")]
    assert set(capabilities.NOT_CLAIMED) == {"Mul", "Div"} <= set(supported_ops())
    for cap in spec.CAPABILITIES:
        assert capabilities.answer(cap), cap  # every capability has an answer


def test_the_command_line(tmp_path):
    """One subprocess per global option and capability family: exact bytes on stdout."""
    def run(*args):
        return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)

    assert run(spec.NAME).stdout == "usnprune builtin verifier (usnprune-solver)\n"
    from usnprune import __version__

    assert run(spec.VERSION).stdout == f"{__version__}\n"
    assert run(spec.SUPPORTS, spec.VNNLIB_VERSIONS).stdout == "1.0\n2.0\n"
    assert run(spec.SUPPORTS, spec.ONNX_ELEMENT_TYPES).stdout == "float32\nreal\n"
    assert run(spec.CAPABILITIES_COMMAND, spec.MULTIPLE_INPUT_OUTPUT_ALIAS).stdout == "SIO\n"
    assert run(spec.SUPPORTS, spec.ARITHMETIC_COMPLEXITY_THEORIES).stdout == "BND\nOUTC\n"
    assert run(spec.SUPPORTS, spec.SERIALISE_ASSIGNMENTS).stdout == "false\n"
    for bad, says in [(["supports", "--onnx-ops"], "--onnx-ops"), (["verify"], "query"), ([], "give a command"),
                      (["--name", "supports", "--onnx-operators"], "global options"),
                      (["verify", "q.vnnlib", "--timeout", "-1"], "positive number of seconds")]:
        p = run(*bad)
        assert p.returncode == 2 and p.stdout == "" and says in p.stderr and len(p.stderr.strip().splitlines()) == 1
    q, o = _files(tmp_path, vm.identity(), vm.query((1, 2), (1, 2), 0, 1, 0, 0.5))
    p = run(spec.VERIFY, str(q), spec.NETWORK, f"N={o}", spec.TIMEOUT, "60")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == spec.SAT and lines[1] == "X float32 [1,2]" and lines[4] == "Y float32 [1,2]" and len(lines) == 7
    p = run(spec.VERIFY, str(q), spec.NETWORK, f"M={o}")
    assert p.returncode == 2 and p.stdout == "" and "maps 'M', which q.vnnlib does not declare" in p.stderr


# ---- verify -----------------------------------------------------------------------------


def test_sat_prints_a_replaying_assignment_in_the_format_of_5_3_1(tmp_path):
    text = vm.query((1, 2), (1, 2), 0, 1, 1, 0.75)
    a = _ask(tmp_path, vm.identity(), text)
    assert a.result == spec.SAT
    prop = parse_text(text)
    values = assignment.parse(a.assignment, prop.declared)
    x, y = values["X"], values["Y"]
    assert prop.violated_by(x, y) and y[1] >= 0.75
    from vnnlib_test_solver.assignments import render
    from vnnlib_test_solver.querymodel import read_query

    theirs = render(read_query(tmp_path / "q.vnnlib"), {"X": list(x), "Y": list(y)})
    assert "\n".join(a.assignment) + "\n" == theirs  # the standard's test solver writes the same bytes


def test_unsat_unknown_free_and_a_1_0_query(tmp_path):
    assert _ask(tmp_path, vm.identity(), vm.query((1, 2), (1, 2), 0, 1, 0, 1.5)).result == spec.UNSAT
    one = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
           "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (>= Y_1 0.5))\n")
    q, o = _files(tmp_path, vm.identity(), one, "v1")
    a = verify(Request(q, [("anything", o)], 60))
    assert a.result == spec.SAT and a.assignment[0] == "X_0 Real []" and a.assignment[4] == "Y_0 Real []"
    with pytest.raises(SolverError, match="1.0 query is about one network"):
        verify(Request(q, [], 60))


@pytest.mark.parametrize("networks, elem, dtype, match", [
    ([], TensorProto.FLOAT, "float32", "declares network 'N': give --network N=<onnx file> exactly once"),
    ([("N", "A"), ("N", "A")], TensorProto.FLOAT, "float32", "exactly once"),
    ([("M", "A")], TensorProto.FLOAT, "float32", "maps 'M', which q.vnnlib does not declare"),
    ([("N", "A")], TensorProto.DOUBLE, "float32", "'X' is float64, but the query declares X float32"),  # 5.3.2(2)
    ([("N", "A")], TensorProto.DOUBLE, "float64", "declared float64, which usnprune-solver does not analyse"),  # (3)
])
def test_the_three_error_conditions_of_5_3_2(tmp_path, networks, elem, dtype, match):
    q, o = _files(tmp_path, vm.identity(elem), vm.query((1, 2), (1, 2), 0, 1, 0, 0.5, dtype=dtype))
    with pytest.raises(SolverError, match=match):
        verify(Request(q, [(n, o) for n, _ in networks], 60))


def test_real_queries_float32_models_only_and_shapes_must_match(tmp_path):
    assert _ask(tmp_path, vm.identity(), vm.query((1, 2), (1, 2), 0, 1, 0, 1.5, dtype="real")).result == spec.UNSAT
    with pytest.raises(SolverError, match="'X' is float64; usnprune-solver verifies float32 models"):
        _ask(tmp_path, vm.identity(TensorProto.DOUBLE), vm.query((1, 2), (1, 2), 0, 1, 0, 1.5, dtype="real"))
    with pytest.raises(SolverError, match=r"'X' has shape \['\?', 2\], the query declares X \[1,3\]"):
        _ask(tmp_path, vm.identity(), vm.query((1, 3), (1, 2), 0, 1, 0, 0.5))


@pytest.mark.parametrize("name", sorted(vm.UNBATCHED))
def test_models_without_a_batch_axis_are_lifted_and_decided_soundly(tmp_path, name):
    m, xs, ys = vm.UNBATCHED[name]
    lifted = lift(with_shapes(m, {"X": xs, "Y": ys}))  # checks itself against onnxruntime
    assert [d.dim_value for d in lifted.graph.input[0].type.tensor_type.shape.dim] == [1, *xs]
    # the largest output element over dense samples of the box [-1, 1]: a little above is
    # unsat, a little below is sat (and its assignment must replay on the original model)
    sess = session(m)
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-1, 1, size=(4000, *xs)), np.sign(rng.uniform(-1, 1, size=(4000, *xs)))])
    outs = np.stack([np.asarray(sess.run(None, {"X": p.astype(np.float32)})[0]).reshape(-1) for p in pts])
    k = int(np.argmax(outs.max(0)))
    top = float(outs[:, k].max())
    assert _ask(tmp_path, m, vm.query(xs, ys, -1, 1, k, top + 0.05)).result == spec.UNSAT
    a = _ask(tmp_path, m, vm.query(xs, ys, -1, 1, k, top - 0.05))
    assert a.result == spec.SAT
    values = assignment.parse(a.assignment, parse_text(vm.query(xs, ys, -1, 1, k, 0.0)).declared)
    y = np.asarray(sess.run(None, {"X": values["X"].reshape(xs).astype(np.float32)})[0]).reshape(-1)
    assert y[k] >= top - 0.05 and np.array_equal(y, values["Y"])


def test_ceil_mode_max_pooling_is_rewritten_to_floor_mode(tmp_path):
    from onnx import helper

    m = vm.model([helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                 [1, 1, 3, 3], [1, 1, 2, 2])
    # the last window holds X[0,0,2,2] alone: Y[0,0,1,1] = X[0,0,2,2] in [-1, 1]
    assert _ask(tmp_path, m, vm.query((1, 1, 3, 3), (1, 1, 2, 2), -1, 1, 3, 1.01)).result == spec.UNSAT
    assert _ask(tmp_path, m, vm.query((1, 1, 3, 3), (1, 1, 2, 2), -1, 1, 3, 0.99)).result == spec.SAT


def test_unbounded_inputs_can_be_sat_but_never_unsat(tmp_path):
    head = vm.query((1, 2), (1, 2), 0, 1, 0, 0.0).split("(assert")[0]
    sat = head + "(assert (>= X[0,0] 3.0))\n(assert (>= Y[0,0] 3.5))\n"  # X[0,1] and X[0,0]'s top unbounded
    a = _ask(tmp_path, vm.identity(), sat)
    assert a.result == spec.SAT and assignment.parse(a.assignment, parse_text(sat).declared)["Y"][0] >= 3.5
    far = head + "(assert (>= X[0,0] 3.0))\n(assert (>= Y[0,0] 5000.0))\n"  # sat, but beyond the search
    a = _ask(tmp_path, vm.identity(), far)
    assert a.result == spec.UNKNOWN and "unbounded" in a.note
