"""End to end with a lighting family of more than two parameters, on RGB synthetic data:
train -> prune (usn, usn_w, random; magnitude does not read the box) -> export -> verify (builtin) -> report with
channel_gain_bias (k = 6), then the same networks exported and verified with channel_gain
(k = 3). Every certified verdict is attacked by dense sampling of the k-D box through
onnxruntime; every falsified verdict is replayed from its stored k coordinates."""

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from usnprune.driver.experiment import run_experiment
from usnprune.driver.runfolder import benchmark_file
from usnprune.driver.verify import verify
from usnprune.export.benchmark import ExportConfig, export_benchmark
from usnprune.export.vnnlib import parse_file
from usnprune.pruner.perturbation import Box
from usnprune.verifier_specs.replay import evaluate, get_session, replay

EXPERIMENT = {
    "family": "channel_gain_bias",  # every box of the experiment; the synthetic data becomes RGB
    "data": {"synth": {"n_train": 200, "n_test": 20, "size": 32, "seed": 0}},
    "train": {"arch": "tiny", "optim": {"epochs": 2, "batch_size": 32, "lr": 0.003}},
    "prune": {"methods": ["usn", "usn_w", "random"], "sparsities": [0.5],
              "calibration": {"images": 8, "perturbations": 6}, "eval_grid": 3,
              "schedule": {"steps": 1, "reg_epochs": 1, "finetune_epochs": 0, "final_epochs": 1}},
    # a tolerance the networks' clean predictions break under the box, and one they keep
    "export": {"perturbation": {"eps_c": 0.02, "eps_b": 0.02}, "deltas": [0.05, 1.0], "reference": "prediction",
               "images": 1, "pool": 1, "timeout": 5},
    "verify": {"backends": ["builtin"], "workers": 2},
    "report": {"sheets": False},
}
DENSE_SAMPLES = 4000  # uniform points of the box, beside every corner and the identity


def attack(bench, run, box: Box) -> dict:
    """Dense sampling of every certified instance, replay of every falsified one."""
    rows = pd.read_csv(run / "instances.csv")
    rng = np.random.default_rng(1)
    pts = np.concatenate([box.identity(), box.corners(), box.uniform(DENSE_SAMPLES, rng)])
    outputs: dict[str, np.ndarray] = {}
    counts = {"certified": 0, "refuted": 0, "falsified": 0, "replayed": 0}
    for r in rows.itertuples():
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
            x = np.array(json.loads(r.cex), dtype=float)
            assert len(x) == box.k
            counts["falsified"] += 1
            counts["replayed"] += int(replay(str(benchmark_file(bench, r.onnx)), prop, x).ok)
    return counts


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_channel_gain_bias_end_to_end_on_rgb_and_sampling_never_refutes(tmp_path):
    cfg = dict(EXPERIMENT, out=str(tmp_path / "out"))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = run_experiment(tmp_path / "exp.yaml", log=lambda s: None)

    meta = json.loads((out / "export" / "bench" / "benchmark.json").read_text())
    assert meta["family"] == "channel_gain_bias" and meta["input_names"] == ["c_r", "c_g", "c_b", "b_r", "b_g", "b_b"]
    first = meta["categories"][0]["onnx"]
    model = onnx.load(benchmark_file(out / "export" / "bench", first[next(iter(first))]))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [6]
    assert json.loads((out / "train" / "seed0" / "train_metrics.json").read_text())["eval_split"] == "test"
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert set(summary["network"]) == {"dense-seed0", "usn-0.5-seed0", "usn_w-0.5-seed0", "random-0.5-seed0"}
    assert set(summary["family"]) == {"channel_gain_bias"}
    for metric in ("accuracy", "stability"):
        c, e = summary[f"certified_{metric}_pct"], summary[f"empirical_{metric}_pct"]
        assert (c.isna() | (c <= e)).all(), metric
    manifest = pd.read_csv(out / "export" / "bench" / "manifest.csv")
    assert set(manifest["family"]) == {"channel_gain_bias"}
    for method in ("usn", "usn_w", "random"):
        rep = json.loads((out / "prune" / f"{method}-0.5-seed0" / "report.json").read_text())
        assert rep["family"] == "channel_gain_bias" and rep["units_after"] == round(rep["units_before"] * 0.5)
    box6 = Box(0.02, 0.02, "channel_gain_bias")
    k6 = attack(out / "export" / "bench", out / "verify" / "builtin", box6)

    # the same networks under channel_gain (k = 3): dense and the USN+Wasserstein one
    box3 = Box(0.02, 0.02, "channel_gain")
    bench3, run3 = tmp_path / "bench3", tmp_path / "run3"
    export_benchmark(ExportConfig(
        checkpoints=[str(out / "train/seed0/model.pt"), str(out / "prune/usn_w-0.5-seed0/model.pt")],
        data=str(out / "data"), out=str(bench3), perturbation=box3, deltas=[0.05, 1.0], images=1, pool=1, timeout=5,
        reference="prediction"), log=lambda s: None)
    verify(bench3, run3, workers=2, log=lambda s: None)
    k3 = attack(bench3, run3, box3)

    for counts in (k6, k3):
        assert counts["refuted"] == 0, counts  # no certified verdict is broken by any sample
        assert counts["replayed"] == counts["falsified"], counts  # every counterexample replays with all k coordinates
    assert k6["certified"] + k3["certified"] > 0 and k6["falsified"] + k3["falsified"] > 0  # neither check is vacuous
