import numpy as np
import pytest
import torch

from usnprune.errors import ConfigError
from usnprune.pruner.importance import get_importance, make_calibration
from usnprune.pruner.importance.usn import usn_from_preactivations
from usnprune.pruner.models import KeypointNet, arch_from
from usnprune.pruner.perturbation import Box
from usnprune.pruner.prune import select_removal, step_targets


def _calib(n=12, m=9, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.2, 0.8, size=(n, 1, 8, 8)).astype(np.float32)
    return make_calibration(images, Box(0.1, 0.1), n, m, seed)


def test_usn_is_one_without_dependence_and_falls_as_dependence_grows():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 1, 1))  # image content
    theta_effect = rng.normal(size=(1, 9, 1))
    theta_effect[0, 0] = 0.0  # identity
    ks = np.array([0.0, 0.05, 0.2, 1.0])
    z = torch.as_tensor(base + ks.reshape(1, 1, -1) * theta_effect)
    usn = usn_from_preactivations(z)["usn"]
    assert usn[0] == pytest.approx(1.0)
    assert np.all(np.diff(usn) < 0) and usn[-1] < 0.5


def test_usn_of_a_network_unit_that_ignores_the_perturbation_is_one():
    torch.manual_seed(0)
    m = KeypointNet(arch_from({"conv": [], "fc": [4], "input_size": 8, "batchnorm": False})).eval()
    with torch.no_grad():
        m.fcs[0].weight[0] = 0.0  # unit 0: constant pre-activation
        m.fcs[0].weight[1] = 0.01  # units 1..: depend on brightness
        m.fcs[0].weight[2] = 1.0
    imp = get_importance("usn")
    scores = imp(m, _calib())
    assert scores["fc0"][0] == pytest.approx(1.0)
    assert np.all(scores["fc0"][1:] < 1.0)
    assert {"bias", "smoothness", "scale", "usn"} <= set(imp.last_terms["fc0"])


def test_bound_term_scores_in_unit_interval():
    torch.manual_seed(0)
    m = KeypointNet(arch_from({"conv": [3], "fc": [5], "input_size": 8})).eval()
    imp = get_importance("usn", bound_weight=0.5)
    s = imp(m, _calib())
    for name, v in s.items():
        assert np.all((v > 0) & (v <= 1)), name
        stab = imp.last_terms[name]["stability"]
        assert np.all((stab >= 0) & (stab <= 1))


@pytest.mark.parametrize("name", ["random", "magnitude", "activation", "usn"])
def test_every_importance_scores_every_unit(name):
    torch.manual_seed(0)
    m = KeypointNet(arch_from({"conv": [3, 4], "fc": [5], "input_size": 8})).eval()
    s = get_importance(name)(m, _calib())
    assert {k: len(v) for k, v in s.items()} == m.widths()
    assert all(np.all(np.isfinite(v)) for v in s.values())


def test_random_importance_is_seeded():
    m = KeypointNet(arch_from("tiny"))
    a = get_importance("random")(m, _calib(seed=3))
    b = get_importance("random")(m, _calib(seed=3))
    c = get_importance("random")(m, _calib(seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["fc0"], c["fc0"])


def test_global_selection_removes_exact_counts_and_respects_min_keep():
    rng = np.random.default_rng(0)
    scores = {"a": rng.random(10), "b": rng.random(20) * 0.01, "c": rng.random(5)}
    rem = select_removal(scores, 21, "global", min_keep=2, comparable=True)
    assert sum(len(v) for v in rem.values()) == 21
    assert len(rem["b"]) == 18  # lowest scores, but min_keep=2 stops it
    rem2 = select_removal(scores, 21, "global", min_keep=2, comparable=False)
    assert sum(len(v) for v in rem2.values()) == 21
    with pytest.raises(ConfigError, match="cannot remove 30 units while every layer keeps min_keep=2"):
        select_removal(scores, 30, "global", min_keep=2)


def test_layer_selection_and_targets():
    widths = {"a": 10, "b": 20, "c": 5}
    targets = step_targets(widths, 0.5, 3, "layer")
    assert targets[-1] == {"a": 5, "b": 10, "c": 2}
    scores = {n: np.arange(w, dtype=float)[::-1] for n, w in widths.items()}
    rem = select_removal(scores, targets[-1], "layer")
    assert {n: len(v) for n, v in rem.items()} == targets[-1]
    assert list(rem["c"]) == [3, 4]  # the lowest scores
    assert step_targets(widths, 0.8, 4, "global")[-1] == 28
    with pytest.raises(ConfigError, match="layer c would keep 0 units"):
        select_removal(scores, {"c": 5}, "layer")


def test_empty_calibration_is_a_user_error():
    with pytest.raises(ConfigError, match="calibration set is empty"):
        make_calibration(np.zeros((0, 1, 8, 8), np.float32), Box(), 8, 8, 0)
