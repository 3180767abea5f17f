"""End-to-end: the whole pipeline on a tiny experiment, and experiment-file errors."""

import json

import pandas as pd
import pytest
import yaml

from usnprune.driver.cli import main
from usnprune.driver.experiment import run_experiment
from usnprune.errors import ConfigError

TINY = {
    "data": {"synth": {"n_train": 160, "n_test": 20, "size": 32, "seed": 0}},
    "train": {"arch": "tiny", "optim": {"epochs": 1, "batch_size": 32, "lr": 0.003}},
    "eval": {"perturbation": {"eps_c": 0.1, "eps_b": 0.1}, "deltas": [1.0], "grid": 5},
    "prune": {"methods": ["random", "usn_w"], "sparsities": [0.5],
              "calibration": {"images": 8, "perturbations": 6}, "eval_grid": 3,
              "schedule": {"steps": 2, "reg_epochs": 1, "finetune_epochs": 0, "final_epochs": 1}},
    "export": {"deltas": [1.0], "images": 1, "pool": 1, "timeout": 10},
    "verify": {"backends": ["builtin"]},
    "report": {"sheets": True},
}


def _write(tmp_path, cfg, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_pipeline_end_to_end_and_resume(tmp_path):
    """Every stage on a tiny experiment (one image per network, both references: 60
    instances), the report's files and its certified <= clean/empirical bounds, the
    progressive schedule's exact target width; then a second run finds all 7 stages up to
    date and a changed stage is refused."""
    cfg = dict(TINY, out=str(tmp_path / "out"))
    exp = _write(tmp_path, cfg)
    logs = []
    out = run_experiment(exp, log=logs.append)
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert set(summary["network"]) == {"dense-seed0", "random-0.5-seed0", "usn_w-0.5-seed0"}
    assert (summary["certified_accuracy_pct"] <= summary[["clean_accuracy_pct", "empirical_accuracy_pct"]].min(axis=1)).all()
    assert (summary["certified_stability_pct"] <= summary["empirical_stability_pct"]).all()
    assert "**certified accuracy (%)**" in (out / "report" / "report.md").read_text()
    pruned = json.loads((out / "prune" / "usn_w-0.5-seed0" / "report.json").read_text())
    assert pruned["units_after"] == round(pruned["units_before"] * 0.5)
    for f in ("certified_accuracy.png", "certified_stability.png", "verification_time.png", "keypoints.csv",
              "report.md", "sheets/dense-seed0.png"):
        assert (out / "report" / f).is_file()
    # a second run does nothing: every stage is up to date
    logs.clear()
    run_experiment(exp, log=logs.append)
    assert sum("up to date" in l for l in logs) == 7
    # a changed stage is refused without --force
    cfg["export"]["deltas"] = [2.0]
    with pytest.raises(ConfigError, match="stage 'export' .* different configuration"):
        run_experiment(_write(tmp_path, cfg), log=logs.append)


@pytest.mark.parametrize("patch, match", [
    ({"bogus": 1}, "unknown key bogus"),
    ({"train": {"arch": "tiny", "optim": {"epochs": 1, "lr": -1}}}, "optim.lr: must be > 0"),
    ({"eval": {"perturbation": {"eps_c": 1.2}}}, "eval.perturbation.eps_c: must be < 1"),
    ({"export": {"data": "elsewhere"}}, "export: data is set by the experiment"),
    ({"prune": {"options": {"eval_grid": 5}}}, "prune: unknown key options"),
    ({"eval": {"deltas": [0]}}, "every delta must be > 0"),
    ({"prune": {"sparsities": [1.0]}}, "sparsity must be in \\[0, 1\\)"),
    ({"prune": {"methods": ["magic"]}}, "'magic' is not one of"),
    ({"data": {"path": "/nonexistent", "synth": {"n_train": 3}}}, "exactly one of"),
])
def test_bad_experiment_files_are_one_line_errors(patch, match, tmp_path, capsys):
    cfg = dict(TINY, out=str(tmp_path / "out"), **patch) if "bogus" in patch else dict(TINY, out=str(tmp_path / "out"))
    cfg.update({k: v for k, v in patch.items() if k != "bogus"})
    code = main(["run", str(_write(tmp_path, cfg))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists()
