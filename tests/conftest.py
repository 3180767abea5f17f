"""Shared fixtures: small real networks and datasets, built once per session."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("USNPRUNE_NO_PROGRESS", "1")
torch.set_num_threads(2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
