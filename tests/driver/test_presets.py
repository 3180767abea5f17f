"""The shipped experiment files load and validate (a typo in a preset fails here, not an hour in)."""

from pathlib import Path

import pytest

from usnprune.driver.experiment import load_experiment

PRESETS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_loads(path):
    out, seeds, sections, _ = load_experiment(path)
    assert {"data", "train", "export", "verify"} <= set(sections) and seeds
