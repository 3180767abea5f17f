"""The ``vnnlib`` backend against the standard's own test solver (PyPI vnnlib-test-solver
2.0.1, ``vnnlibTestSolver``), which answers from a TOML file by query name and injects
every misbehaviour it knows: unparseable output, an exit status that disagrees with the
answer, stderr noise, abnormal termination, delays past the timeout, and assignments right
or wrong. A wrong assignment must end as an error row, never as ``falsified``."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from usnprune.errors import UsnpruneError
from usnprune.verifier_specs import Instance, load_backend
from usnprune.verifier_specs.trust import Checker

SOLVER = shutil.which("vnnlibTestSolver") or shutil.which("vnnlibTestSolver", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(SOLVER is None, reason="vnnlib-test-solver is not installed (pip install usnprune[test])")

QUERY = """(vnnlib-version <2.0>)
(declare-network net
    (declare-input X float32 [1,2])
    (declare-output Y float32 [1,2])
)
(assert (>= X[0,0] 0.0))
(assert (<= X[0,0] 1.0))
(assert (>= X[0,1] 0.0))
(assert (<= X[0,1] 1.0))
(assert (>= Y[0,0] {threshold}))
"""
# Y = X (a Gemm with the identity): Y[0,0] >= 0.5 is sat (at X = (0.75, 0.25)), >= 2.0 unsat.
SAT, UNSAT = QUERY.format(threshold="0.5"), QUERY.format(threshold="2.0")

CONFIG = """
[solver]
name = "vnnlib test solver (usnprune tests)"
version = "2.0.1-test"

[capabilities]
onnx-opset-versions = ["13", "18"]
onnx-element-types = ["float32", "real"]
onnx-operators = [ { name = "Gemm" } ]
vnnlib-versions = ["2.0", "2.0"]
hidden-node-theories = ["NH"]
multiple-input-output-theories = ["SIO"]
multiple-network-theories = ["SNET"]
multiple-node-comparison-theories = ["SNC"]
arithmetic-complexity-theories = ["BND", "OUTC"]
optimised-disjunctive-reasoning = false
serialise-assignments = false

[soundness]
sound-for = ["float32"]

[[rules]]
match = "right_sat.vnnlib"
result = "sat"
assignments = { X = [0.75, 0.25], Y = [0.75, 0.25] }
[[rules]]
match = "wrong_sat.vnnlib"
result = "sat"
assignments = { X = [0.25, 0.25], Y = [0.75, 0.25] }
[[rules]]
match = "short_sat.vnnlib"
result = "sat"
raw_stdout = "sat\\nX float32 [1,2]\\n0.75\\n"
[[rules]]
match = "garbage_unsat.vnnlib"
result = "unsat"
raw_stdout = "maybe?\\n"
[[rules]]
match = "badexit_unsat.vnnlib"
result = "unsat"
exit_code = 3
stderr = "something went wrong after all"
[[rules]]
match = "noisy_unsat.vnnlib"
result = "unsat"
stderr = "WARNING: lots of noise\\nsecond noise line"
[[rules]]
match = "crash_unsat.vnnlib"
result = "unsat"
crash = true
stderr = "about to abort"
[[rules]]
match = "silentcrash_unsat.vnnlib"
result = "unsat"
crash = true
raw_stdout = ""
[[rules]]
match = "slow_unsat.vnnlib"
result = "unsat"
delay_seconds = 5
[[rules]]
match = "f64_unsat.vnnlib"
result = "unsat"
model_element_types = { X = "float64" }
[[rules]]
match = "*_unknown.vnnlib"
result = "unknown"
[[rules]]
match = "*_unsat.vnnlib"
result = "unsat"
"""


def identity_model() -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Gemm", ["X", "W", "B"], ["Y"])], "identity",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"), numpy_helper.from_array(np.zeros(2, np.float32), "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


QUERIES = {"right_sat": SAT, "wrong_sat": SAT, "short_sat": SAT, "plain_unsat": UNSAT, "garbage_unsat": UNSAT,
           "badexit_unsat": UNSAT, "noisy_unsat": UNSAT, "crash_unsat": UNSAT, "silentcrash_unsat": UNSAT,
           "slow_unsat": UNSAT, "f64_unsat": UNSAT, "plain_unknown": UNSAT}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A VNN-COMP 2026 folder holding only 2.0/, one row per query above, and the solver's config."""
    root = tmp_path_factory.mktemp("vnnlib-backend")
    v2 = root / "bench" / "2.0"
    (v2 / "onnx").mkdir(parents=True)
    (v2 / "vnnlib").mkdir()
    onnx.save(identity_model(), v2 / "onnx" / "id.onnx")
    rows = []
    for name, text in QUERIES.items():
        (v2 / "vnnlib" / f"{name}.vnnlib").write_text(text)
        rows.append(f"onnx/id.onnx,vnnlib/{name}.vnnlib,{1 if name == 'slow_unsat' else 20}")
    (v2 / "instances.csv").write_text("\n".join(rows) + "\n")
    (root / "solver.toml").write_text(CONFIG)
    return root


def _backend(bench, **options):
    options.setdefault("command", [SOLVER, "--config", str(bench / "solver.toml")])
    return load_backend("vnnlib", **options)


def _run(bench, name, timeout=20.0, **options):
    inst = Instance(bench / "bench" / "2.0", "onnx/id.onnx", f"vnnlib/{name}.vnnlib", timeout)
    v = _backend(bench, **options).verify(inst)
    return inst, v


@pytest.mark.parametrize("name, status, says", [
    ("plain_unsat", "certified", ""),
    ("plain_unknown", "unknown", ""),
    ("noisy_unsat", "certified", ""),  # stderr noise is ignored
    ("garbage_unsat", "error", "unparseable result line 'maybe?'"),
    ("badexit_unsat", "error", "exited with status 3 after printing 'unsat'"),
    ("crash_unsat", "error", "died of SIGABRT (first line of stdout: 'unsat'); stderr: about to abort"),
    ("silentcrash_unsat", "error", "died of SIGABRT (first line of stdout: nothing on stdout)"),
    ("short_sat", "error", "sat, but the assignment is unreadable: X needs 2 values, the assignment has 1"),
    ("f64_unsat", "error", "declares it float32"),  # the test solver's own 5.3.2(2) refusal, from its stderr
])
def test_answers_and_misbehaviours(bench, name, status, says):
    _, v = _run(bench, name)
    assert v.status == status, v.message
    assert says in v.message
    if name == "noisy_unsat":
        assert "noise" not in v.message


def test_a_right_assignment_is_parsed_and_replays(bench):
    inst, v = _run(bench, "right_sat")
    assert v.status == "falsified" and v.counterexample == (0.75, 0.25)
    checked, _ = Checker().check(inst, v)
    assert checked.status == "falsified" and checked.counterexample == (0.75, 0.25)


def test_a_wrong_assignment_never_becomes_falsified(bench):
    inst, v = _run(bench, "wrong_sat")
    assert v.counterexample == (0.25, 0.25)  # what the solver claims...
    checked, _ = Checker().check(inst, v)
    assert checked.status == "error" and "does not replay" in checked.message  # ...is not a counterexample


def test_the_solver_is_told_the_timeout_and_honours_it(bench):
    _, v = _run(bench, "slow_unsat", timeout=1.0)  # delay 5 s > --timeout 1: it answers timed-out at 1 s
    assert v.status == "timeout" and "hard limit" not in v.message, v.message  # its own answer, not our kill


def test_a_solver_that_ignores_the_timeout_is_killed_with_its_children(bench, tmp_path):
    script = tmp_path / "hang.sh"
    pidfile = tmp_path / "child.pid"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    _, v = _run(bench, "plain_unsat", timeout=1.0, command=[str(script)], slack=1.0)
    assert v.status == "timeout" and "hard limit of 2 s" in v.message  # killed by us (it sleeps 300 s)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "the solver's child survived"


def _state(pid: int) -> str:
    try:
        return next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:"))
    except (OSError, StopIteration):
        return "Z"


def test_a_1_0_query_and_a_missing_command(bench, tmp_path):
    root = tmp_path / "one"
    (root / "vnnlib").mkdir(parents=True)
    (root / "onnx").mkdir()
    shutil.copy(bench / "bench" / "2.0" / "onnx" / "id.onnx", root / "onnx" / "id.onnx")
    (root / "vnnlib" / "q.vnnlib").write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1))\n")
    v = _backend(bench).verify(Instance(root, "onnx/id.onnx", "vnnlib/q.vnnlib", 5))
    assert v.status == "error" and "sends VNN-LIB 2 queries" in v.message
    missing = _backend(bench, command=["no-such-solver-xyz"])
    with pytest.raises(UsnpruneError, match="no-such-solver-xyz: the solver command"):
        missing.check_available()
    _, v = _run(bench, "plain_unsat", command=["no-such-solver-xyz"])
    assert v.status == "error" and "cannot start the solver" in v.message


def test_version_is_name_and_version(bench):
    assert _backend(bench).version() == "vnnlib test solver (usnprune tests) 2.0.1-test"


def test_usnprune_verify_drives_it_and_records_the_version(bench, tmp_path):
    """Through `usnprune verify` (driver, workers, trust layer): one row per instance."""
    from usnprune.driver.verify import verify

    profile = tmp_path / "testsolver.yaml"
    profile.write_text(f"backend: vnnlib_solver\ncommand: [{SOLVER}, --config, {bench / 'solver.toml'}]\nslack: 5\n")
    verify(bench / "bench", tmp_path / "run", backend=str(profile), executor="serial", log=lambda *a: None)
    rows = pd.read_csv(tmp_path / "run" / "instances.csv", dtype={"vnnlib_version": str}).set_index("vnnlib")
    assert (rows["vnnlib_version"] == "2.0").all() and (rows["backend"] == "vnnlib").all()
    assert rows.loc["vnnlib/right_sat.vnnlib", "verdict"] == "falsified"
    assert rows.loc["vnnlib/wrong_sat.vnnlib", "verdict"] == "error"
    assert "does not replay" in rows.loc["vnnlib/wrong_sat.vnnlib", "message"]
    assert rows.loc["vnnlib/plain_unsat.vnnlib", "verdict"] == "certified"
    assert rows.loc["vnnlib/garbage_unsat.vnnlib", "verdict"] == "error"
    assert rows.loc["vnnlib/slow_unsat.vnnlib", "verdict"] == "timeout"
    assert not rows["message"].astype(str).str.startswith("SOUNDNESS ALARM").any()
    assert os.environ.get("VNNLIB_TEST_SOLVER_CONFIG") is None  # the profile carried it, not the environment
