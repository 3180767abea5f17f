"""Standard COCO files and lighting families on the command line: a person-keypoints file
goes through train, eval and export as it comes; bad data, families and boxes are one line."""

import json
import shutil

import numpy as np
import pytest
import yaml

from usnprune.driver.cli import main
from tests.pruner.data.person_coco import write_person_file


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


@pytest.fixture(scope="module")
def person(tmp_path_factory):
    """The person file and a 17-keypoint RGB network trained on it through the command line."""
    root = tmp_path_factory.mktemp("person")
    path, img_dir, data = write_person_file(root)
    cfg = root / "train.yaml"
    cfg.write_text(yaml.safe_dump({"data": "-", "out": str(root / "net"), "arch": "tiny",
                                   "optim": {"epochs": 1, "batch_size": 4}}))
    code = main(["train", "--config", str(cfg), "--annotations", str(path), "--image-dir", str(img_dir),
                 "--category", "person", "--family", "channel_gain_bias"])
    assert code == 0
    return root, path, img_dir


def test_a_person_keypoints_file_through_train_eval_and_export(person, capsys, tmp_path):
    root, path, img_dir = person
    ckpt = root / "net" / "model.pt"
    metrics = json.loads((root / "net" / "train_metrics.json").read_text())
    assert metrics["eval_split"] == "train"  # no test files given: said, not hidden
    code, out, err = _run(capsys, "eval", "--checkpoint", ckpt, "--annotations", path, "--image-dir", img_dir,
                          "--family", "channel_gain", "--grid", "3", "--delta", "4")
    assert code == 0 and "robust_pck@4" in out, err
    code, out, err = _run(capsys, "export", "--checkpoint", ckpt, "--annotations", path, "--image-dir", img_dir,
                          "--coco-category", "person", "--out", tmp_path / "bench", "--family", "channel_gain_bias",
                          "--images", "2", "--delta", "2", "--timeout", "5")
    assert code == 0, err
    meta = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert meta["family"] == "channel_gain_bias" and len(meta["input_lower"]) == 6
    assert len(meta["keypoint_names"]) == 17 and meta["data"]["test"]["annotations"] == str(path)
    # the file has an image with two persons: one sample per image, so no model overwrites another
    ids = np.load(tmp_path / "bench" / "properties.npz")["image_ids"]
    assert len(ids) == len(set(ids.tolist())) == len(next(iter(meta["categories"]))["onnx"])


def _broken(tmp_path, person, edit):
    _, path, img_dir = person
    data = json.loads(path.read_text())
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    return bad, img_dir


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["annotations"][0].pop("category_id"), r"annotations\[0\] \(id 101\) has no 'category_id'"),
    (lambda d: d["annotations"][2].pop("image_id"), r"annotations\[2\] \(id 201\) has no 'image_id'"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] \(id 785\) has no 'file_name'"),
    (lambda d: d["images"][0].__setitem__("file_name", "gone.jpg"), r"gone\.jpg: image file not found \(image id 139"),
    (lambda d: None, r"no category 'dog' \(the file has: 'person'\)"),
])
def test_bad_coco_files_are_one_line(person, tmp_path, capsys, edit, match):
    bad, img_dir = _broken(tmp_path, person, edit)
    args = ["eval", "--checkpoint", person[0] / "net" / "model.pt", "--annotations", bad, "--image-dir", img_dir]
    code, _, err = _run(capsys, *args, *(["--category", "dog"] if "dog" in match else []))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("usnprune: error: "), err
    assert __import__("re").search(match, err), err


@pytest.mark.parametrize("args, match", [
    (["--family", "hue"], r"--family: unknown family 'hue' \(known: brightness_contrast \(k=2\), channel_gain_bias"),
    (["--eps-brightness", "-0.1"], r"--eps-brightness -0\.1: must be >= 0 \(a negative half-width leaves the box empty\)"),
    (["--eps-contrast", "nan"], r"--eps-contrast nan: expected a finite number, got nan"),
    (["--eps-brightness", "inf"], r"--eps-brightness inf: expected a finite number, got inf"),
])
def test_bad_families_and_boxes_are_one_line(person, tmp_path, capsys, args, match):
    root, path, img_dir = person
    for cmd in (["eval", "--checkpoint", root / "net" / "model.pt"],
                ["export", "--checkpoint", root / "net" / "model.pt", "--out", tmp_path / "b"]):
        code, _, err = _run(capsys, *cmd, "--annotations", path, "--image-dir", img_dir, *args)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert __import__("re").search(match, err), err
    assert not (tmp_path / "b").exists()


def test_an_rgb_family_on_a_grayscale_network_is_one_line(tiny_checkpoint, synth_data, tmp_path, capsys):
    code, _, err = _run(capsys, "export", "--checkpoint", tiny_checkpoint, "--data", synth_data, "--out",
                        tmp_path / "b", "--family", "channel_gain_bias")
    assert code == 2 and err == ("usnprune: error: export.perturbation.family: family channel_gain_bias needs "
                                 "3-channel (RGB) images; the network takes 1 channel")


def test_resuming_a_run_whose_benchmark_changed_family_is_refused(person, tmp_path, capsys):
    root, path, img_dir = person
    bench, run = tmp_path / "bench", tmp_path / "run"
    common = ["export", "--checkpoint", root / "net" / "model.pt", "--annotations", path, "--image-dir", img_dir,
              "--out", bench, "--images", "1", "--delta", "50", "--timeout", "5"]
    assert _run(capsys, *common, "--family", "channel_gain")[0] == 0
    assert _run(capsys, "verify", bench, "--out", run)[0] == 0
    # the same folder re-exported with six parameters: the run's rows were for three
    assert _run(capsys, *common, "--family", "channel_gain_bias", "--force")[0] == 0
    code, _, err = _run(capsys, "verify", bench, "--out", run, "--resume")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "lighting family channel_gain (k=3); the benchmark now has channel_gain_bias (k=6)" in err
    shutil.rmtree(run)
