"""Arbitrary graphs through Torch-Pruning: the residual registry model and a user module
(residual Add, MaxPool, Concat, depthwise and grouped conv, BatchNorm) named as
``module:factory``; pruning equals zeroing; the pruned network rebuilds without the
user's source; bad factories and state_dicts are one line."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from usnprune.driver.cli import main
from usnprune.pruner import tp_prune
from usnprune.pruner.graphnet import res_net
from usnprune.pruner.models import count_parameters, load_checkpoint

USER_NET = textwrap.dedent('''
    import torch
    from torch import nn


    class UserNet(nn.Module):
        """A residual block, MaxPool, a Concat of two branches, a depthwise conv, a grouped conv."""
        input_size = 32

        def __init__(self, k=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2))
            self.c1 = nn.Conv2d(12, 12, 3, 1, 1)
            self.b1 = nn.BatchNorm2d(12)
            self.a = nn.Conv2d(12, 8, 1)
            self.b = nn.Sequential(nn.Conv2d(12, 6, 3, padding=1), nn.BatchNorm2d(6))
            self.dw = nn.Conv2d(14, 14, 3, 2, 1, groups=14)
            self.dwbn = nn.BatchNorm2d(14)
            self.pw = nn.Conv2d(14, 16, 1)
            self.g = nn.Conv2d(16, 16, 3, 1, 1, groups=4)
            self.fc = nn.Linear(16 * 4 * 4, 24)
            self.head = nn.Linear(24, 2 * k)
            self.k = k

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.b1(self.c1(x)))
            x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
            x = torch.relu(self.dwbn(self.dw(x)))
            x = torch.relu(self.g(torch.relu(self.pw(x))))
            return (self.head(torch.relu(self.fc(torch.flatten(x, 1)))) * 32 + 16).view(-1, self.k, 2)


    def make():
        return UserNet()


    def broken():
        raise RuntimeError("the weights server is down")


    def not_a_module():
        return 42
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``usernet.py`` importable from the current folder, as a user's module would be."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "usernet.py").write_text(USER_NET)
    monkeypatch.chdir(src)
    monkeypatch.syspath_prepend(str(src))
    yield src
    sys.modules.pop("usernet", None)


def _randomize_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.weight.data, 0.5, 1.5), (m.bias.data, -0.3, 0.3), (m.running_mean, -0.2, 0.2),
                              (m.running_var, 0.5, 1.5)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return net.eval()


def _check_equal_to_zeroed(net, seed):
    rng = np.random.default_rng(seed)
    widths = net.widths()
    remove = {k: np.sort(rng.choice(w, size=w // 2, replace=False)) for k, w in widths.items()}
    ref = tp_prune.zero_groups(copy.deepcopy(net), remove)
    orig = copy.deepcopy(net)
    before = count_parameters(net)
    assert all(len(r) == len(remove[k]) for k, r in tp_prune.prune_groups(net, remove).items())
    assert net.widths() == {k: w - w // 2 for k, w in widths.items()}
    assert count_parameters(net) < before
    x = torch.rand(6, net.arch.in_channels, net.arch.input_size, net.arch.input_size)
    with torch.no_grad():
        assert (orig(x) - ref(x)).abs().max() > 1e-3  # the zeroed channels mattered
        assert (net(x) - ref(x)).abs().max() <= 1e-5
    return widths


@pytest.mark.parametrize("seed", [0, 1])
def test_residual_registry_pruned_equals_zeroed(seed):
    torch.manual_seed(seed)
    net = _randomize_bn(res_net("res_tiny", 32, 3, 5), seed)
    widths = _check_equal_to_zeroed(net, seed)
    # the residual stream (stem + first block's output) is one group; each block's inner conv its own
    assert set(widths) == {"blocks/0/conv1", "blocks/0/conv2", "blocks/1/conv1", "blocks/1/conv2",
                           "blocks/2/conv1", "blocks/2/conv2", "fc"}


def test_user_module_groups_and_pruned_equals_zeroed(user_module):
    net, meta = load_checkpoint("usernet:make")
    assert meta["source"] == "usernet:make" and net.arch.num_keypoints == 10 and net.arch.in_channels == 3
    assert sorted(p.name for p in user_module.iterdir()) == ["usernet.py"]  # no __pycache__ written there
    groups = {g.key: g for g in tp_prune.dependency_groups(net)}
    # the concat branches and the depthwise conv after them share one channel space
    assert {n for n, _, _ in groups["a"].members} >= {"body.a", "body.b.0", "body.b.1", "body.dw", "body.dwbn"}
    assert groups["a"].width == 14
    # the stem and the residual branch share one; grouped-conv groups are held, and say why
    assert {n for n, _, _ in groups["c1"].members} >= {"body.stem.0", "body.stem.1", "body.c1", "body.b1"}
    assert not groups["pw"].prunable and "grouped conv" in groups["pw"].reason
    _check_equal_to_zeroed(_randomize_bn(net), 3)


def _prune_yaml(tmp_path, data, checkpoint):
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(textwrap.dedent(f"""
        checkpoint: {checkpoint}
        data: {data}
        out: unused
        sparsity: 0.4
        calibration: {{images: 8, perturbations: 5}}
        schedule: {{steps: 1, reg_epochs: 1, finetune_epochs: 0, final_epochs: 0}}
        optim: {{batch_size: 32, lr: 0.001, schedule: constant, warmup_epochs: 0}}
        max_train: 64
        eval_grid: 3
        eval_deltas: [2.0]
    """))
    return cfg


@pytest.fixture(scope="module")
def rgb_data(tmp_path_factory):
    from usnprune.pruner.data.synthetic import generate

    out = tmp_path_factory.mktemp("rgb") / "data"
    generate(out, n_train=64, n_test=12, seed=0, size=32, channels=3, progress=False)
    return out


@pytest.mark.slow
def test_prune_user_factory_every_method_rebuilds_without_source(user_module, rgb_data, tmp_path):
    import json

    cfg = _prune_yaml(tmp_path, rgb_data, "usernet:make")
    x = torch.rand(3, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    methods = ["usn", "usn_w", "random", "magnitude", "activation"]
    for method in methods:
        out = tmp_path / f"pruned-{method}"
        assert main(["prune", "--config", str(cfg), "--out", str(out), "--method", method]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["units_after"] < report["units_before"]
        assert report["parameters"] < report["parameters_before"]
        assert set(report["held_groups"]) == {"pw", "g"}  # the grouped conv's input and output groups
        pruned, meta = load_checkpoint(out / "model.pt")
        assert meta["method"] == method
        assert pruned.body.pw.out_channels == 16 and pruned.body.g.out_channels == 16
        with torch.no_grad():
            np.save(tmp_path / f"want-{method}.npy", pruned(x).numpy())
    # a fresh interpreter, in a folder without usernet.py, with no path to it
    code = textwrap.dedent(f"""
        import sys, numpy as np, torch
        try:
            import usernet
            sys.exit("usernet importable")
        except ModuleNotFoundError:
            pass
        from usnprune.pruner.models import load_checkpoint
        x = torch.as_tensor(np.load("x.npy"))
        for method in {methods!r}:
            net, _ = load_checkpoint(f"pruned-{{method}}/model.pt")
            with torch.no_grad():
                assert np.abs(net(x).numpy() - np.load(f"want-{{method}}.npy")).max() <= 1e-6, method
            print("rebuilt", method)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "USNPRUNE_NO_PROGRESS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("rebuilt") == len(methods)


def test_factory_state_dict_is_loaded_and_checked(user_module, tmp_path, capsys):
    net, _ = load_checkpoint("usernet:make")
    torch.save(net.body.state_dict(), tmp_path / "weights.pt")
    again, _ = load_checkpoint(f"usernet:make@{tmp_path / 'weights.pt'}")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net.eval()(x))
    sd = net.body.state_dict()
    sd["fc.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "bad_shape.pt")
    del sd["fc.weight"]
    torch.save(sd, tmp_path / "missing.pt")
    cases = {
        "usernet:broken": "the factory raised RuntimeError: the weights server is down",
        "usernet:not_a_module": "the factory returned int, not a torch.nn.Module",
        "usernet:nothing": "usernet has no callable nothing",
        "nosuchmodule_xyz:make": "cannot import nosuchmodule_xyz",
        f"usernet:make@{tmp_path / 'bad_shape.pt'}": "fc.weight has shape (3, 3), the module needs (24, 256)",
        f"usernet:make@{tmp_path / 'missing.pt'}": "does not fit the factory's module (missing ['fc.weight']",
        f"usernet:make@{tmp_path / 'absent.pt'}": "no such state_dict file",
    }
    cfg = _prune_yaml(tmp_path, tmp_path, "usernet:make")
    assert main(["prune", "--config", str(cfg), "--analyze-only", "--out", str(tmp_path / "a")]) == 2
    assert "--analyze-only is implemented for chain networks" in capsys.readouterr().err
    for spec, want in cases.items():
        assert main(["eval", "--checkpoint", spec, "--data", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("usnprune: error: ") and want in err, (spec, err)


@pytest.mark.parametrize("name", ["tiny", "small", "medium"])
def test_chain_surgery_through_torch_pruning_is_the_chain_with_those_widths(name, tmp_path):
    """prune_units goes through Torch-Pruning (the hand-written slicing it replaced gave the
    same parameter counts and max|diff| 0.0 on all five registry chains, commit a77c9b2):
    its groups are the chain's layers, its result is exactly a KeypointNet of the new widths
    (strict state_dict load, same parameter count, checkpoint round trip) and equals the
    original with the units zeroed."""
    from usnprune.pruner.models import KeypointNet, arch_from, save_checkpoint
    from usnprune.pruner.surgery import keep_from_remove, prune_units, zero_units

    torch.manual_seed(0)
    m = _randomize_bn(KeypointNet(arch_from(name)))
    widths = m.widths()
    key = {f"conv{i}": f"convs/{i}" for i in range(len(m.convs))} | {f"fc{i}": f"fcs/{i}" for i in range(len(m.fcs))}
    assert {g.key: g.width for g in tp_prune.dependency_groups(m)} == {key[n]: w for n, w in widths.items()}
    rng = np.random.default_rng(1)
    remove = {n: np.sort(rng.choice(w, size=w // 2, replace=False)) for n, w in widths.items()}
    pruned = prune_units(m, keep_from_remove(widths, remove))
    fresh = KeypointNet(m.arch.with_widths({n: w - w // 2 for n, w in widths.items()}))
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert count_parameters(fresh) == count_parameters(pruned) < count_parameters(m)
    save_checkpoint(tmp_path / "p.pt", pruned)
    again, _ = load_checkpoint(tmp_path / "p.pt")
    x = torch.rand(8, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
        assert (pruned(x) - zero_units(m, remove)(x)).abs().max() <= 1e-5


@pytest.mark.slow
def test_user_module_exports_and_builtin_certificates_survive_sampling(user_module, rgb_data, tmp_path):
    """The user module (residual Add, MaxPool, Concat, depthwise and grouped conv) through
    export (parity checked there) and the builtin verifier; every certified verdict is
    attacked with the identity, the corners and 2000 uniform points through onnxruntime."""
    from usnprune.driver.runfolder import benchmark_file
    from usnprune.driver.verify import verify
    from usnprune.export.benchmark import ExportConfig, export_benchmark
    from usnprune.export.vnnlib import parse_file
    from usnprune.pruner.perturbation import Box
    from usnprune.verifier_specs.replay import evaluate, get_session

    box = Box(0.004, 0.004)
    bench, run = tmp_path / "bench", tmp_path / "run"
    stats = export_benchmark(ExportConfig(checkpoints=["usernet:make"], categories=["user"], data=str(rgb_data),
                                          out=str(bench), perturbation=box, deltas=[0.002], images=1, pool=1,
                                          timeout=10, reference="prediction"), log=lambda s: None)
    assert stats["max_parity_error_px"] <= 1e-4
    verify(bench, run, executor="serial", log=lambda s: None)
    import pandas as pd

    rows = pd.read_csv(run / "instances.csv")
    pts = np.concatenate([box.identity(), box.corners(), box.uniform(2000, np.random.default_rng(0))])
    certified = rows[rows["verdict"] == "certified"]
    assert len(certified) > 0, rows["verdict"].value_counts()
    for r in certified.itertuples():
        out = evaluate(get_session(str(benchmark_file(bench, r.onnx))), pts)
        for d in parse_file(benchmark_file(bench, r.vnnlib)).disjuncts:
            assert not (d.contains(pts) & d.holds(out)).any(), r.vnnlib  # no sample refutes a certificate
