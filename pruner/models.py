"""Verification-friendly keypoint regressors and their checkpoint format.

A :class:`KeypointNet` is Conv2d -> [BatchNorm2d] -> ReLU blocks, an optional average pool,
Flatten, Linear -> ReLU blocks and a Linear head with ``2K`` outputs: the (u, v) pixel
coordinates of K keypoints. Only operators every verifier handles, no skip connections.

A *unit* (what pruning removes) is an output channel of a conv block or an output neuron of
a hidden fc block; the head is never pruned. Every unit can carry a *gate*, a multiplier on
its post-ReLU output, used by the progressive Wasserstein schedule and folded into the next
layer's weights at the end (:meth:`KeypointNet.fold_gates`).

A network is saved as (architecture config with every layer's width, state_dict), never as
a pickled module, so a pruned network can be rebuilt anywhere (:func:`save_checkpoint`,
:func:`load_checkpoint`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usnprune.config import ConfigError, from_dict, require, to_dict
from usnprune.errors import CheckpointError
from usnprune.files import atomic_write_bytes

CHECKPOINT_FORMAT = "usnprune-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "model.pt"  # what train and prune write into their output folder


def network_name(method: str | None, sparsity: float = 0.0, seed: int | str = 0) -> str:
    """A network's name everywhere (benchmark categories, result rows, tables, folders):
    ``dense-seed0`` for a trained network, ``usn_w-0.5-seed0`` for a pruned one."""
    if method in (None, "", "dense"):
        return f"dense-seed{seed}"
    return f"{method}-{float(sparsity):g}-seed{seed}"


@dataclasses.dataclass
class ConvSpec:
    out: int
    kernel: int = 3
    stride: int = 2
    padding: int = -1  # -1: kernel // 2

    def check(self, where: str) -> None:
        require(self.out >= 1, f"{where}.out", f"must be >= 1, got {self.out}")
        require(self.kernel >= 1, f"{where}.kernel", f"must be >= 1, got {self.kernel}")
        require(self.stride >= 1, f"{where}.stride", f"must be >= 1, got {self.stride}")

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding < 0 else self.padding


@dataclasses.dataclass
class ArchConfig:
    """Every width of a network; enough to rebuild it."""

    conv: list[ConvSpec]
    fc: list[int]
    input_size: int = 32
    in_channels: int = 1
    num_keypoints: int = 10
    pool: int = 1  # average-pool kernel (and stride) after the conv stack; 1 = none
    batchnorm: bool = True
    name: str = "custom"

    def check(self, where: str = "arch") -> None:
        require(self.input_size >= 4, f"{where}.input_size", f"must be >= 4, got {self.input_size}")
        require(self.in_channels >= 1, f"{where}.in_channels", "must be >= 1")
        require(self.num_keypoints >= 1, f"{where}.num_keypoints", f"must be >= 1, got {self.num_keypoints}")
        require(self.pool >= 1, f"{where}.pool", f"must be >= 1, got {self.pool}")
        for i, w in enumerate(self.fc):
            require(w >= 1, f"{where}.fc[{i}]", f"must be >= 1, got {w}")
        for i, c in enumerate(self.conv):
            c.check(f"{where}.conv[{i}]")
        s = self.feature_size
        require(s >= 1, where, f"the conv stack and pool reduce a {self.input_size}px input to nothing")

    @property
    def feature_size(self) -> int:
        s = self.input_size
        for c in self.conv:
            s = (s + 2 * c.pad - c.kernel) // c.stride + 1
        return s // self.pool

    @property
    def flat_features(self) -> int:
        ch = self.conv[-1].out if self.conv else self.in_channels
        return ch * self.feature_size**2

    def layer_names(self) -> list[str]:
        return [f"conv{i}" for i in range(len(self.conv))] + [f"fc{i}" for i in range(len(self.fc))]

    def widths(self) -> dict[str, int]:
        return dict(zip(self.layer_names(), [c.out for c in self.conv] + list(self.fc)))

    def with_widths(self, widths: dict[str, int]) -> "ArchConfig":
        new = copy.deepcopy(self)
        for i, c in enumerate(new.conv):
            c.out = int(widths.get(f"conv{i}", c.out))
        new.fc = [int(widths.get(f"fc{i}", w)) for i, w in enumerate(new.fc)]
        return new


def _arch(conv: list[int], fc: list[int], name: str, **kw: Any) -> ArchConfig:
    return ArchConfig(conv=[ConvSpec(c) for c in conv], fc=list(fc), name=name, **kw)


# Sizes for 32x32 inputs (three stride-2 convs: 32 -> 16 -> 8 -> 4). ``large`` is the
# over-parameterized network that pruning shrinks; ``xlarge`` is for the GPU presets.
REGISTRY: dict[str, tuple[list[int], list[int]]] = {
    "tiny": ([4, 8, 8], [32]),
    "small": ([8, 16, 16], [64]),
    "medium": ([16, 32, 32], [128]),
    "large": ([32, 64, 64], [256]),
    "xlarge": ([64, 128, 128], [512]),
}


def arch_from(spec: str | dict | ArchConfig, input_size: int | None = None, num_keypoints: int | None = None,
              where: str = "arch") -> ArchConfig:
    """An ArchConfig from a registry name, a mapping (YAML) or an ArchConfig."""
    if isinstance(spec, ArchConfig):
        arch = copy.deepcopy(spec)
    elif isinstance(spec, str):
        if spec not in REGISTRY:
            raise ConfigError(f"{where}: unknown architecture {spec!r} (known: {', '.join(REGISTRY)})")
        conv, fc = REGISTRY[spec]
        arch = _arch(conv, fc, spec)
    elif isinstance(spec, dict):
        d = dict(spec)
        if isinstance(d.get("conv"), list):
            d["conv"] = [{"out": c} if isinstance(c, int) and not isinstance(c, bool) else c for c in d["conv"]]
        arch = from_dict(ArchConfig, d, where)
    else:
        raise ConfigError(f"{where}: expected a registry name or a mapping, got {spec!r}")
    if input_size is not None:
        arch.input_size = int(input_size)
    if num_keypoints is not None:
        arch.num_keypoints = int(num_keypoints)
    arch.check(where)
    return arch


class KeypointNet(nn.Module):
    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        arch.check()
        self.arch = copy.deepcopy(arch)
        ch = arch.in_channels
        self.convs = nn.ModuleList()
        self.conv_bns = nn.ModuleList()
        for c in arch.conv:
            self.convs.append(nn.Conv2d(ch, c.out, c.kernel, c.stride, c.pad))
            self.conv_bns.append(nn.BatchNorm2d(c.out) if arch.batchnorm else nn.Identity())
            ch = c.out
        self.pool = nn.AvgPool2d(arch.pool) if arch.pool > 1 else nn.Identity()
        self.fcs = nn.ModuleList()
        d = arch.flat_features
        for w in arch.fc:
            self.fcs.append(nn.Linear(d, w))
            d = w
        self.head = nn.Linear(d, 2 * arch.num_keypoints)
        # Predictions are in pixels; the head works in units of the image size around its
        # centre, which keeps the regression well scaled. to_plain() folds this in.
        self.register_buffer("out_scale", torch.tensor(float(arch.input_size)))
        self.gates: dict[str, torch.Tensor] | None = None

    # ---- units and gates -------------------------------------------------------------

    def unit_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, module producing the units) for every prunable layer, in order."""
        return [(f"conv{i}", m) for i, m in enumerate(self.convs)] + [(f"fc{i}", m) for i, m in enumerate(self.fcs)]

    def widths(self) -> dict[str, int]:
        return self.arch.widths()

    def enable_gates(self) -> dict[str, nn.Parameter]:
        """Attach a trainable gate (initialised to 1) to every unit; returns them by layer."""
        dev = self.head.weight.device
        self.gate_params = nn.ParameterDict(
            {n: nn.Parameter(torch.ones(w, device=dev)) for n, w in self.widths().items()}
        )
        return dict(self.gate_params.items())

    def has_gates(self) -> bool:
        return hasattr(self, "gate_params")

    @torch.no_grad()
    def fold_gates(self) -> None:
        """Fold each gate into the next layer's input weights and drop the gates.

        The gate multiplies a unit's post-ReLU output; the layers after it (avg pool,
        flatten) are linear, so scaling the next layer's input columns is exact.
        """
        if not self.has_gates():
            return
        gates = {n: p.detach() for n, p in self.gate_params.items()}
        names = self.arch.layer_names()
        for i, name in enumerate(names):
            g = gates[name]
            nxt = self._next_layer(i)
            if isinstance(nxt, nn.Conv2d):
                nxt.weight.mul_(g.view(1, -1, 1, 1))
            else:
                per = nxt.weight.shape[1] // g.numel()  # features per channel after flatten
                nxt.weight.mul_(g.repeat_interleave(per).view(1, -1))
        del self.gate_params

    def _next_layer(self, i: int) -> nn.Module:
        layers = list(self.convs) + list(self.fcs) + [self.head]
        return layers[i + 1]

    # ---- forward ---------------------------------------------------------------------

    def features(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        """Everything before the head; ``hook(name, pre_activation)`` sees each unit layer."""
        gates = self.gate_params if self.has_gates() else None
        for i, (conv, bn) in enumerate(zip(self.convs, self.conv_bns)):
            z = bn(conv(x))
            if hook is not None:
                hook(f"conv{i}", z)
            x = torch.relu(z)
            if gates is not None:
                x = x * gates[f"conv{i}"].view(1, -1, 1, 1)
        x = torch.flatten(self.pool(x), 1)
        for i, fc in enumerate(self.fcs):
            z = fc(x)
            if hook is not None:
                hook(f"fc{i}", z)
            x = torch.relu(z)
            if gates is not None:
                x = x * gates[f"fc{i}"].view(1, -1)
        return x

    def forward(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        """Keypoint coordinates in pixels, ``[n, 2K]`` ordered (u0, v0, u1, v1, ...)."""
        s = self.out_scale
        return self.head(self.features(x, hook)) * s + s / 2

    # ---- plain form (for export and bounds) ------------------------------------------

    @torch.no_grad()
    def to_plain(self) -> nn.Sequential:
        """An equivalent eval-mode ``nn.Sequential`` of Conv2d/ReLU/AvgPool2d/Flatten/Linear
        with BatchNorm, gates and the output scaling folded in (float64 folding)."""
        net = copy.deepcopy(self).eval().double()
        net.fold_gates()
        layers: list[nn.Module] = []
        for conv, bn in zip(net.convs, net.conv_bns):
            w, b = conv.weight.clone(), conv.bias.clone()
            if isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w = w * scale.view(-1, 1, 1, 1)
                b = (b - bn.running_mean) * scale + bn.bias
            c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding).double()
            c.weight.copy_(w)
            c.bias.copy_(b)
            layers += [c, nn.ReLU()]
        if self.arch.pool > 1:
            layers.append(nn.AvgPool2d(self.arch.pool))
        layers.append(nn.Flatten())
        for fc in net.fcs:
            layers += [copy.deepcopy(fc), nn.ReLU()]
        head = copy.deepcopy(net.head)
        s = float(net.out_scale)
        head.weight.mul_(s)
        head.bias.mul_(s).add_(s / 2)
        layers.append(head)
        return nn.Sequential(*layers).float().eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("gate_params"))


def count_flops(arch: ArchConfig) -> int:
    """Multiply-accumulates of one forward pass (convs and linears; BN folded)."""
    macs = 0
    s, ch = arch.input_size, arch.in_channels
    for c in arch.conv:
        s = (s + 2 * c.pad - c.kernel) // c.stride + 1
        macs += s * s * c.out * ch * c.kernel * c.kernel
        ch = c.out
    d = arch.flat_features
    for w in list(arch.fc) + [2 * arch.num_keypoints]:
        macs += d * w
        d = w
    return macs


# ---- checkpoints ---------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: KeypointNet, meta: dict | None = None) -> Path:
    """Write (architecture config, state_dict, meta) atomically; a graph network
    (:class:`~.graphnet.GraphNet`) is written as a graph checkpoint."""
    if not isinstance(model, KeypointNet):
        from .graphnet import save_graph

        return save_graph(path, model, meta)
    if model.has_gates():
        raise ValueError("fold the gates before saving a checkpoint")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": to_dict(model.arch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    buf = io.BytesIO()  # serialized in memory: a full disk is then an OSError, and leaves no model.pt.tmp
    torch.save(blob, buf)
    return atomic_write_bytes(p, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[KeypointNet, dict]:
    """Rebuild a network from a checkpoint (ours, a graph checkpoint, or a user's
    ``module.path:factory[@state_dict.pt]``); every way it can fail is a CheckpointError."""
    from . import graphnet

    if graphnet.is_factory(str(path)):
        return graphnet.load_factory(str(path))
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        blob = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file (an empty one: an empty message)
        first = (str(e).strip().splitlines() or ["empty or truncated file"])[0][:120]
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    if isinstance(blob, dict) and blob.get("format") == graphnet.GRAPH_FORMAT:
        return graphnet.graph_from_blob(blob, str(p))
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a usnprune checkpoint (no 'format: {CHECKPOINT_FORMAT}')")
    if blob.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {blob.get('version')!r} is not supported (expected {CHECKPOINT_VERSION})")
    try:
        arch = arch_from(blob["arch"], where=f"{p}: arch")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = KeypointNet(arch)
    sd = blob.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{p}: checkpoint has no state_dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{p}: architecture does not match weights (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{p}: state_dict entry {k} is not a tensor")
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{p}: architecture does not match weights: {k} has shape {tuple(v.shape)}, "
                f"the architecture needs {tuple(own[k].shape)}"
            )
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{p}: weight {k} holds NaN or infinite values; refused")
    model.load_state_dict(sd)
    model.eval()
    return model, dict(blob.get("meta") or {})


def file_hash(path: str | Path, n: int = 12) -> str:
    """Short SHA-256 of a file (checkpoint identity in manifests); of a user factory spec,
    the spec text and its state_dict file."""
    h = hashlib.sha256()
    from .graphnet import FACTORY, is_factory

    if is_factory(str(path)):
        h.update(str(path).encode())
        weights = FACTORY.match(str(path)).group(3)
        path = weights if weights and Path(weights).is_file() else None
        if path is None:
            return h.hexdigest()[:n]
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def state_hash(model: nn.Module, n: int = 12) -> str:
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()[:n]
