"""Structured pruning surgery: removing units yields a smaller dense network.

Removing unit j of a layer slices that layer's output weights, bias and BatchNorm entries,
and the next layer's input weights; when the next layer is the first Linear after the conv
stack, the ``feature_size**2`` flattened columns of each removed channel go with it. The
result equals the original network with those units' outputs forced to zero (tested).
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

    Gates, if enabled, are sliced along (not folded), so a gated schedule can continue.
    """
    idx = _check_keep(model, keep)
    names = model.arch.layer_names()
    arch = model.arch.with_widths({n: len(i) for n, i in idx.items()})
    new = KeypointNet(arch).to(model.head.weight.device)
    src = copy.deepcopy(model)
    n_conv = len(src.convs)
    fs2 = src.arch.feature_size ** 2
    # the input units each layer keeps: all inputs for the first layer
    prev: torch.Tensor | None = None
    for li, name in enumerate(names):
        out_idx = idx[name]
        if li < n_conv:
            conv, nconv = src.convs[li], new.convs[li]
            w = conv.weight[out_idx]
            if prev is not None:
                w = w[:, prev]
            nconv.weight.copy_(w)
            nconv.bias.copy_(conv.bias[out_idx])
            bn, nbn = src.conv_bns[li], new.conv_bns[li]
            if isinstance(bn, nn.BatchNorm2d):
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(nbn, attr).copy_(getattr(bn, attr)[out_idx])
                nbn.num_batches_tracked.copy_(bn.num_batches_tracked)
        else:
            fc, nfc = src.fcs[li - n_conv], new.fcs[li - n_conv]
            w = fc.weight[out_idx]
            w = _slice_inputs(w, prev, li == n_conv and n_conv > 0, fs2)
            nfc.weight.copy_(w)
            nfc.bias.copy_(fc.bias[out_idx])
        prev = out_idx
    head_w = _slice_inputs(src.head.weight, prev, len(src.fcs) == 0 and n_conv > 0, fs2)
    new.head.weight.copy_(head_w)
    new.head.bias.copy_(src.head.bias)
    new.out_scale.copy_(src.out_scale)
    if model.has_gates():
        gates = new.enable_gates()
        for name, g in gates.items():
            g.data.copy_(model.gate_params[name].data[idx[name]])
    new.train(model.training)
    return new


def _slice_inputs(w: torch.Tensor, prev: torch.Tensor | None, after_flatten: bool, fs2: int) -> torch.Tensor:
    if prev is None:
        return w
    if after_flatten:  # columns are channel-major blocks of fs2 features
        cols = (prev.view(-1, 1) * fs2 + torch.arange(fs2).view(1, -1)).reshape(-1)
        return w[:, cols]
    return w[:, prev]


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
