"""Progressive structured pruning: USN (with and without the Wasserstein term) and baselines.

One schedule for every method, so they get the same budget. With ``steps`` S and target
sparsity p (share of all prunable units removed), step s = 1..S:

1. score the units with the method's importance (re-scored every step);
2. train ``reg_epochs`` epochs: for ``usn`` with gates and ``lambda_s * sum (1-USN_j)|g_j|``,
   for ``usn_w`` additionally ``lambda_w * W1(G, T_q)`` with q the share of the current
   units this step removes; baselines train plainly for the same epochs;
3. remove units up to a cumulative ``round(p * s / S * N)`` of the original N (gated methods
   rank by ``USN_j * |g_j|``: a unit goes when its USN is low or the regularizers drove its
   gate to zero; gates are folded into the weights first);
4. fine-tune ``finetune_epochs`` epochs without regularizers.

A final fine-tune of ``final_epochs`` follows. ``none`` (the unpruned baseline) runs the
same epochs without removing anything.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from usnprune.config import from_dict, require, to_dict
from usnprune.errors import ConfigError
from usnprune.files import OutputFolder

from . import perturbation
from .data.source import DataSource
from .importance import get_importance, make_calibration
from .models import (
    CHECKPOINT_NAME,
    KeypointNet,
    count_flops,
    count_parameters,
    file_hash,
    load_checkpoint,
    save_checkpoint,
)
from .surgery import keep_from_remove, prune_units
from .train import AugmentConfig, OptimConfig, check_finite, fit, label_mask, resolve_device, seed_everything
from .wasserstein import pooled, usn_gate_penalty, w1_to_target

METHODS = ("none", "random", "magnitude", "activation", "usn", "usn_w")
OUTPUTS = (CHECKPOINT_NAME, "report.json", "layers.csv", "keypoints.csv")  # what prune writes
ANALYSIS = ("analysis.csv", "analysis.png")  # what prune --analyze-only writes
GATED = ("usn", "usn_w")


@dataclasses.dataclass
class CalibrationConfig:
    images: int = 64
    perturbations: int = 16  # identity and the four corners included

    def check(self, where: str) -> None:
        require(self.images >= 1, f"{where}.images", f"the calibration set must not be empty (got {self.images})")
        require(self.perturbations >= 5, f"{where}.perturbations", f"must be >= 5 (identity and corners), got {self.perturbations}")


@dataclasses.dataclass
class ScheduleConfig:
    steps: int = 3
    reg_epochs: int = 2  # per step: training with the method's regularizers
    finetune_epochs: int = 1  # per step: after removal
    final_epochs: int = 2  # after the last step
    lambda_s: float = 2e-4  # weight of sum (1 - USN_j) |g_j|
    lambda_w: float = 1.0  # weight of W1(G, T_p) (usn_w only)
    gate_lr: float = 0.02  # Adam learning rate of the gates: they must be able to travel to 0 in reg_epochs

    def check(self, where: str) -> None:
        require(self.steps >= 1, f"{where}.steps", f"must be >= 1, got {self.steps}")
        for k in ("reg_epochs", "finetune_epochs", "final_epochs"):
            require(getattr(self, k) >= 0, f"{where}.{k}", "must be >= 0")
        require(self.lambda_s >= 0, f"{where}.lambda_s", "must be >= 0")
        require(self.lambda_w >= 0, f"{where}.lambda_w", "must be >= 0")
        require(self.gate_lr > 0, f"{where}.gate_lr", "must be > 0")


@dataclasses.dataclass
class PruneConfig:
    checkpoint: str  # the dense network
    data: str | DataSource  # dataset folder, or COCO files per split (docs/dataset.md)
    out: str  # output folder
    method: Literal["none", "random", "magnitude", "activation", "usn", "usn_w"] = "usn_w"
    sparsity: float = 0.5  # share of prunable units removed
    ranking: Literal["global", "layer"] = "global"
    min_keep: int = 1  # units every layer keeps (global ranking)
    min_keep_ratio: float = 0.05  # ... and at least this share of its original width (global ranking)
    perturbation: perturbation.Box = dataclasses.field(default_factory=perturbation.Box)  # the box (and family) USN is scored on
    bound_weight: float = 0.0  # weight of the bound-based stability term in USN (0 = off)
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-3, schedule="constant", warmup_epochs=0))
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    seed: int = 0
    device: str = "cpu"
    max_train: int | None = None
    eval_deltas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    eval_grid: int = 11

    def check(self, where: str) -> None:
        require(0.0 <= self.sparsity < 1.0, f"{where}.sparsity", f"must be in [0, 1), got {self.sparsity}")
        require(self.min_keep >= 1, f"{where}.min_keep", f"a layer must keep at least one unit, got {self.min_keep}")
        require(0.0 <= self.min_keep_ratio < 1.0, f"{where}.min_keep_ratio", f"must be in [0, 1), got {self.min_keep_ratio}")
        require(0.0 <= self.bound_weight <= 1.0, f"{where}.bound_weight", f"must be in [0, 1], got {self.bound_weight}")
        for d in self.eval_deltas:
            require(d > 0, f"{where}.eval_deltas", f"every delta must be > 0, got {d}")


def load_prune_config(path: str, **overrides) -> PruneConfig:
    from usnprune.config import load_yaml

    raw = load_yaml(path)
    family = overrides.pop("family", None)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = from_dict(PruneConfig, raw, where=str(path))
    if family is not None:  # --family: the box USN is scored on and the augmentation box
        perturbation.family(family, "--family")
        cfg.perturbation = perturbation.Box.make(cfg.perturbation.eps_c, cfg.perturbation.eps_b, family, "--family")
        aug = cfg.augment.perturbation
        cfg.augment.perturbation = perturbation.Box.make(aug.eps_c, aug.eps_b, family, "--family")
    return cfg


# ---- choosing units -------------------------------------------------------------------


def select_removal(scores: dict[str, np.ndarray], n_remove: dict[str, int] | int, ranking: str = "global",
                   min_keep: int | dict[str, int] = 1, comparable: bool = True) -> dict[str, np.ndarray]:
    """Indices to remove per layer: the lowest-scored units.

    ``global``: ``n_remove`` (an int) units across all layers; scores of layers are made
    comparable by dividing by the layer mean unless ``comparable``; no layer drops below
    ``min_keep``. ``layer``: ``n_remove`` is a per-layer dict of counts.
    """
    widths = {n: len(s) for n, s in scores.items()}
    if ranking == "layer":
        out = {}
        for n, s in scores.items():
            k = int(n_remove.get(n, 0)) if isinstance(n_remove, dict) else int(n_remove)
            if widths[n] - k < 1:
                raise ConfigError(f"layer {n} would keep {widths[n] - k} units; every layer must keep at least one")
            out[n] = np.sort(np.argsort(s, kind="stable")[:k])
        return out
    total = int(n_remove)
    keep_min = {n: (min_keep[n] if isinstance(min_keep, dict) else int(min_keep)) for n in widths}
    capacity = sum(max(0, w - keep_min[n]) for n, w in widths.items())
    if total > capacity:
        what = f"min_keep={min_keep}" if not isinstance(min_keep, dict) else f"its minimum ({keep_min})"
        raise ConfigError(
            f"cannot remove {total} units while every layer keeps {what} "
            f"(at most {capacity} are removable); lower the sparsity, min_keep or min_keep_ratio"
        )
    flat = []
    for n, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if not comparable:
            mean = float(np.mean(np.abs(s)))
            s = s / mean if mean > 0 else s
        flat += [(float(v), n, j) for j, v in enumerate(s)]
    flat.sort(key=lambda t: (t[0], t[1], t[2]))
    left = dict(widths)
    out: dict[str, list[int]] = {n: [] for n in scores}
    for v, n, j in flat:
        if total == 0:
            break
        if left[n] > keep_min[n]:
            out[n].append(j)
            left[n] -= 1
            total -= 1
    return {n: np.sort(np.asarray(v, dtype=np.int64)) for n, v in out.items()}


def step_targets(widths0: dict[str, int], sparsity: float, steps: int, ranking: str) -> list:
    """Cumulative removal targets after each step (an int, or a per-layer dict)."""
    n0 = sum(widths0.values())
    out = []
    for s in range(1, steps + 1):
        frac = sparsity * s / steps
        if ranking == "global":
            out.append(int(round(frac * n0)))
        else:
            out.append({n: int(round(frac * w)) for n, w in widths0.items()})
    return out


# ---- the schedule ---------------------------------------------------------------------


def progressive_prune(model: KeypointNet, train_images: torch.Tensor, train_kps: torch.Tensor, train_mask: torch.Tensor,
                      cfg: PruneConfig, log: Callable[[str], None] = print) -> tuple[KeypointNet, list[dict]]:
    """Run the schedule; returns the pruned network (gates folded) and one row per step."""
    gen = seed_everything(cfg.seed)
    device = resolve_device(cfg.device, "device")
    box = cfg.perturbation
    sch = cfg.schedule
    widths0 = model.widths()
    n0 = sum(widths0.values())
    keep_min = {n: max(cfg.min_keep, int(np.ceil(cfg.min_keep_ratio * w))) for n, w in widths0.items()}
    targets = step_targets(widths0, cfg.sparsity, sch.steps, cfg.ranking)
    removed_total = {n: 0 for n in widths0}
    model = model.to(device)
    history = []
    graph = not isinstance(model, KeypointNet)  # any other graph: through Torch-Pruning (tp_prune)
    if graph:
        from .tp_prune import GraphImportance, prune_groups

        importance = GraphImportance("usn" if cfg.method in GATED else cfg.method) if cfg.method != "none" else None
    else:
        importance = get_importance("usn", bound_weight=cfg.bound_weight) if cfg.method in GATED else (
            get_importance(cfg.method) if cfg.method != "none" else None)
    for s, target in enumerate(targets, start=1):
        t0 = time.perf_counter()
        calib = make_calibration(train_images, box, cfg.calibration.images, cfg.calibration.perturbations, cfg.seed * 1000 + s)
        widths = model.widths()
        # how many units this step removes
        if cfg.ranking == "global":
            n_now = target - sum(removed_total.values())
            per_layer = None
        else:
            per_layer = {n: target[n] - removed_total[n] for n in widths}
            n_now = sum(per_layer.values())
        if cfg.method == "none":
            n_now = 0
        row = {"step": s, "units_before": sum(widths.values()), "removed": n_now}
        # 1-2: score and regularized training
        extra_loss, extra_params = None, None
        if cfg.method in GATED:
            usn = {n: torch.as_tensor(v, dtype=torch.float32, device=device) for n, v in importance(model, calib).items()}
            gates = model.enable_gates()
            q = n_now / max(1, sum(widths.values()))
            lam_s, lam_w = sch.lambda_s, (sch.lambda_w if cfg.method == "usn_w" else 0.0)

            def gate_loss(m, gates=gates, usn=usn, q=q, lam_s=lam_s, lam_w=lam_w):
                g = dict(gates)  # keyed like widths(): layer names, or a graph's group keys
                loss = lam_s * usn_gate_penalty(g, usn)
                if lam_w > 0:
                    loss = loss + lam_w * w1_to_target(pooled(g), q)
                return loss

            extra_loss, extra_params = gate_loss, list(gates.values())
        fit(model, train_images, train_kps, train_mask, _epochs(cfg.optim, sch.reg_epochs), cfg.augment, gen, device,
            extra_loss=extra_loss, extra_params=extra_params, extra_lr=sch.gate_lr,
            desc=f"{cfg.method} step {s}/{sch.steps}: regularize")
        # 3: remove
        if n_now > 0:
            if cfg.method in GATED:
                g_abs = {n: p.detach().abs().cpu().numpy() for n, p in gates.items()}
                row["w1"] = float(w1_to_target(pooled({n: p.detach() for n, p in gates.items()}), q))
                model.fold_gates()
                usn_now = importance(model, calib)
                scores = {n: usn_now[n] * g_abs[n] for n in usn_now}
                comparable = True
            else:
                scores = importance(model, calib)
                comparable = importance.comparable
            remove = select_removal(scores, per_layer if per_layer is not None else n_now, cfg.ranking,
                                    keep_min, comparable)
            if graph:
                remove = prune_groups(model, remove)
                model = model.to(device)
            else:
                model = prune_units(model, keep_from_remove(widths, remove)).to(device)
            for n, r in remove.items():
                removed_total[n] += len(r)
        elif model.has_gates():
            model.fold_gates()
        # 4: fine-tune
        fit(model, train_images, train_kps, train_mask, _epochs(cfg.optim, sch.finetune_epochs), cfg.augment, gen, device,
            desc=f"{cfg.method} step {s}/{sch.steps}: fine-tune")
        row.update({"units_after": sum(model.widths().values()), "seconds": round(time.perf_counter() - t0, 2)})
        history.append(row)
        log(f"  step {s}/{sch.steps}: {row['units_before']} -> {row['units_after']} units ({row['seconds']} s)")
    fit(model, train_images, train_kps, train_mask, _epochs(cfg.optim, sch.final_epochs), cfg.augment, gen, device,
        desc=f"{cfg.method}: final fine-tune")
    model.cpu().eval()
    assert sum(model.widths().values()) == n0 - (0 if cfg.method == "none" else sum(removed_total.values()))
    return model, history


def _flops(model) -> int:
    if isinstance(model, KeypointNet):
        return count_flops(model.arch)
    from .graphnet import count_macs

    return count_macs(model, model.arch)


def _epochs(optim: OptimConfig, epochs: int) -> OptimConfig:
    return dataclasses.replace(optim, epochs=epochs)


# ---- the command ----------------------------------------------------------------------


def layer_table(dense: KeypointNet, pruned: KeypointNet) -> list[dict]:
    before, after = dense.widths(), pruned.widths()
    return [{"layer": n, "units_before": before[n], "units_after": after[n],
             "removed_share": 1 - after[n] / before[n]} for n in before]


def check_keypoints(model: KeypointNet, ds, checkpoint, data) -> None:
    """Refuse a network whose keypoint count differs from the dataset's."""
    if model.arch.num_keypoints != len(ds.keypoint_names):
        raise ConfigError(f"{checkpoint}: the network predicts {model.arch.num_keypoints} keypoints, "
                          f"the data {data} has {len(ds.keypoint_names)}")


def prune(cfg: PruneConfig, log: Callable[[str], None] = print, force: bool = False) -> dict:
    """Prune ``cfg.checkpoint``; writes ``out/model.pt``, ``out/report.json``,
    ``out/layers.csv`` and ``out/keypoints.csv`` together at the end (usnprune.files.OutputFolder:
    never over its input checkpoint; an existing file only with ``force`` and only when usnprune
    wrote it)."""
    import pandas as pd

    from .data.source import load, load_eval
    from .evaluate import evaluate, predict

    folder = OutputFolder(cfg.out, "prune", force, flag="out", inputs=[cfg.checkpoint])
    folder.claim(OUTPUTS)  # before minutes of pruning
    dense, meta = load_checkpoint(cfg.checkpoint)
    if not dense.widths():
        raise ConfigError(f"{cfg.checkpoint}: the network has no prunable layer")
    if cfg.bound_weight > 0 and not isinstance(dense, KeypointNet):
        raise ConfigError(f"{cfg.checkpoint}: bound_weight > 0 is implemented for chain networks only; set it to 0")
    size, channels = dense.arch.input_size, dense.arch.in_channels
    cfg.perturbation.fam.check_channels(channels, "prune.perturbation.family")
    cfg.augment.perturbation.fam.check_channels(channels, "prune.augment.perturbation.family")
    train_ds = load(cfg.data, "train", size, channels)
    check_keypoints(dense, train_ds, cfg.checkpoint, cfg.data)
    if cfg.max_train is not None and cfg.max_train < len(train_ds):
        train_ds = train_ds.subset(np.arange(cfg.max_train))
    test_ds, eval_split = load_eval(cfg.data, size, channels, log)
    log(f"pruning {cfg.checkpoint} with {cfg.method} to sparsity {cfg.sparsity:g} ({cfg.ranking} ranking)")
    t0 = time.perf_counter()
    original = copy.deepcopy(dense)  # progressive_prune trains the object in place
    pruned, history = progressive_prune(
        dense, torch.as_tensor(train_ds.images), torch.as_tensor(train_ds.keypoints),
        torch.as_tensor(label_mask(train_ds)), cfg, log)
    seconds = time.perf_counter() - t0
    check_finite(pruned, f"prune {cfg.out}", f"Lower optim.lr (it is {cfg.optim.lr:g}) or schedule.gate_lr.")
    dense = original
    box = cfg.perturbation
    res = evaluate(pruned, test_ds, deltas=cfg.eval_deltas, box=box, grid=cfg.eval_grid)
    fidelity = float(np.linalg.norm(predict(pruned, test_ds.images) - predict(dense, test_ds.images), axis=-1).mean())
    units0, units1 = sum(dense.widths().values()), sum(pruned.widths().values())
    report = {
        "method": cfg.method,
        "sparsity": cfg.sparsity,
        "seed": cfg.seed,
        "dense_checkpoint": str(cfg.checkpoint),
        "dense_hash": file_hash(cfg.checkpoint),
        "units_before": units0,
        "units_after": units1,
        "unit_sparsity": 1 - units1 / units0,
        "parameters_before": count_parameters(dense),
        "parameters": count_parameters(pruned),
        "parameter_sparsity": 1 - count_parameters(pruned) / count_parameters(dense),
        "flops_before": _flops(dense),
        "flops": _flops(pruned),
        "fidelity_px": fidelity,
        "widths": pruned.widths(),
        "prune_seconds": round(seconds, 2),
        "steps": history,
        "test": res["overall"],
        "eval_split": eval_split,
        "family": box.family,
        "config": to_dict(cfg),
    }
    if not isinstance(dense, KeypointNet):  # groups Torch-Pruning found but we may not prune, and why
        from .tp_prune import dependency_groups

        report["held_groups"] = {g.key: g.reason for g in dependency_groups(dense) if not g.prunable}
    new_meta = dict(meta, method=cfg.method, sparsity=cfg.sparsity, seed=cfg.seed, dense_hash=report["dense_hash"],
                    prune_config=to_dict(cfg))
    from .evaluate import metrics_table

    with folder.staging(OUTPUTS) as stage:
        save_checkpoint(stage.path(CHECKPOINT_NAME), pruned, new_meta)
        pd.DataFrame(layer_table(dense, pruned)).to_csv(stage.path("layers.csv"), index=False)
        metrics_table(res, {"method": cfg.method, "sparsity": cfg.sparsity}).to_csv(stage.path("keypoints.csv"),
                                                                                     index=False)
        stage.path("report.json").write_text(json.dumps(report, indent=2))
    log(f"  {cfg.method} @ {cfg.sparsity:g}: {units1}/{units0} units, {report['parameters']:,} parameters, "
        f"fidelity {fidelity:.3f} px, " + ", ".join(f"{k} {v:.3f}" for k, v in res["overall"].items() if "pck" in k))
    return report


def analyze(checkpoint: str, data: str | DataSource, out: str, box: perturbation.Box = perturbation.Box(),
            images: int = 64, perturbations: int = 16, seed: int = 0, force: bool = False) -> list[dict]:
    """The layer analysis (``usnprune prune --analyze-only``): CSV + plot."""
    import pandas as pd

    from .data.source import load
    from .importance import layer_analysis

    folder = OutputFolder(out, "prune --analyze-only", force, flag="out", inputs=[checkpoint])
    folder.claim(ANALYSIS)
    model, _ = load_checkpoint(checkpoint)
    if not isinstance(model, KeypointNet):
        raise ConfigError(f"{checkpoint}: --analyze-only is implemented for chain networks (its bound analysis "
                          f"follows the chain's layers); prune the graph network without it")
    box.fam.check_channels(model.arch.in_channels, "prune.perturbation.family")
    ds = load(data, "train", model.arch.input_size, model.arch.in_channels)
    check_keypoints(model, ds, checkpoint, data)
    calib = make_calibration(ds.images, box, images, perturbations, seed)
    rows = layer_analysis(model, calib)
    df = pd.DataFrame(rows)
    with folder.staging(ANALYSIS) as stage:
        df.to_csv(stage.path("analysis.csv"), index=False)
        _plot_analysis(df, stage.path("analysis.png"))
    return rows


def _plot_analysis(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, col, title in zip(axes, ("mean_usn", "unstable_share", "looseness_share"),
                              ("mean USN", "share of unstable ReLUs", "share of bound looseness")):
        ax.bar(df["layer"], df[col], color="#4477aa")
        ax.set_title(title)
        ax.set_ylim(0, max(1.0, float(df[col].max()) * 1.05))
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
