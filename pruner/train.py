"""Training keypoint regressors, with brightness/contrast augmentation.

``fit`` is the one training loop: plain training, the pruning schedule's regularized
training and its fine-tuning all go through it (the pruning side passes ``extra_loss``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from usnprune.config import from_dict, require, to_dict
from usnprune.errors import ConfigError, UsnpruneError
from usnprune.files import OutputFolder
from usnprune.progress import bar as progress_bar

from . import perturbation
from .data.source import DataSource
from .models import (
    CHECKPOINT_NAME,
    REGISTRY,
    KeypointNet,
    arch_from,
    count_parameters,
    save_checkpoint,
)

OUTPUTS = (CHECKPOINT_NAME, "train_metrics.json", "history.csv")  # what train writes into its out folder


class TrainingError(UsnpruneError):
    """Training produced something that must not be saved (NaN weights)."""


@dataclasses.dataclass
class AugmentConfig:
    """Lighting augmentation: one uniform perturbation per image from this box (of its family)."""

    perturbation: perturbation.Box = dataclasses.field(default_factory=lambda: perturbation.Box(0.2, 0.2))
    prob: float = 1.0  # share of images in a batch that get perturbed

    def check(self, where: str) -> None:
        require(0.0 <= self.prob <= 1.0, f"{where}.prob", f"must be in [0, 1], got {self.prob}")


@dataclasses.dataclass
class OptimConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.5

    def check(self, where: str) -> None:
        require(self.epochs >= 0, f"{where}.epochs", f"must be >= 0, got {self.epochs}")
        require(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"{where}.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"{where}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_epochs >= 0, f"{where}.warmup_epochs", "must be >= 0")


@dataclasses.dataclass
class TrainConfig:
    data: str | DataSource  # dataset folder, or COCO files per split (docs/dataset.md)
    out: str  # output folder: model.pt, train_metrics.json, history.csv
    arch: Any = "large"  # registry name (tiny, small, medium, large, xlarge) or a mapping
    input_size: int = 32
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    seed: int = 0
    device: str = "cpu"
    max_train: int | None = None  # use at most this many training samples
    eval_deltas: list[float] = dataclasses.field(default_factory=lambda: [1.0, 2.0])

    def check(self, where: str) -> None:
        require(self.input_size >= 8, f"{where}.input_size", f"must be >= 8, got {self.input_size}")
        require(self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"),
                f"{where}.device", f"must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        for d in self.eval_deltas:
            require(d > 0, f"{where}.eval_deltas", f"every delta must be > 0, got {d}")
        if self.max_train is not None:
            require(self.max_train >= 1, f"{where}.max_train", "must be >= 1")


def resolve_device(name: str, where: str = "device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: {name!r}, but torch sees no CUDA device here (use cpu or auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"{where}: {name!r}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def check_finite(model: nn.Module, what: str, hint: str) -> None:
    """Refuse a network with a NaN or infinite weight (a diverged training): ``hint`` says
    which setting to change."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingError(f"{what}: the weights became NaN or infinite ({name}); nothing was saved. {hint}")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def label_mask(ds) -> np.ndarray:
    """Keypoints with a location (COCO flag >= 1: visible or occluded but labelled)."""
    return np.asarray(ds.flags) >= 1


def keypoint_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, size: float) -> torch.Tensor:
    """Smooth-L1 in units of the image size over labelled keypoints.

    ``pred``: ``[n, 2K]``; ``target``: ``[n, K, 2]``; ``mask``: ``[n, K]``.
    """
    p = pred.view(pred.shape[0], -1, 2)
    err = nn.functional.smooth_l1_loss(p / size, target / size, reduction="none", beta=0.01).sum(-1)
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def lr_at(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier on the base learning rate."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
    return 0.1 ** int(t * 3)  # step: /10 at 1/3 and 2/3


def fit(
    model: KeypointNet,
    images: torch.Tensor,
    keypoints: torch.Tensor,
    mask: torch.Tensor,
    optim: OptimConfig,
    augment: AugmentConfig | None,
    generator: torch.Generator,
    device: torch.device = torch.device("cpu"),
    extra_loss: Callable[[KeypointNet], torch.Tensor] | None = None,
    extra_params: list[nn.Parameter] | None = None,
    extra_lr: float | None = None,
    desc: str = "train",
    on_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place; returns one history row per epoch.

    ``extra_loss(model)`` is added to every batch's task loss (the pruning regularizers);
    ``extra_params`` are optimized too (the gates), without weight decay and with their own
    base learning rate ``extra_lr`` (same schedule).
    """
    model.to(device).train()
    n = images.shape[0]
    size = float(model.arch.input_size)
    params = [p for name, p in model.named_parameters() if not name.startswith("gate_params")]
    groups = [{"params": params, "weight_decay": optim.weight_decay}]
    if extra_params:
        groups.append({"params": list(extra_params), "weight_decay": 0.0, "base_lr": extra_lr or optim.lr})
    opt = torch.optim.AdamW(groups, lr=optim.lr)
    steps_per_epoch = max(1, math.ceil(n / optim.batch_size))
    total = optim.epochs * steps_per_epoch
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    box = augment.perturbation if augment else None
    history: list[dict] = []
    step = 0
    bar = progress_bar(total, desc, unit="step")
    for epoch in range(optim.epochs):
        perm = torch.randperm(n, generator=generator)
        sums = {"loss": 0.0, "task": 0.0, "extra": 0.0}
        for i in range(0, n, optim.batch_size):
            idx = perm[i : i + optim.batch_size]
            x = images[idx].to(device)
            if box is not None:
                xa = perturbation.augment(x, box, generator)
                if augment.prob < 1.0:
                    keep = (torch.rand(len(idx), generator=generator) >= augment.prob).to(device)
                    xa = torch.where(keep.view(-1, 1, 1, 1), x, xa)
                x = xa
            for g in opt.param_groups:
                g["lr"] = g.get("base_lr", optim.lr) * lr_at(step, total, warmup, optim.schedule)
            task = keypoint_loss(model(x), keypoints[idx].to(device), mask[idx].to(device), size)
            extra = extra_loss(model) if extra_loss is not None else torch.zeros((), device=device)
            loss = task + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            w = len(idx) / n
            sums["loss"] += float(loss.detach()) * w
            sums["task"] += float(task.detach()) * w
            sums["extra"] += float(extra.detach()) * w
            step += 1
            bar.update(1)
        row = {"epoch": epoch + 1, **sums, "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        bar.set_postfix(loss=f"{sums['task']:.4f}")
        if on_epoch:
            on_epoch(epoch, row)
    bar.close()
    model.eval()
    return history


def build_network(spec: Any, input_size: int, channels: int, keypoints: int, where: str = "train.arch") -> nn.Module:
    """A fresh network: a chain registry name or mapping (KeypointNet), a residual registry
    name (``res_*``), or a user's ``module.path:factory[@state_dict.pt]``."""
    from .graphnet import RES_REGISTRY, is_factory, load_factory, res_net

    if isinstance(spec, str) and spec in RES_REGISTRY:
        return res_net(spec, input_size, channels, keypoints)
    if isinstance(spec, str) and ":" in spec:
        if not is_factory(spec):
            raise ConfigError(f"{where}: {spec!r} is not module.path:factory[@state_dict.pt]")
        net, _ = load_factory(spec, input_size)
        got = (net.arch.input_size, net.arch.in_channels, net.arch.num_keypoints)
        if got != (input_size, channels, keypoints):
            raise ConfigError(f"{where}: {spec} takes {got[1]}x{got[0]}x{got[0]} images and predicts {got[2]} keypoints; "
                              f"the data has {channels}x{input_size}x{input_size} and {keypoints}")
        return net
    if isinstance(spec, str) and spec not in REGISTRY:
        raise ConfigError(f"{where}: unknown architecture {spec!r} (known: {', '.join([*REGISTRY, *RES_REGISTRY])}, "
                          f"or module.path:factory)")
    arch = arch_from(spec, input_size=input_size, num_keypoints=keypoints, where=where)
    arch.in_channels = channels
    return KeypointNet(arch)


def train(cfg: TrainConfig, log: Callable[[str], None] = print, force: bool = False) -> dict:
    """Train a network as configured; writes ``out/model.pt``, ``out/train_metrics.json`` and
    ``out/history.csv`` together at the end (usnprune.files.OutputFolder: an existing file is
    replaced only with ``force``, and only when an earlier usnprune command wrote it).

    The network takes as many channels as the data has (grayscale 1, RGB 3, see
    :func:`~.data.coco.load_coco`); the augmentation family must fit them."""
    from .data.source import load, load_eval
    from .evaluate import evaluate

    folder = OutputFolder(cfg.out, "train", force, flag="out")
    folder.claim(OUTPUTS)  # before minutes of training
    gen = seed_everything(cfg.seed)
    device = resolve_device(cfg.device, "device")
    train_ds = load(cfg.data, "train", cfg.input_size)
    if cfg.max_train is not None and cfg.max_train < len(train_ds):
        train_ds = train_ds.subset(np.arange(cfg.max_train))
    cfg.augment.perturbation.fam.check_channels(train_ds.channels, "train.augment.perturbation.family")
    test_ds, eval_split = load_eval(cfg.data, cfg.input_size, train_ds.channels, log)
    model = build_network(cfg.arch, cfg.input_size, train_ds.channels, len(train_ds.keypoint_names))
    arch = model.arch
    images = torch.as_tensor(train_ds.images)
    kps = torch.as_tensor(train_ds.keypoints)
    mask = torch.as_tensor(label_mask(train_ds))
    log(f"training {arch.name} ({count_parameters(model):,} parameters) on {len(train_ds)} images, "
        f"{cfg.optim.epochs} epochs")
    t0 = time.perf_counter()
    history = fit(model, images, kps, mask, cfg.optim, cfg.augment, gen, device, desc=f"train {arch.name}")
    seconds = time.perf_counter() - t0
    model.cpu()
    check_finite(model, f"train {cfg.out}", f"Lower optim.lr (it is {cfg.optim.lr:g}).")
    clean = evaluate(model, test_ds, deltas=cfg.eval_deltas, box=None)
    meta = {
        "keypoint_names": list(train_ds.keypoint_names),
        "skeleton": [list(s) for s in getattr(train_ds, "skeleton", []) or []],
        "train_config": to_dict(cfg),
        "dataset": cfg.data if isinstance(cfg.data, str) else to_dict(cfg.data),
        "seed": cfg.seed,
        "method": "dense",
        "sparsity": 0.0,
    }
    metrics = {
        "arch": arch.name,
        "parameters": count_parameters(model),
        "train_seconds": round(seconds, 2),
        "final_loss": history[-1]["task"] if history else None,
        "test": clean["overall"],
        "eval_split": eval_split,
    }
    import pandas as pd

    with folder.staging(OUTPUTS) as stage:
        save_checkpoint(stage.path(CHECKPOINT_NAME), model, meta)
        stage.path("train_metrics.json").write_text(json.dumps(metrics, indent=2))
        pd.DataFrame(history).to_csv(stage.path("history.csv"), index=False)
    return metrics


def load_train_config(path: str) -> TrainConfig:
    from usnprune.config import load_yaml

    return from_dict(TrainConfig, load_yaml(path), where=str(path))
