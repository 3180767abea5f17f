"""The shipped experiment files load and validate (a typo in a preset fails here, not an hour in),
the presets and the configurations kept beside published results (benchmarks/results/*/)."""

from pathlib import Path

import pytest

from usnprune.driver.experiment import load_experiment

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PRESETS = sorted(BENCHMARKS.glob("*.yaml")) + sorted(BENCHMARKS.glob("results/*/*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[str(p.relative_to(BENCHMARKS)) for p in PRESETS])
def test_preset_loads(path):
    out, seeds, sections, _ = load_experiment(path)
    assert {"data", "train", "export", "verify"} <= set(sections) and seeds
