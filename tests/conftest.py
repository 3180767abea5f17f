"""Shared fixtures: a small real dataset and briefly trained networks, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("USNPRUNE_NO_PROGRESS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic aircraft dataset (32x32)."""
    from usnprune.pruner.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, n_train=400, n_test=40, seed=0, size=32, progress=False)
    return out


def _train(data, arch, epochs, seed, out):
    from usnprune.config import from_dict
    from usnprune.pruner.train import TrainConfig, train

    cfg = from_dict(TrainConfig, {"data": str(data), "out": str(out), "arch": arch, "seed": seed,
                                  "optim": {"epochs": epochs, "batch_size": 32, "lr": 3e-3}})
    train(cfg, log=lambda s: None)
    return out / "model.pt"


@pytest.fixture(scope="session")
def small_checkpoint(synth_data, tmp_path_factory):
    """A briefly trained 'small' network (~21k parameters): trained-like weights for tests."""
    return _train(synth_data, "small", 3, 0, tmp_path_factory.mktemp("train_small"))


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_data, tmp_path_factory):
    return _train(synth_data, "tiny", 2, 1, tmp_path_factory.mktemp("train_tiny"))


@pytest.fixture
def one_torch_thread():
    """Train and prune in the test process on one thread. These networks are too small for
    OpenMP hand-offs to pay: on the shared 2-core machine under load, 20 Adam steps of the
    tiny network took 4-12 s with 2 threads against 0.9-1.6 s with one (the verify workers
    set their own threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
