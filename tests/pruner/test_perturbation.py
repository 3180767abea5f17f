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


# ---- lighting families ----------------------------------------------------------------


@pytest.mark.parametrize("name, k", [("brightness_contrast", 2), ("channel_gain_bias", 6), ("channel_gain", 3)])
def test_apply_is_the_linear_map_of_the_directions(name, k, rng):
    """x'(theta) = clip(x + sum_i (theta_i - theta0_i) d_i(x), 0, 1), numpy and torch alike."""
    box = Box(0.3, 0.2, name)
    assert box.k == k and len(box.names) == k and box.contains(box.identity()).all()
    x = rng.random((4, 3, 5, 6))
    thetas = np.concatenate([box.identity(), box.corners()[:2], box.uniform(1, rng)])
    fam = perturbation.family(name)
    want = np.empty_like(x)
    for i in range(4):
        D, base = fam.directions_matrix(x[i])
        want[i] = np.clip(x[i].reshape(-1) + (thetas[i] - fam.identity) @ D, 0, 1).reshape(x[i].shape)
        np.testing.assert_allclose(base, 0.0, atol=1e-15)  # the built-in families have no offset
    np.testing.assert_allclose(perturbation.apply(x, thetas, name), want, atol=1e-12)
    got = perturbation.apply(torch.as_tensor(x), torch.as_tensor(thetas), name)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    np.testing.assert_array_equal(perturbation.apply(x, box.identity()[0], name), x)


def test_channel_families_act_per_channel():
    x = np.full((1, 3, 2, 2), 0.5)
    theta = np.array([[1.2, 1.0, 0.8, 0.1, 0.0, -0.1]])
    y = perturbation.apply(x, theta, "channel_gain_bias")
    np.testing.assert_allclose(y[0, :, 0, 0], [0.7, 0.5, 0.3])
    y = perturbation.apply(x, theta[:, :3], "channel_gain")
    np.testing.assert_allclose(y[0, :, 0, 0], [0.6, 0.5, 0.4])
    # brightness_contrast keeps its (c, b) parametrization bit for bit: c * x + b
    t = np.array([[1.1, 0.05]])
    np.testing.assert_array_equal(perturbation.apply(x, t), np.clip(1.1 * x + 0.05, 0, 1))
    with pytest.raises(ValueError, match="needs images"):
        perturbation.apply(np.zeros((1, 1, 2, 2)), theta, "channel_gain_bias")


def test_boxes_of_more_parameters_sample_corners_capped_and_the_identity(rng):
    box = Box(0.1, 0.05, "channel_gain_bias")
    np.testing.assert_array_equal(box.lower, [0.9] * 3 + [-0.05] * 3)
    corners = box.corners()
    assert corners.shape == (64, 6) and len({tuple(c) for c in corners}) == 64
    capped = box.corners(10)
    assert capped.shape == (10, 6) and len({tuple(c) for c in capped}) == 10
    assert {tuple(box.lower), tuple(box.upper)} <= {tuple(c) for c in capped}
    assert {tuple(c) for c in capped} <= {tuple(c) for c in corners}
    cal = box.calibration(16, rng)
    assert cal.shape == (16, 6) and box.contains(cal).all()
    np.testing.assert_array_equal(cal[0], box.identity()[0])
    assert sum(tuple(r) in {tuple(c) for c in corners} for r in cal) == 7  # max(4, 15 // 2) corners
    for name, n_max in (("channel_gain", 11**3), ("channel_gain_bias", 2000)):
        b = Box(0.1, 0.1, name)
        g = b.grid(11)
        assert len(g) <= n_max and b.contains(g).all()
        assert any(np.array_equal(r, b.identity()[0]) for r in g)
        assert {tuple(c) for c in b.corners()} <= {tuple(r) for r in g}
    assert Box(0.1, 0.1).grid(11).shape == (121, 2)  # k = 2: the full grid, as before


@pytest.mark.parametrize("kwargs, match", [
    ({"family": "hue"}, r"perturbation\.family: unknown family 'hue' \(known: brightness_contrast \(k=2\)"),
    ({"eps_b": -0.1}, r"eps_b: must be >= 0 \(a negative half-width leaves the box empty\)"),
    ({"eps_c": float("inf")}, "eps_c: expected a finite number"),
    ({"eps_b": 3.0}, "eps_b: must be <= 2"),
])
def test_bad_families_and_boxes(kwargs, match):
    args = {"eps_c": 0.1, "eps_b": 0.1, "family": "brightness_contrast", **kwargs}
    with pytest.raises(ConfigError, match=match):
        Box.make(**args)


def test_rgb_families_refuse_grayscale_networks():
    with pytest.raises(ConfigError, match="family channel_gain needs 3-channel .* the network takes 1 channel$"):
        Box(0.1, 0.1, "channel_gain").fam.check_channels(1, "export.perturbation.family")
    Box(0.1, 0.1).fam.check_channels(3, "x")  # brightness_contrast works on any image
