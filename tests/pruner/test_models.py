import pytest
import torch

from usnprune.errors import CheckpointError, ConfigError
from usnprune.pruner.models import REGISTRY, KeypointNet, arch_from, count_parameters, load_checkpoint, save_checkpoint


def _randomize_bn(model):
    for bn in model.conv_bns:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)


def test_registry_sizes_grow_and_output_shape():
    sizes = [count_parameters(KeypointNet(arch_from(n))) for n in REGISTRY]
    assert sizes == sorted(sizes) and sizes[-2] > 250_000  # 'large' is clearly over-parameterized
    y = KeypointNet(arch_from("small", num_keypoints=7))(torch.rand(3, 1, 32, 32))
    assert y.shape == (3, 14)


@torch.no_grad()
def test_plain_form_equals_network_with_bn_and_gates():
    torch.manual_seed(0)
    m = KeypointNet(arch_from({"conv": [6, {"out": 5, "stride": 1}], "fc": [9], "pool": 2})).eval()
    _randomize_bn(m)
    for g in m.enable_gates().values():
        g.data.uniform_(-0.5, 1.5)
    x = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(m.to_plain()(x), m(x), atol=1e-4, rtol=1e-5)
    y = m(x)
    m.fold_gates()
    assert not m.has_gates()
    torch.testing.assert_close(m(x), y, atol=1e-4, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    m = KeypointNet(arch_from("tiny")).eval()
    _randomize_bn(m)
    p = save_checkpoint(tmp_path / "m.pt", m, {"keypoint_names": ["a"]})
    m2, meta = load_checkpoint(p)
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(m2(x), m(x))
    assert meta["keypoint_names"] == ["a"] and m2.arch == m.arch


def test_bad_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a usnprune checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    m = KeypointNet(arch_from("tiny"))
    p = save_checkpoint(tmp_path / "m.pt", m)
    blob = torch.load(p, weights_only=True)
    blob["arch"]["fc"] = [33]  # architecture no longer matches the weights
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="architecture does not match weights"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_arch_errors():
    with pytest.raises(ConfigError, match="unknown architecture"):
        arch_from("gigantic")
    with pytest.raises(ConfigError, match=r"fc\[0\]: must be >= 1"):
        arch_from({"conv": [4], "fc": [0]})
    with pytest.raises(ConfigError, match="reduce a"):
        arch_from({"conv": [4, 4, 4, 4, 4, 4], "fc": [4], "input_size": 16, "pool": 2})
