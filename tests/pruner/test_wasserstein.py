import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from usnprune.pruner.wasserstein import target_sample, usn_gate_penalty, w1_sorted, w1_to_target


@pytest.mark.parametrize("seed", range(5))
def test_w1_agrees_with_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=200), rng.exponential(size=200)
    assert float(w1_sorted(torch.as_tensor(a), torch.as_tensor(b))) == pytest.approx(wasserstein_distance(a, b), rel=1e-9)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9])
def test_w1_to_target_agrees_with_scipy(p):
    g = np.random.default_rng(3).uniform(-0.2, 1.3, size=101)
    t = target_sample(101, p, dtype=torch.float64).numpy()
    assert (t == 0).sum() == round(p * 101)
    assert float(w1_to_target(torch.as_tensor(g), p)) == pytest.approx(wasserstein_distance(g, t), rel=1e-9)


def test_w1_gradient_pulls_smallest_gates_to_zero():
    g = torch.tensor([0.9, 0.2, 1.1, 0.5], requires_grad=True)
    w1_to_target(g, 0.5).backward()
    # the two smallest gates are matched with 0 (pushed down), the others with 1
    assert g.grad[1] > 0 and g.grad[3] > 0  # gradient descent lowers them
    assert g.grad[0] < 0 and g.grad[2] > 0  # 0.9 rises to 1, 1.1 falls to 1


def test_usn_penalty_weights_low_usn_units():
    gates = {"a": torch.ones(2, requires_grad=True)}
    usn = {"a": torch.tensor([1.0, 0.2])}
    usn_gate_penalty(gates, usn).backward()
    assert gates["a"].grad.tolist() == pytest.approx([0.0, 0.8])
