"""The report: certified accuracy against the ground truth beside certified stability, the
checks a sound verifier cannot fail, report.md, plots and contact sheets — on real runs of the
builtin verifier."""

import json

import pandas as pd
import pytest
import torch

from usnprune.driver.cli import main
from usnprune.driver.report import check_rows, report
from usnprune.driver.store import ResultStore
from usnprune.driver.verify import verify
from usnprune.export.benchmark import ExportConfig, export_benchmark
from usnprune.pruner.models import KeypointNet, arch_from, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def untrained_checkpoint(small_checkpoint, tmp_path_factory):
    """A randomly initialised network (never trained): right nowhere, yet it barely moves."""
    _, meta = load_checkpoint(small_checkpoint)
    torch.manual_seed(0)
    net = KeypointNet(arch_from("tiny", input_size=32, num_keypoints=len(meta["keypoint_names"])))
    path = tmp_path_factory.mktemp("untrained") / "model.pt"
    save_checkpoint(path, net.eval(), {"method": "dense", "keypoint_names": meta["keypoint_names"]})
    return path


@pytest.fixture(scope="module")
def run(untrained_checkpoint, synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    export_benchmark(ExportConfig(checkpoints=[str(untrained_checkpoint)], categories=["untrained"],
                                  data=str(synth_data), out=str(root / "bench"), deltas=[1.0], images=1, pool=1,
                                  timeout=30), log=lambda s: None)  # reference: both (the default)
    verify(root / "bench", root / "run", executor="serial", log=lambda s: None)
    return root


def test_untrained_network_certified_accuracy_is_at_most_its_clean_accuracy_while_stability_is_high(run):
    res = report([run / "run"], run / "report", log=lambda s: None)
    s = res["summary"].set_index("network")
    assert res["problems"] == []
    u = s.loc["untrained"]
    assert u["references"] == "gt+prediction" and u["keypoints"] == 10  # 1 image x 10 visible keypoints
    assert u["certified_accuracy_pct"] <= u["clean_accuracy_pct"] <= 10.0  # right almost nowhere ...
    assert u["certified_stability_pct"] >= 50.0  # ... yet certified stable: stability is not accuracy
    for r in s.itertuples():  # the inequalities a sound verifier cannot break
        assert r.certified_accuracy_pct <= min(r.clean_accuracy_pct, r.empirical_accuracy_pct)
        assert r.certified_stability_pct <= r.empirical_stability_pct
    md = (run / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| untrained (dense) |"))
    assert f"**{u['certified_accuracy_pct']:.1f}**" in row and f"{u['certified_stability_pct']:.1f}" in row
    assert f"{u['clean_accuracy_pct']:.1f}" in row
    assert "δ = 1 px" in md and "contrast c ∈ [0.9, 1.1]" in md and "builtin" in md and "timeout 30 s" in md
    assert "Passed for every row (1:" in md
    for f in ("certified_accuracy.png", "certified_stability.png", "verification_time.png", "summary.csv",
              "keypoints.csv", "sheets/untrained.png"):
        assert (run / "report" / f).is_file(), f
    kp = pd.read_csv(run / "report" / "keypoints.csv")
    assert len(kp) == 10 and kp["certified_accuracy_pct"].between(0, 100).all()


def test_a_certificate_above_its_ceiling_is_an_error_in_the_report(run, tmp_path, capsys):
    """A forged `certified` on a keypoint that is wrong at the identity breaks two checks."""
    import shutil

    forged = tmp_path / "run"
    shutil.copytree(run / "run", forged)
    rows = pd.read_csv(forged / "instances.csv")
    man = pd.read_csv(run / "bench" / "manifest.csv")
    wrong = man[(man["reference"] == "gt") & man["violated_at_identity"] & (man["network"] == "untrained")].iloc[0]
    row = rows[(rows["onnx"] == wrong["onnx"]) & (rows["vnnlib"] == wrong["vnnlib"])].iloc[0].to_dict()
    row.update(verdict="certified", sample_violated=False)
    ResultStore(forged).append({k: (None if pd.isna(v) else v) for k, v in row.items()}, "forger")
    assert main(["report", str(forged), "--out", str(tmp_path / "rep"), "--no-sheets"]) == 1
    assert "ERROR: " in capsys.readouterr().out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**ERROR**" in md and "certified accuracy" in md and "> clean accuracy" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["problems"]


def test_check_rows_names_each_broken_inequality():
    s = pd.DataFrame([{"run": "r", "network": "n", "delta_px": 0.5, "clean_accuracy_pct": 40.0,
                       "certified_accuracy_pct": 50.0, "empirical_accuracy_pct": 60.0,
                       "certified_stability_pct": 90.0, "empirical_stability_pct": 80.0}])
    problems = check_rows(s)
    assert len(problems) == 2
    assert "certified accuracy 50.0% > clean accuracy 40.0%" in problems[0]
    assert "certified stability 90.0% > empirical stability (sampled) 80.0%" in problems[1]


def test_left_out_and_unfinished_properties_stay_in_the_base(small_checkpoint, synth_data, tmp_path):
    export_benchmark(ExportConfig(checkpoints=[str(small_checkpoint)], categories=["net"], data=str(synth_data),
                                  out=str(tmp_path / "bench"), deltas=[6.0], images=3, pool=3, timeout=2,
                                  reference="gt", skip_violated=True), log=lambda s: None)
    man = pd.read_csv(tmp_path / "bench" / "manifest.csv")
    listed = man[man["instance"].notna()]
    verify(tmp_path / "bench", tmp_path / "run", executor="serial", log=lambda s: None)
    # forget one finished row: the run is then incomplete
    store = ResultStore(tmp_path / "run")
    rows = store.rows()
    for f in (tmp_path / "run" / "results").glob("*.jsonl"):
        lines = f.read_text().splitlines()
        f.write_text("\n".join(lines[1:]) + ("\n" if len(lines) > 1 else ""))
    assert len(ResultStore(tmp_path / "run").rows()) == len(rows) - 1
    s = report([tmp_path / "run"], tmp_path / "rep", sheets=False, log=lambda s: None)["summary"].iloc[0]
    assert s["keypoints"] == 30 and s["left_out"] == len(man) - len(listed) > 0 and s["missing"] == 1
    assert s["certified_accuracy_pct"] <= s["clean_accuracy_pct"] == pytest.approx(100 * len(listed) / 30)
    assert "without a result" in (tmp_path / "rep" / "report.md").read_text()
