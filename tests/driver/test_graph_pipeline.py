"""End to end on the residual registry model (res_tiny: MaxPool stem, Add skips, RGB):
train -> prune through Torch-Pruning (usn_w, magnitude) -> export -> verify (builtin) ->
report. Every certified verdict is attacked by dense sampling of the box through
onnxruntime; every falsified one is replayed."""

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from usnprune.driver.experiment import run_experiment
from usnprune.driver.runfolder import benchmark_file
from usnprune.export.vnnlib import parse_file
from usnprune.pruner.models import load_checkpoint
from usnprune.pruner.perturbation import Box
from usnprune.verifier_specs.replay import evaluate, get_session, replay

EXPERIMENT = {
    "data": {"synth": {"n_train": 120, "n_test": 20, "size": 32, "seed": 0, "channels": 3}},
    "train": {"arch": "res_tiny", "optim": {"epochs": 2, "batch_size": 32, "lr": 0.003}},
    "prune": {"methods": ["usn_w", "magnitude"], "sparsities": [0.5],
              "calibration": {"images": 8, "perturbations": 6}, "eval_grid": 3,
              "schedule": {"steps": 1, "reg_epochs": 1, "finetune_epochs": 0, "final_epochs": 1}},
    # a tolerance the clean predictions break under the box, and one they keep
    "export": {"perturbation": {"eps_c": 0.004, "eps_b": 0.004}, "deltas": [0.001, 2.0], "reference": "prediction",
               "images": 1, "pool": 1, "timeout": 5},
    "verify": {"backends": ["builtin"], "workers": 2},
    "report": {"sheets": False},
}
DENSE_SAMPLES = 4000


@pytest.mark.slow
def test_residual_model_end_to_end_and_sampling_never_refutes(tmp_path):
    cfg = dict(EXPERIMENT, out=str(tmp_path / "out"))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = run_experiment(tmp_path / "exp.yaml", log=lambda s: None)

    dense, _ = load_checkpoint(out / "train" / "seed0" / "model.pt")
    assert dense.arch.name == "res_tiny" and dense.arch.in_channels == 3
    for method in ("usn_w", "magnitude"):
        rep = json.loads((out / "prune" / f"{method}-0.5-seed0" / "report.json").read_text())
        assert rep["units_after"] == round(rep["units_before"] * 0.5) and rep["parameters"] < rep["parameters_before"]
    bench, run = out / "export" / "bench", out / "verify" / "builtin"
    meta = json.loads((bench / "benchmark.json").read_text())
    ops = {n.op_type for n in onnx.load(benchmark_file(bench, next(iter(meta["categories"][0]["onnx"].values())))).graph.node}
    assert {"MaxPool", "Add", "Conv", "Gemm"} <= ops and "BatchNormalization" not in ops
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert set(summary["network"]) == {"dense-seed0", "usn_w-0.5-seed0", "magnitude-0.5-seed0"}

    box = Box(0.004, 0.004)
    rng = np.random.default_rng(1)
    pts = np.concatenate([box.identity(), box.corners(), box.uniform(DENSE_SAMPLES, rng)])
    counts = {"certified": 0, "refuted": 0, "falsified": 0, "replayed": 0}
    outputs: dict[str, np.ndarray] = {}
    for r in pd.read_csv(run / "instances.csv").itertuples():
        prop = parse_file(benchmark_file(bench, r.vnnlib))
        if r.verdict == "certified":
            if r.onnx not in outputs:
                outputs[r.onnx] = evaluate(get_session(str(benchmark_file(bench, r.onnx))), pts)
            bad = np.zeros(len(pts), bool)
            for d in prop.disjuncts:
                bad |= d.contains(pts) & d.holds(outputs[r.onnx])
            counts["certified"] += 1
            counts["refuted"] += int(bad.any())
        elif r.verdict == "falsified":
            counts["falsified"] += 1
            counts["replayed"] += int(replay(str(benchmark_file(bench, r.onnx)), prop, np.array(json.loads(r.cex), float)).ok)
    assert counts["refuted"] == 0, counts  # no certified verdict broken by any sample
    assert counts["replayed"] == counts["falsified"], counts
    assert counts["certified"] > 0 and counts["falsified"] > 0, counts  # neither check is vacuous
