"""Shared fixtures for the verifier tests: seeded keypoint networks and their instances."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# keypoint_nets.py sits next to this file; make it importable under any pytest import mode
sys.path.insert(0, str(Path(__file__).parent))

import keypoint_nets  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The builtin sets its own thread count; everything else in these tests runs on one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def images():
    imgs, _ = keypoint_nets.synthetic(4, 32, seed=123)
    return imgs


@pytest.fixture(scope="session")
def nets():
    """Random and briefly trained 32x32 keypoint networks, by name."""
    return {
        "random-tiny-0": keypoint_nets.random_net("tiny", seed=0),
        "random-small-1": keypoint_nets.random_net("small", seed=1),
        "trained-tiny-2": keypoint_nets.trained_net("tiny", steps=150, seed=2),
        "trained-small-3": keypoint_nets.trained_net("small", steps=150, seed=3),
    }


@pytest.fixture(scope="session")
def attack_points():
    """The dense attack on a (c, b) box: a 101 x 101 grid plus 2000 uniform points."""
    from usnprune.pruner.perturbation import Box

    box = Box(0.1, 0.1)
    return np.concatenate([box.grid(101), box.uniform(2000, np.random.default_rng(7))])
