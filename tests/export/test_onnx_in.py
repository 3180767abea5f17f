"""``usnprune export --onnx``: a keypoint regressor built outside usnprune -- a plain
torch.nn.Module with its own preprocessing, a MaxPool and a residual block, exported by
torch.onnx.export -- becomes a benchmark folder whose instance models compute the original
model on the lit image (parity against onnxruntime on the original), verified by the builtin
verifier; every certified verdict is attacked by dense sampling of the box through the
*original* model in onnxruntime. Bad inputs end in one line naming what was typed."""

import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from torch import nn
from usnprune.driver.cli import main
from usnprune.export.benchmark import ExportConfig, export_benchmark
from usnprune.export.onnx_model import parity_points, run, session
from usnprune.export.vnnlib import parse_file
from usnprune.pruner import perturbation
from usnprune.pruner.data.source import load
from usnprune.pruner.perturbation import Box

from usnprune.bounds import propagate as bounds
from usnprune.bounds.graph import read_graph

SIZE, K = 8, 10  # the model's input side; the synthetic aircraft has 10 keypoints
DENSE_SAMPLES = 3000


class UserNet(nn.Module):
    """Gray ``[1, 1, 8, 8]`` in [0, 1] -> its own mean/std -> stem conv -> MaxPool ->
    residual block (conv-ReLU-conv, Add skip, ReLU) -> Linear -> 2K pixel coordinates
    (``layout="K2"``: ``[1, K, 2]``; ``normalized``: divided by the side)."""

    def __init__(self, k: int = K, layout: str = "2K", normalized: bool = False, extra: str = "",
                 size: int = SIZE) -> None:
        super().__init__()
        self.k, self.layout, self.normalized, self.extra, self.size = k, layout, normalized, extra, size
        self.register_buffer("mean", torch.tensor(0.45).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(0.25).view(1, 1, 1, 1))
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.c1, self.c2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2 * (size // 2) ** 2, 2 * k + (1 if extra == "odd_output" else 0))
        with torch.no_grad():  # live stem units (a random stem can be all negative on a dark image)
            self.stem.weight.abs_()
            self.stem.bias.fill_(0.1)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        if self.extra == "sigmoid":
            x = torch.sigmoid(x)
        y = self.head(torch.flatten(x, 1)) + self.size / 2
        if self.normalized:
            y = y / self.size
        return y.reshape(-1, self.k, 2) if self.layout == "K2" else y


class TwoInputs(UserNet):
    def forward(self, x, mask):
        return super().forward(x * mask)


def to_onnx(module: nn.Module, path, inputs=None, names=("image",), opset=13):
    """torch.onnx.export as a user would call it: fixed batch 1, opset 13, the TorchScript
    exporter (the dynamo one needs onnxscript)."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs or (torch.zeros(1, 1, SIZE, SIZE),), buf, dynamo=False,
                          opset_version=opset, input_names=list(names), output_names=["keypoints"])
    path.write_bytes(buf.getvalue())
    return path


def _net(**kw) -> UserNet:
    torch.manual_seed(0)
    return UserNet(**kw)


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    return to_onnx(_net(), tmp_path_factory.mktemp("user") / "user_net.onnx")


def _original(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: np.stack([sess.run(None, {name: xi[None].astype(np.float32)})[0].reshape(-1) for xi in x]).astype(np.float64)


def _pool_images(bench, data):
    meta = json.loads((bench / "benchmark.json").read_text())
    ds = load(str(data), "test", SIZE, 1)
    ids = list(np.asarray(ds.image_ids))
    return meta, {str(i): np.asarray(ds.images[ids.index(i)], dtype=np.float64) for i in
                  np.load(bench / "properties.npz")["image_ids"].tolist()}


@pytest.mark.slow
def test_user_module_exports_verifies_and_dense_sampling_refutes_no_certificate(user_model, synth_data, tmp_path):
    bench, run_dir = tmp_path / "bench", tmp_path / "run"
    assert main(["export", "--onnx", str(user_model), "--data", str(synth_data), "--out", str(bench),
                 "--images", "1", "--pool", "2", "--eps-contrast", "0.02", "--eps-brightness", "0.02",
                 "--delta", "0.05", "0.5", "--reference", "prediction", "--timeout", "20"]) == 0
    meta, images = _pool_images(bench, synth_data)
    (cat,) = meta["categories"]
    assert cat["name"] == "user_net" and cat["source"] == "onnx" and cat["output_layout"] == "2K"
    box = Box(0.02, 0.02)
    original = _original(user_model)

    # parity, re-checked here: the instance model against the original on the lit image
    pts = parity_points(box)
    assert len(pts) >= 25 and any((pts == c).all(1).any() for c in box.corners()) and (pts == box.identity()).all(1).any()
    for image_id, rel in cat["onnx"].items():
        model = onnx.load(bench / "2.0" / rel)
        assert model.opset_import[0].version == 13 and model.ir_version == 7
        assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 2]
        lit = perturbation.apply(np.repeat(images[image_id][None], len(pts), 0), pts)
        got = run(session(model), pts)
        assert np.max(np.abs(got - original(lit))) <= 1e-4
        # the graph as the builtin reads it, and as onnxsim's interval engine reads it
        g = read_graph(model)
        assert np.max(np.abs(g.evaluate(torch.as_tensor(pts)).detach().numpy() - got)) <= 1e-4
        _agrees_with_onnxsim_intervals(model, g, box, got)

    assert main(["verify", str(bench), "--out", str(run_dir), "--backend", "builtin"]) == 0
    rows = pd.read_csv(run_dir / "instances.csv")
    assert len(rows) == K * 2 and set(rows["verdict"]) <= {"certified", "falsified", "timeout", "unknown"}
    rng = np.random.default_rng(1)
    dense = np.concatenate([box.identity(), box.corners(), box.uniform(DENSE_SAMPLES, rng)])
    outputs = {}
    certified = refuted = 0
    for r in rows.itertuples():
        if r.verdict != "certified":
            continue
        image_id = str(r.image)
        if image_id not in outputs:
            outputs[image_id] = original(perturbation.apply(np.repeat(images[image_id][None], len(dense), 0), dense))
        prop = parse_file(bench / "2.0" / r.vnnlib)
        bad = np.zeros(len(dense), bool)
        for d in prop.disjuncts:
            bad |= d.contains(dense) & d.holds(outputs[image_id])
        certified += 1
        refuted += int(bad.any())
    falsified = rows[rows["verdict"] == "falsified"]
    assert certified >= 1 and len(falsified) >= 1, rows["verdict"].value_counts()  # neither side is vacuous
    assert refuted == 0, (certified, refuted)
    for r in falsified.itertuples():  # the counterexample, run through the original model, leaves the box
        x = np.array(json.loads(r.cex), dtype=float)
        assert box.contains(x, 1e-6).all()
        y = original(perturbation.apply(images[str(r.image)][None], x[None]))[0]
        assert any(d.holds(y[None], 1e-4)[0] for d in parse_file(bench / "2.0" / r.vnnlib).disjuncts)  # VNN-COMP's tolerance


def _agrees_with_onnxsim_intervals(model, g, box, samples):
    """onnxsim's interval engine reads the same graph: it supports every node, contains every
    sample, and our interval-intersected bounds are never looser than its intervals."""
    import onnxsim.interval

    ref = onnxsim.interval.propagate(model, {"X": (box.lower[None], box.upper[None])}, input_shapes={"X": [1, 2]})
    assert not ref.unsupported, ref.unsupported
    lo, hi = (np.asarray(v, dtype=np.float64).reshape(-1) for v in ref.intervals["Y"])
    assert np.all(samples >= lo - 1e-5) and np.all(samples <= hi + 1e-5)
    fwd = bounds.forward(g, torch.as_tensor(box.lower)[None], torch.as_tensor(box.upper)[None], ibp=True)
    tol = 1e-6 * (1 + np.abs(hi).max())
    assert np.all(fwd.out.lo.reshape(-1).numpy() >= lo - tol) and np.all(fwd.out.hi.reshape(-1).numpy() <= hi + tol)


def test_output_layouts_and_normalized_coordinates_give_the_same_instance_model(synth_data, tmp_path):
    """``[1, K, 2]``, ``[1, 2K] / SIZE`` with ``onnx_normalized``, and the same module
    exported at opset 18 (brought to 13) are the same network as ``[1, 2K]`` in pixels at
    opset 13: the instance models agree at the parity points."""
    paths = {n: to_onnx(_net(**kw), tmp_path / f"{n}.onnx", opset=18 if n == "op18" else 13)
             for n, kw in (("px", {}), ("rows", {"layout": "K2"}), ("unit", {"normalized": True}), ("op18", {}))}
    outs = {}
    for name, path in paths.items():
        bench = tmp_path / f"b_{name}"
        stats = export_benchmark(ExportConfig([], str(synth_data), str(bench), onnx=[str(path)], images=1, pool=1,
                                              onnx_normalized=name == "unit"), log=lambda s: None)
        assert stats["max_parity_error_px"] <= 1e-4
        meta = json.loads((bench / "benchmark.json").read_text())
        (rel,) = meta["categories"][0]["onnx"].values()
        outs[name] = run(session(onnx.load(bench / "2.0" / rel)), parity_points(Box()))
        assert meta["categories"][0]["output_layout"] == ("K,2" if name == "rows" else "2K")
    assert outs["px"].shape == (len(parity_points(Box())), 2 * K)
    assert np.max(np.abs(outs["rows"] - outs["px"])) <= 1e-5
    assert np.max(np.abs(outs["unit"] - outs["px"])) <= 1e-4
    assert np.max(np.abs(outs["op18"] - outs["px"])) <= 1e-5
    assert 1 < np.median(outs["px"]) < SIZE  # pixels, not units


def test_onnx_models_sit_beside_checkpoints_and_must_share_their_input(tiny_checkpoint, synth_data, tmp_path, capsys):
    """``--checkpoint`` and ``--onnx`` in one benchmark: categories in that order, each with
    its own parity; a model of another input size is refused naming both files."""
    big = to_onnx(_net(size=32), tmp_path / "user32.onnx", (torch.zeros(1, 1, 32, 32),))
    bench = tmp_path / "mixed"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--onnx", str(big), "--category", "ours", "theirs",
                 "--data", str(synth_data), "--out", str(bench), "--images", "1", "--pool", "1"]) == 0
    meta = json.loads((bench / "benchmark.json").read_text())
    assert [(c["name"], c.get("source", "checkpoint")) for c in meta["categories"]] == [("ours", "checkpoint"),
                                                                                         ("theirs", "onnx")]
    assert set(pd.read_csv(bench / "manifest.csv")["category"]) == {"ours", "theirs"}
    small = to_onnx(_net(), tmp_path / "user8.onnx")
    _one_line(capsys, ["export", "--checkpoint", str(tiny_checkpoint), "--onnx", str(small), "--data", str(synth_data),
                       "--out", str(tmp_path / "refused")], str(small), str(tiny_checkpoint), "1 x 8 x 8", "1 x 32 x 32")
    assert not (tmp_path / "refused").exists()


def test_rgb_model_keeps_its_own_channel_order_and_scaling_exact(tmp_path, capsys):
    """An RGB model that flips RGB to BGR and scales by 255 inside its graph, under the
    6-parameter channel_gain_bias family: parity against the original holds, because the
    preprocessing stays in the graph (Gather is not a builtin operator, so this export
    names it, and passes with --no-builtin-check)."""
    from usnprune.pruner.data.synthetic import generate

    data = generate(tmp_path / "rgb", n_train=1, n_test=3, seed=0, size=16, channels=3, progress=False)

    class Bgr(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1))
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.head = nn.Linear(2 * SIZE * SIZE, 2 * K)

        def forward(self, x):
            x = x[:, [2, 1, 0]] * 255.0 - self.mean
            return self.head(torch.flatten(torch.relu(self.conv(x / 58.0)), 1))

    path = to_onnx(Bgr(), tmp_path / "bgr.onnx", (torch.zeros(1, 3, SIZE, SIZE),))
    args = ["export", "--onnx", str(path), "--data", str(data), "--out", str(tmp_path / "b"), "--images", "1",
            "--family", "channel_gain_bias"]
    _one_line(capsys, args, f"--onnx {path}", "(Gather) is not supported by the builtin verifier")
    stats = export_benchmark(ExportConfig([], str(data), str(tmp_path / "b"), onnx=[str(path)], images=2,
                                          perturbation=Box(0.1, 0.1, "channel_gain_bias"), builtin_check=False),
                             log=lambda s: None)
    assert stats["max_parity_error_px"] <= 1e-4 and stats["onnx_models"] == 3


def _one_line(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usnprune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_bad_onnx_inputs_are_one_line_naming_what_was_typed(synth_data, tmp_path, capsys):
    two = to_onnx(TwoInputs(), tmp_path / "two.onnx", (torch.zeros(1, 1, SIZE, SIZE), torch.ones(1, 1, SIZE, SIZE)),
                  names=("image", "mask"))
    odd = to_onnx(_net(extra="odd_output"), tmp_path / "odd.onnx")
    sig = to_onnx(_net(extra="sigmoid"), tmp_path / "sig.onnx")
    base = ["--data", str(synth_data), "--images", "1", "--pool", "1"]
    _one_line(capsys, ["export", "--onnx", str(two), "--out", str(tmp_path / "o1")] + base,
              f"--onnx {two}", "2 inputs", "'image'", "'mask'")
    _one_line(capsys, ["export", "--onnx", str(odd), "--out", str(tmp_path / "o2")] + base,
              f"--onnx {odd}", "[1, 21]", "10 keypoints", "[1, 20]")
    err = _one_line(capsys, ["export", "--onnx", str(sig), "--out", str(tmp_path / "o3")] + base,
                    f"--onnx {sig}", "(Sigmoid) is not supported by the builtin verifier", "--no-builtin-check")
    assert "net/" in err  # the node, as named in the instance model
    _one_line(capsys, ["export", "--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o4")] + base,
              "missing.onnx: no such file")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    _one_line(capsys, ["export", "--onnx", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "o5")] + base,
              "junk.onnx: not a valid ONNX model")
    _one_line(capsys, ["export", "--out", str(tmp_path / "o6")] + base, "--checkpoint", "--onnx")
    for i in range(1, 7):
        assert not (tmp_path / f"o{i}").exists()  # refused before anything was written

    # exported anyway for other verifiers: the builtin answers an error row naming the node
    bench = tmp_path / "sig_bench"
    assert main(["export", "--onnx", str(sig), "--out", str(bench), "--no-builtin-check"] + base) == 0
    capsys.readouterr()
    main(["verify", str(bench), "--out", str(tmp_path / "sig_run"), "--backend", "builtin"])
    rows = pd.read_csv(tmp_path / "sig_run" / "instances.csv")
    assert set(rows["verdict"]) == {"error"} and rows["message"].str.contains("(Sigmoid) is not supported", regex=False).all()
