"""Structured pruning of chains: removing units yields a smaller dense network.

Removing unit j of a layer removes that layer's output weights, bias and BatchNorm entries,
and the next layer's input weights; when the next layer is the first Linear after the conv
stack, the ``feature_size**2`` flattened columns of each removed channel go with it. Since
issue 13 Torch-Pruning does the slicing (it reproduced our former hand-written surgery
exactly: same parameter counts, same function, on every chain registry model); this module
keeps the chain's bookkeeping (unit names, widths in the architecture config) and
:func:`zero_units`, the reference. The result equals the original network with those units'
outputs forced to zero (tested).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from usnprune.errors import ConfigError

from .models import KeypointNet


def _check_keep(model: KeypointNet, keep: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    widths = model.widths()
    out = {}
    for name, w in widths.items():
        idx = np.asarray(keep.get(name, np.arange(w)), dtype=np.int64)
        idx = np.unique(idx)
        if len(idx) < 1:
            raise ConfigError(f"layer {name} would keep no unit; every layer must keep at least one")
        if idx.min() < 0 or idx.max() >= w:
            raise ValueError(f"layer {name}: unit index out of range 0..{w - 1}")
        out[name] = torch.as_tensor(idx)
    unknown = set(keep) - set(widths)
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}")
    return out


@torch.no_grad()
def prune_units(model: KeypointNet, keep: dict[str, np.ndarray]) -> KeypointNet:
    """A new, smaller KeypointNet that keeps only the listed units of each layer.

    The channels go through Torch-Pruning's dependency graph (:mod:`.tp_prune`), the one
    pruning path of every network: on a chain each layer is its own group (its conv or
    linear, its BatchNorm, the next layer's inputs, the flattened columns of each channel).
    Gates, if enabled, are sliced along (not folded), so a gated schedule can continue.
    """
    from .tp_prune import prune_groups

    idx = _check_keep(model, keep)
    widths = model.widths()
    new = copy.deepcopy(model)
    gates = {n: p.detach().clone() for n, p in new.gate_params.items()} if new.has_gates() else None
    if gates is not None:
        del new.gate_params  # not part of the graph Torch-Pruning traces
    n_conv = len(model.convs)
    remove = {(f"convs/{i}" if i < n_conv else f"fcs/{i - n_conv}"): np.setdiff1d(np.arange(widths[n]), idx[n].numpy())
              for i, n in enumerate(model.arch.layer_names())}
    prune_groups(new, remove)
    new.arch = model.arch.with_widths({n: len(i) for n, i in idx.items()})
    if gates is not None:
        for name, g in new.enable_gates().items():
            g.data.copy_(gates[name][idx[name].to(gates[name].device)])
    new.train(model.training)
    return new


@torch.no_grad()
def zero_units(model: KeypointNet, remove: dict[str, np.ndarray]) -> KeypointNet:
    """A copy whose listed units output zero (their outgoing weights zeroed): the reference
    the pruned network must equal."""
    new = copy.deepcopy(model)
    names = new.arch.layer_names()
    layers = list(new.convs) + list(new.fcs) + [new.head]
    fs2 = new.arch.feature_size ** 2
    n_conv = len(new.convs)
    for li, name in enumerate(names):
        r = torch.as_tensor(np.asarray(remove.get(name, []), dtype=np.int64))
        if len(r) == 0:
            continue
        nxt = layers[li + 1]
        if li == n_conv - 1 and isinstance(nxt, nn.Linear):
            cols = (r.view(-1, 1) * fs2 + torch.arange(fs2).view(1, -1)).reshape(-1)
            nxt.weight[:, cols] = 0
        else:
            nxt.weight[:, r] = 0
    return new


def keep_from_remove(widths: dict[str, int], remove: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: np.setdiff1d(np.arange(w), np.asarray(remove.get(n, []), dtype=np.int64)) for n, w in widths.items()}
