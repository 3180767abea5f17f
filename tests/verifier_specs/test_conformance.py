"""vnnlib-satisfactory (the VNN-LIB 2.0 conformance and correctness suite, PyPI 1.0.1)
against ``usnprune-solver``, through the suite's own command line.

Every solver call is a fresh process that imports PyTorch (3-8 s here), so the test suite
runs a subset of categories, the ones about the standard rather than about one operator: an
output comparison theory (arithmetic_outc), a model moving its leading axis (transpose,
lifted), and one category the solver does not claim (mul: every case skipped). Each
operator the solver claims (convolutions included) is tested against sampling by the bound
engine's own tests. The whole suite runs in CI (`.ci/conformance`, called by `.ci/run`); the
counts are in docs/verifiers.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SUITE, SOLVER = BIN / "vnnlib-satisfactory", BIN / "usnprune-solver"
pytestmark = pytest.mark.skipif(not SUITE.exists(), reason="vnnlib-satisfactory is not installed (usnprune[test])")


@pytest.mark.slow
@pytest.mark.parametrize("category, claimed", [("arithmetic_outc", True), ("transpose", True), ("mul", False)])
def test_conformance_subset(category, claimed, tmp_path):
    # --timeout is the suite's kill limit too; process start-up under load needs room
    p = subprocess.run([str(SUITE), "run", "--solver", str(SOLVER), "--test", category, "--timeout", "300",
                        "--no-verbose"], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / ".vnnlib-satisfactory" / "report.json").read_text())
    s = report["summary"]
    bad = [(r["test_id"], r["outcome"], r["detail"], r["stderr"][-300:]) for r in report["results"] if r["outcome"] != "pass"]
    assert s["failed"] == s["suspect"] == s["errored"] == 0, bad
    if claimed:
        assert s["passed"] == s["total"] > 0 and s["skipped"] == 0
    else:
        assert s["passed"] == 0 and s["skipped"] == s["total"] > 0
