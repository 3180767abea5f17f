"""Keypoint networks with any graph: the residual registry models and user models.

A :class:`GraphNet` wraps any ``nn.Module`` that maps images ``[N, C, H, W]`` in [0, 1] to
keypoint pixel coordinates, ``[N, 2K]`` (u0, v0, u1, v1, ...) or ``[N, K, 2]``; it carries
``arch`` (input size, channels, keypoint count) like :class:`~.models.KeypointNet`, so
train, eval, prune and export take either. Its prunable units are the channels of its
Torch-Pruning dependency groups (:mod:`.tp_prune`).

Where it comes from:

* a registry name ``res_tiny``/``res_small``/``res_medium``/``res_large``: :class:`ResKeypointNet`, a small
  ResNet (conv stem + BatchNorm + ReLU + MaxPool, BasicBlocks with Add skips and 1x1
  downsample branches, Flatten, Linear, head), RGB or gray, 64x64 by default;
* a user's ``module.path:factory[@state_dict.pt]``: the module is imported (the current
  folder first, as ``python -m`` does), ``factory()`` called with no arguments, the
  state_dict loaded strictly. The module may say ``input_size`` (default 64) and
  ``in_channels`` (default: its first Conv2d's);
* a graph checkpoint (``format: usnprune-graph``): written by train and prune for these
  networks, the module stored through torch.fx (:mod:`.fxsave`), so it rebuilds without the
  user's source.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import io
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from usnprune.config import to_dict
from usnprune.errors import CheckpointError, ConfigError
from usnprune.files import atomic_write_bytes

from . import fxsave

GRAPH_FORMAT = "usnprune-graph"
GRAPH_VERSION = 1
DEFAULT_INPUT_SIZE = 64
FACTORY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)(?:@(.+))?$")


@dataclasses.dataclass
class GraphArch:
    input_size: int
    in_channels: int
    num_keypoints: int
    name: str = "graph"


# stem width, the three stages' widths, hidden fc width
RES_REGISTRY: dict[str, tuple[int, list[int], int]] = {
    "res_tiny": (8, [8, 16, 16], 32),
    "res_small": (16, [16, 32, 32], 64),
    "res_medium": (32, [32, 64, 64], 128),
    "res_large": (32, [64, 128, 128], 256),
}


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the input (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.down(x))


class ResKeypointNet(nn.Module):
    """The residual registry architecture: stem (3x3/2 conv, BN, ReLU, 3x3/2 MaxPool), three
    BasicBlocks (strides 1, 2, 2), Flatten, Linear-ReLU, head; outputs pixels like KeypointNet
    (the head works in image-size units around the centre)."""

    def __init__(self, stem: int, stages: list[int], fc: int, num_keypoints: int, in_channels: int = 3,
                 input_size: int = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], stem
        for i, w in enumerate(stages):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        s = input_size
        for _ in range(2 + len(stages) - 1):  # stem conv, max pool, strided blocks
            s = (s - 1) // 2 + 1
        self.fc = nn.Linear(cin * s * s, fc)
        self.head = nn.Linear(fc, 2 * num_keypoints)
        self.register_buffer("out_scale", torch.tensor(float(input_size)))

    def forward(self, x):
        x = torch.flatten(self.blocks(self.stem(x)), 1)
        s = self.out_scale
        return self.head(torch.relu(self.fc(x))) * s + s / 2


def res_net(name: str, input_size: int, in_channels: int, num_keypoints: int) -> "GraphNet":
    stem, stages, fc = RES_REGISTRY[name]
    body = ResKeypointNet(stem, stages, fc, num_keypoints, in_channels, input_size)
    return GraphNet(body, GraphArch(input_size, in_channels, num_keypoints, name))


class GraphNet(nn.Module):
    def __init__(self, body: nn.Module, arch: GraphArch, flatten_output: bool = False) -> None:
        super().__init__()
        self.body = body
        self.arch = arch
        self.flatten_output = bool(flatten_output)  # [N, K, 2] -> [N, 2K]; a bool, so fx can trace it
        self.gate_hooks: list = []

    def forward(self, x):
        y = self.body(x)
        if self.flatten_output:
            y = torch.flatten(y, 1)
        return y

    def has_gates(self) -> bool:
        return hasattr(self, "gate_params")

    def enable_gates(self) -> dict:
        from .tp_prune import enable_gates

        return enable_gates(self)

    def fold_gates(self) -> None:
        from .tp_prune import fold_gates

        fold_gates(self)

    def widths(self) -> dict[str, int]:
        from .tp_prune import dependency_groups

        return {g.key: g.width for g in dependency_groups(self) if g.prunable}

    def to_plain(self) -> "GraphNet":
        """An eval-mode float copy (what export and the parity check run)."""
        if self.has_gates():
            raise ValueError("fold the gates before exporting")
        return copy.deepcopy(self).float().eval()


def count_macs(net: nn.Module, arch) -> int:
    """Multiply-accumulates of one forward pass of the convs and linears (a probe forward)."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])
        else:
            macs.append(out[0].numel() * m.in_features)

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            was = net.training
            net.eval()(torch.zeros(1, arch.in_channels, arch.input_size, arch.input_size))
            net.train(was)
    finally:
        for h in hs:
            h.remove()
    return int(sum(macs))


# ---- user factories ---------------------------------------------------------------------


def is_factory(spec) -> bool:
    return isinstance(spec, str) and FACTORY.match(spec) is not None and not Path(spec).exists()


def _first(e: BaseException) -> str:
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:160]


def load_factory(spec: str, input_size: int | None = None) -> tuple[GraphNet, dict]:
    """``module.path:factory[@state_dict.pt]`` -> (GraphNet, meta); every failure one line."""
    mod_name, fn_name, weights = FACTORY.match(spec).groups()
    if os.getcwd() not in sys.path:  # the user's module next to where they run usnprune
        sys.path.insert(0, os.getcwd())
    was, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ left in the user's folder
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise CheckpointError(f"{spec}: cannot import {mod_name} ({_first(e)})") from None
    finally:
        sys.dont_write_bytecode = was
    factory = getattr(mod, fn_name, None)
    if not callable(factory):
        raise CheckpointError(f"{spec}: {mod_name} has no callable {fn_name}")
    try:
        body = factory()
    except Exception as e:
        raise CheckpointError(f"{spec}: the factory raised {_first(e)}") from None
    if not isinstance(body, nn.Module):
        raise CheckpointError(f"{spec}: the factory returned {type(body).__name__}, not a torch.nn.Module")
    if weights:
        _load_state(body, spec, weights)
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    channels = int(getattr(body, "in_channels", convs[0].in_channels if convs else 0))
    size = int(getattr(body, "input_size", input_size or DEFAULT_INPUT_SIZE))
    if channels < 1:
        raise CheckpointError(f"{spec}: the module has no Conv2d and no in_channels attribute; set in_channels")
    net = wrap(body, spec, size, channels, name=fn_name)
    return net, {"method": "dense", "sparsity": 0.0, "source": spec}


def _load_state(body: nn.Module, spec: str, weights: str) -> None:
    p = Path(weights)
    if not p.is_file():
        raise CheckpointError(f"{spec}: no such state_dict file {weights}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{spec}: {weights} is not a readable state_dict ({_first(e)})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{spec}: {weights} holds no state_dict (a mapping of names to tensors)")
    own = body.state_dict()
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(f"{spec}: the state_dict {weights} does not fit the factory's module "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{spec}: the state_dict {weights} does not fit the factory's module: {k} has "
                                  f"shape {tuple(v.shape)}, the module needs {tuple(own[k].shape)}")
    body.load_state_dict(sd)


def wrap(body: nn.Module, what: str, size: int, channels: int, name: str = "graph") -> GraphNet:
    """A GraphNet around ``body``, after one probe forward that fixes the keypoint count."""
    was = body.training
    try:
        with torch.no_grad():
            y = body.eval()(torch.zeros(2, channels, size, size))
    except Exception as e:
        raise CheckpointError(f"{what}: the module fails on a [2, {channels}, {size}, {size}] input ({_first(e)})") from None
    finally:
        body.train(was)
    if not isinstance(y, torch.Tensor) or not (y.ndim == 2 and y.shape[1] % 2 == 0 and y.shape[1] > 0
                                                or y.ndim == 3 and y.shape[2] == 2):
        shape = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise CheckpointError(f"{what}: the module's output {shape} is not [N, 2K] or [N, K, 2] keypoint coordinates")
    k = y.shape[1] // 2 if y.ndim == 2 else y.shape[1]
    return GraphNet(body, GraphArch(size, channels, int(k), name), flatten_output=y.ndim == 3)


# ---- graph checkpoints ------------------------------------------------------------------


def save_graph(path: str | Path, net: GraphNet, meta: dict | None = None) -> Path:
    if net.has_gates():
        raise ValueError("fold the gates before saving a checkpoint")
    blob = {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, "arch": to_dict(net.arch),
            "flatten_output": net.flatten_output, "module": fxsave.to_blob(net.body, str(path)),
            "meta": dict(meta or {})}
    buf = io.BytesIO()
    torch.save(blob, buf)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(p, buf.getvalue())


def graph_from_blob(blob: dict, where: str) -> tuple[GraphNet, dict]:
    if blob.get("version") != GRAPH_VERSION:
        raise CheckpointError(f"{where}: graph checkpoint version {blob.get('version')!r} is not supported")
    try:
        arch = GraphArch(**blob["arch"])
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{where}: graph checkpoint has no valid arch ({e})") from None
    body = fxsave.from_blob(blob.get("module"), where)
    for k, v in body.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: weight {k} holds NaN or infinite values; refused")
    net = GraphNet(body, arch, bool(blob.get("flatten_output")))
    return net.eval(), dict(blob.get("meta") or {})


def check_registry_name(name: str, where: str) -> None:
    if name not in RES_REGISTRY:
        raise ConfigError(f"{where}: unknown residual architecture {name!r} (known: {', '.join(RES_REGISTRY)})")
