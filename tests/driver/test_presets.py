"""The shipped experiment files load and validate (a typo in a preset fails here, not an hour in),
the presets and the configurations kept beside published results (benchmarks/results/*/)."""

from pathlib import Path

import pytest

import pandas as pd

from usnprune.driver.experiment import load_experiment
from usnprune.driver.publish import _grids, _test_points, _test_section
from usnprune.driver.stages import Context

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PRESETS = sorted(BENCHMARKS.glob("*.yaml")) + sorted(BENCHMARKS.glob("results/*/*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[str(p.relative_to(BENCHMARKS)) for p in PRESETS])
def test_preset_loads(path):
    out, seeds, sections, _ = load_experiment(path)
    assert {"data", "train", "export", "verify"} <= set(sections) and seeds



@pytest.mark.parametrize("path", PRESETS, ids=[str(p.relative_to(BENCHMARKS)) for p in PRESETS])
def test_published_test_section_names_the_grids_it_used(path):
    """The publish page says which evaluation points the test-split metrics came from: the eval
    stage's grid for the dense network and the prune stage's eval_grid for the pruned ones (a
    fixed "11 x 11" was wrong for every preset that sets either)."""
    out, seeds, sections, _ = load_experiment(path)
    dense, pruned, k = _grids(Context(out=out, sections=sections, seeds=seeds))
    assert (dense, pruned) == (sections["eval"][1].grid, sections["prune"][1].eval_grid)
    assert k == sections["eval"][1].perturbation.k
    words = _test_points(dense, pruned, k)
    assert (f"{dense} × {dense}" in words) if k == 2 else (f"Box.grid({dense})" in words or f"{dense}^{k}" in words)
    assert ("prune stage's `eval_grid`" in words) == (dense != pruned)
    rows = pd.DataFrame([{"backend": "builtin", "method": "dense", "label": "dense", "sparsity": 0.0, "delta_px": 2.0, "seed": 0,
                          "clean_pck_test_pct": 80.0, "robust_pck_test_pct": 70.0, "stable_pck_test_pct": 90.0,
                          "fidelity_px": 0.0}])
    section = _test_section(rows, dense, pruned, k)
    assert words in section and "| dense | 0 | 2 | 80.0 | 70.0 | 90.0 | 0.00 |" in section
