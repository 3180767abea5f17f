import numpy as np
import pytest
import torch

from usnprune.errors import ConfigError
from usnprune.pruner import perturbation
from usnprune.pruner.perturbation import Box


def test_apply_matches_formula_numpy_and_torch(rng):
    x = rng.random((3, 1, 4, 4))
    theta = np.array([[1.1, 0.05], [0.9, -0.1], [1.0, 0.0]])
    want = np.clip(theta[:, 0, None, None, None] * x + theta[:, 1, None, None, None], 0, 1)
    np.testing.assert_allclose(perturbation.apply(x, theta), want)
    got = perturbation.apply(torch.as_tensor(x), torch.as_tensor(theta))
    np.testing.assert_allclose(got.numpy(), want)


def test_identity_leaves_images_unchanged(rng):
    x = rng.random((2, 1, 5, 5))
    np.testing.assert_array_equal(perturbation.apply(x, np.array(perturbation.IDENTITY)), x)


def test_sampling_stays_in_box_and_includes_corners_and_identity(rng):
    box = Box(0.2, 0.05)
    cal = box.calibration(20, rng)
    assert cal.shape == (20, 2)
    np.testing.assert_array_equal(cal[0], [1.0, 0.0])
    assert {tuple(r) for r in box.corners()} <= {tuple(r) for r in cal}
    assert box.contains(cal).all()
    assert box.contains(box.uniform(1000, rng)).all()
    g = box.grid(5)
    assert len(g) == 25 and box.contains(g).all() and any(np.allclose(r, [1, 0]) for r in g)


def test_pairs_layout_is_image_major(rng):
    x = torch.as_tensor(rng.random((2, 1, 3, 3)), dtype=torch.float32)
    thetas = np.array([[1.0, 0.0], [1.1, 0.1], [0.9, -0.1]])
    p = perturbation.pairs(x, thetas)
    assert p.shape == (6, 1, 3, 3)
    torch.testing.assert_close(p[4], perturbation.apply(x[1:2], thetas[1])[0])


def test_augment_uses_the_box():
    x = torch.full((500, 1, 2, 2), 0.5)
    y = perturbation.augment(x, Box(0.1, 0.1), torch.Generator().manual_seed(0))
    assert float(y.min()) >= 0.5 * 0.9 - 0.1 - 1e-6 and float(y.max()) <= 0.5 * 1.1 + 0.1 + 1e-6
    assert float(y.std()) > 0.01


@pytest.mark.parametrize("eps_c, eps_b, match", [(1.0, 0.1, "eps_c"), (1.5, 0.1, "eps_c"), (-0.1, 0.1, "eps_c"),
                                                 (0.1, -0.2, "eps_b"), (float("nan"), 0.1, "eps_c")])
def test_bad_boxes_are_rejected(eps_c, eps_b, match):
    with pytest.raises(ConfigError, match=match):
        Box.make(eps_c, eps_b)
