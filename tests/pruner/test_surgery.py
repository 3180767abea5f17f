import numpy as np
import pytest
import torch

from usnprune.errors import ConfigError
from usnprune.pruner.models import KeypointNet, arch_from, load_checkpoint, save_checkpoint
from usnprune.pruner.surgery import keep_from_remove, prune_units, zero_units

ARCHS = [
    "small",
    {"conv": [6, {"out": 5, "stride": 1}], "fc": [9, 7], "pool": 2},  # pool before flatten, two fc
    {"conv": [6, 8], "fc": [], "pool": 1},  # conv straight into the head
    {"conv": [], "fc": [12, 6], "input_size": 8},  # MLP
]


def _random_net(spec, seed=0):
    torch.manual_seed(seed)
    m = KeypointNet(arch_from(spec)).eval()
    for bn in m.conv_bns:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return m


@pytest.mark.parametrize("spec", ARCHS)
def test_pruned_network_equals_original_with_units_zeroed(spec, tmp_path):
    m = _random_net(spec)
    rng = np.random.default_rng(1)
    widths = m.widths()
    remove = {n: rng.choice(w, size=w // 2, replace=False) for n, w in widths.items()}
    pruned = prune_units(m, keep_from_remove(widths, remove))
    zeroed = zero_units(m, remove)
    assert pruned.widths() == {n: w - w // 2 for n, w in widths.items()}
    x = torch.rand(8, 1, m.arch.input_size, m.arch.input_size)
    with torch.no_grad():
        diff = (pruned(x) - zeroed(x)).abs().max().item()
        assert diff <= 1e-5
        # removing units really changes the function (the test is not vacuous)
        assert (m(x) - zeroed(x)).abs().max().item() > 1e-3
    # the rebuilt checkpoint (config + state_dict) reproduces the pruned network
    p = save_checkpoint(tmp_path / "p.pt", pruned)
    rebuilt, _ = load_checkpoint(p)
    with torch.no_grad():
        assert (rebuilt(x) - pruned(x)).abs().max().item() == 0.0


def test_gates_are_sliced_along():
    m = _random_net("tiny")
    gates = m.enable_gates()
    for g in gates.values():
        g.data.uniform_(0.1, 2.0)
    keep = {"conv0": np.array([0, 2]), "fc0": np.arange(10)}
    p = prune_units(m, keep)
    torch.testing.assert_close(p.gate_params["conv0"].data, m.gate_params["conv0"].data[[0, 2]])
    x = torch.rand(3, 1, 32, 32)
    remove = {n: np.setdiff1d(np.arange(w), keep.get(n, np.arange(w))) for n, w in m.widths().items()}
    with torch.no_grad():
        torch.testing.assert_close(p(x), zero_units(m, remove)(x), atol=1e-5, rtol=0)


def test_a_layer_must_keep_a_unit():
    m = _random_net("tiny")
    with pytest.raises(ConfigError, match="conv1 would keep no unit"):
        prune_units(m, {"conv1": np.array([], dtype=int)})
