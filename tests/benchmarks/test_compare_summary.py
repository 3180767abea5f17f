"""benchmarks/compare_summary.py: the reproduction check of a published study summary."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compare_summary.py"
PUBLISHED = ROOT / "benchmarks" / "results" / "small" / "summary.csv"


def run(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_identical_summary_reproduces():
    r = run(PUBLISHED, PUBLISHED)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "certified_stability_pct  max |difference| 0;" in r.stdout
    assert "certified stability within the published mean ± std: 22 of 22" in r.stdout


def test_a_mean_outside_its_spread_or_a_missing_row_fails(tmp_path):
    s = pd.read_csv(PUBLISHED)
    moved = s.copy()
    rows = (moved["method"] == "usn") & (moved["sparsity"] == 0.5)
    moved.loc[rows, "certified_pck"] = moved.loc[rows, "certified_pck"] - 0.5  # far beyond the spread
    moved.to_csv(tmp_path / "moved.csv", index=False)
    r = run(PUBLISHED, tmp_path / "moved.csv")
    assert r.returncode == 1 and "outside the spread: usn 0.5" in r.stdout

    s.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    r = run(PUBLISHED, tmp_path / "short.csv")
    assert r.returncode == 1 and "missing in the new run" in r.stdout


def test_unreadable_input_is_one_line(tmp_path):
    r = run(PUBLISHED, tmp_path / "none.csv")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
