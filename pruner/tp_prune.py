"""Structural pruning of any graph through Torch-Pruning's DependencyGraph.

Torch-Pruning (PyPI ``torch-pruning`` 1.6.1) traces a network once and couples every channel
space that must shrink together: a residual stream (every producer feeding an Add, and its
readers), the branches of a Concat, a depthwise conv's input and output, BatchNorm with its
conv, a Flatten into a Linear. Each such *dependency group* is one layer of units here:
``widths()`` maps a group's key (the name of its first conv/linear member, ``.`` written as
``/``) to its channel count, and the progressive schedule of :mod:`.prune` ranks, gates and
removes channels of groups exactly as it does units of a chain.

* The head (the last Conv2d/Linear the forward pass calls) is never pruned: its outputs are
  the keypoint coordinates.
* Groups holding a grouped conv that is not depthwise (1 < groups < in_channels) or a
  depthwise conv with a channel multiplier are not pruned: Torch-Pruning removes channels
  of such a conv correctly only when the same offset goes from every conv group, which
  our rankings do not guarantee (see /work/notes/torch_pruning.md section 1).
* Importances are Torch-Pruning importances scoring a whole group (one score per channel):
  ``random`` and ``magnitude`` are its ``RandomImportance`` and ``GroupMagnitudeImportance``
  (L1, mean over the group's layers); ``activation`` and ``usn`` score every module that
  produces the group's channels (BatchNorm, or a conv/linear without one) and average over
  the group (:class:`ProducerImportance`).
* Gates: one per channel of a group, multiplying the output of every producer of the group
  (so the whole channel, residual path included, scales with it); folding a gate scales the
  producer's weights and bias (BatchNorm: gamma and beta), which is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from usnprune.errors import ConfigError

from . import perturbation
from .importance.base import Calibration
from .importance.usn import usn_from_preactivations

OUT_FNS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels,
           tp.prune_linear_out_channels, tp.prune_batchnorm_out_channels)


@dataclasses.dataclass
class Group:
    key: str
    width: int
    prunable: bool
    root: nn.Module
    handler: object
    members: list  # (name, module, position in the group of each output channel), every out-channel member
    producers: list  # the members whose output carries the channel on (BatchNorm, or conv/linear without one)
    reason: str = ""


def head_module(net: nn.Module, arch) -> nn.Module:
    """The last Conv2d/Linear a forward pass calls: it emits the coordinates."""
    order = []
    hs = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in net.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            was = net.training
            dev = next(net.parameters()).device
            net.eval()(torch.zeros(1, arch.in_channels, arch.input_size, arch.input_size, device=dev))
            net.train(was)
    finally:
        for h in hs:
            h.remove()
    if not order:
        raise ConfigError("the network has no Conv2d or Linear layer to prune")
    return order[-1]


def build_graph(net: nn.Module) -> tp.DependencyGraph:
    arch = net.arch
    was = net.training
    x = torch.rand(1, arch.in_channels, arch.input_size, arch.input_size,
                   generator=torch.Generator().manual_seed(0)).to(next(net.parameters()).device)
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    net.train(was)  # build_dependency leaves the network in eval mode
    return dg


def dependency_groups(net: nn.Module, dg: tp.DependencyGraph | None = None) -> list[Group]:
    """The full dependency groups of ``net`` (head excluded), in a stable order."""
    dg = dg or build_graph(net)
    names = {m: n for n, m in net.named_modules()}
    head = head_module(net, net.arch)
    out = []
    for g in dg.get_all_groups(ignored_layers=[head], root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        width = len(g[0].idxs)
        members, reason = [], ""
        for item in g:
            mod = item.dep.target.module
            if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not (mod.groups == mod.in_channels == mod.out_channels):
                reason = f"{names.get(mod, '?')} is a grouped conv (groups={mod.groups})"
            if item.dep.handler in OUT_FNS and mod in names:
                pos = torch.full((_out_width(mod),), -1, dtype=torch.long)
                pos[torch.as_tensor(item.idxs)] = torch.as_tensor(item.root_idxs)
                members.append((names[mod], mod, pos))
        if not members:
            continue
        bns = {m for _, m, _ in members if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        producers = [(n, m, p) for n, m, p in members
                     if m in bns or not any(o.module in bns for o in dg.module2node[m].outputs)]
        key = min(n for n, m, _ in members if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)))
        key = key.removeprefix("body.").replace(".", "/")
        out.append(Group(key, width, not reason, g[0].dep.target.module, g[0].dep.handler, members, producers, reason))
    return sorted(out, key=lambda grp: grp.key)


def _out_width(m: nn.Module) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    return m.num_features


def _view(pos_vals: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return pos_vals.view(1, -1, *([1] * (out.ndim - 2)))


# ---- importances --------------------------------------------------------------------


class ProducerImportance(tp.importance.Importance):
    """A Torch-Pruning importance from per-channel scores of the modules producing a group:
    one score per channel of the group, the mean over the producers carrying it."""

    def __init__(self, scores: dict[nn.Module, torch.Tensor]) -> None:
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        n = len(group[0].idxs)
        acc, cnt = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for item in group:
            s = self.scores.get(item.dep.target.module)
            if s is None or item.dep.handler not in OUT_FNS:
                continue
            pos = torch.as_tensor(item.root_idxs)
            acc.index_add_(0, pos, s[torch.as_tensor(item.idxs)].double())
            cnt.index_add_(0, pos, torch.ones(len(pos), dtype=torch.float64))
        return None if cnt.sum() == 0 else acc / cnt.clamp(min=1)


@torch.no_grad()
def _producer_outputs(net, calib: Calibration, groups: list[Group], reduce, batch: int = 4096) -> dict:
    """``reduce(output [n, C, ...]) -> [n, C]`` of every producer over the calibration pairs,
    stacked: ``{module: [pairs, C]}``."""
    mods = {m for g in groups for _, m, _ in g.producers}
    chunks: dict[nn.Module, list] = {m: [] for m in mods}
    hs = [m.register_forward_hook(lambda m, i, o: chunks[m].append(reduce(o).double().cpu())) for m in mods]
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    per = max(1, batch // len(calib.thetas))
    try:
        for i in range(0, len(calib.images), per):
            net(perturbation.pairs(calib.images[i: i + per], calib.thetas, calib.box).to(dev))
    finally:
        for h in hs:
            h.remove()
        net.train(was)
    return {m: torch.cat(c) for m, c in chunks.items()}


def _spatial_mean(o: torch.Tensor) -> torch.Tensor:
    return o.mean(dim=tuple(range(2, o.ndim))) if o.ndim > 2 else o


class GraphImportance:
    """``imp(net, calib) -> {group key: scores}`` for the prunable groups of a GraphNet, the
    same contract as :mod:`.importance` has for chains."""

    def __init__(self, name: str) -> None:
        if name not in ("random", "magnitude", "activation", "usn"):
            raise ConfigError(f"unknown importance {name!r} (known: random, magnitude, activation, usn)")
        self.name = name
        self.comparable = name in ("usn", "random")

    def tp_importance(self, net, calib: Calibration, groups: list[Group]) -> tp.importance.Importance:
        if self.name == "random":
            return tp.importance.RandomImportance()
        if self.name == "magnitude":
            return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
        if self.name == "activation":
            out = _producer_outputs(net, calib, groups, lambda o: _spatial_mean(torch.relu(o)))
            return ProducerImportance({m: v.mean(0) for m, v in out.items()})
        m = len(calib.thetas)
        out = _producer_outputs(net, calib, groups, _spatial_mean)  # pre-activations (before the ReLU)
        return ProducerImportance({mod: torch.as_tensor(usn_from_preactivations(v.view(-1, m, v.shape[-1]))["usn"])
                                   for mod, v in out.items()})

    def __call__(self, net, calib: Calibration) -> dict[str, np.ndarray]:
        dg = build_graph(net)
        groups = [g for g in dependency_groups(net, dg) if g.prunable]
        imp = self.tp_importance(net, calib, groups)
        full = {id(g.root): g for g in groups}
        scores = {}
        for tg in dg.get_all_groups(ignored_layers=[head_module(net, net.arch)],
                                    root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
            g = full.get(id(tg[0].dep.target.module))
            if g is not None:
                s = imp(tg)
                scores[g.key] = (np.zeros(g.width) if s is None else s.detach().double().cpu().numpy())
        return scores


# ---- gates --------------------------------------------------------------------------


def gate_name(key: str) -> str:
    return key.replace("/", "__")  # ParameterDict keys take no '.', and we keep '/' out too


def enable_gates(net) -> dict[str, nn.Parameter]:
    """One gate per channel of every prunable group (initialised to 1), keyed like widths()."""
    groups = [g for g in dependency_groups(net) if g.prunable]
    dev = next(net.parameters()).device
    net.gate_params = nn.ParameterDict({gate_name(g.key): nn.Parameter(torch.ones(g.width, device=dev))
                                        for g in groups})
    net.gate_groups = groups
    for g in groups:
        for _, mod, pos in g.producers:
            def hook(m, i, o, k=gate_name(g.key), pos=pos.to(dev)):
                return o * _view(net.gate_params[k][pos], o)

            net.gate_hooks.append(mod.register_forward_hook(hook))
    return {g.key: net.gate_params[gate_name(g.key)] for g in groups}


@torch.no_grad()
def fold_gates(net) -> None:
    """Scale each producer's weights and bias by its channels' gates; drop the gates."""
    if not net.has_gates():
        return
    for h in net.gate_hooks:
        h.remove()
    net.gate_hooks = []
    for g in net.gate_groups:
        gate = net.gate_params[gate_name(g.key)].detach()
        for _, mod, pos in g.producers:
            s = gate[pos.to(gate.device)]
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.weight is None:
                    raise ConfigError("a BatchNorm without affine parameters cannot carry a gate")
                mod.weight.mul_(s)
                mod.bias.mul_(s)
            else:
                mod.weight.mul_(s.view(-1, *([1] * (mod.weight.ndim - 1))))
                if mod.bias is not None:
                    mod.bias.mul_(s)
    del net.gate_params
    del net.gate_groups


# ---- removing channels --------------------------------------------------------------


def prune_groups(net, remove: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove the listed channels (group numbering) of each group, in place; returns what
    was removed: a member that would lose every channel (a Concat branch whose channels
    all ranked low) keeps its last listed one, so the group stays a valid network."""
    dg = build_graph(net)
    groups = {g.key: g for g in dependency_groups(net, dg)}
    done = {}
    for key, idx in remove.items():
        idx = sorted(int(i) for i in np.asarray(idx).reshape(-1))
        g = groups[key]
        for _, _, pos in g.members:
            own = set(pos.tolist())
            if own <= set(idx):
                idx.remove(max(own))
        done[key] = np.asarray(idx, dtype=np.int64)
        if not idx:
            continue
        if not g.prunable:
            raise ConfigError(f"group {key} cannot be pruned: {g.reason}")
        pg = dg.get_pruning_group(g.root, g.handler, idxs=idx)
        if not dg.check_pruning_group(pg):
            raise ConfigError(f"group {key} would lose every channel; every group keeps at least one")
        pg.prune()
    return done


@torch.no_grad()
def zero_groups(net, remove: dict[str, np.ndarray]):
    """Force the listed channels to exactly zero at every member producing them (conv/linear
    rows and bias, BatchNorm gamma and beta): the reference a pruned network must equal."""
    groups = {g.key: g for g in dependency_groups(net)}
    for key, idx in remove.items():
        chosen = torch.as_tensor(np.asarray(idx, dtype=np.int64).reshape(-1))
        for _, mod, pos in groups[key].members:
            rows = torch.nonzero(torch.isin(pos, chosen)).view(-1)
            mod.weight[rows] = 0
            if mod.bias is not None:
                mod.bias[rows] = 0
    return net
