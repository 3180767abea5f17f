"""Clean and empirically robust keypoint metrics.

Distances are L-infinity in pixels, the same tolerance box the verifier certifies, so that
every empirical figure here is an upper bound of its certified counterpart:

* ``pck@d``        -- share of labelled keypoints within ``d`` px of the ground truth;
* ``robust_pck@d`` -- ... within ``d`` px of the ground truth for *every* point of a dense
  grid over the lighting box (an upper bound of certified accuracy);
* ``stable_pck@d`` -- ... within ``d`` px of the network's own clean prediction for every
  grid point (an upper bound of certified stability);
* ``mean_error_px`` -- mean Euclidean distance to the ground truth on clean images.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from usnprune.config import require
from usnprune.progress import bar as progress_bar

from . import perturbation


@dataclasses.dataclass
class EvalConfig:
    """What ``usnprune eval`` and an experiment's ``eval:`` measure."""

    perturbation: perturbation.Box = dataclasses.field(default_factory=perturbation.Box)
    deltas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])  # px
    grid: int = 11  # grid points per axis of the box (corners and identity included; capped for k > 2)
    split: str = "test"

    def check(self, where: str) -> None:
        require(len(self.deltas) >= 1, f"{where}.deltas", "give at least one delta")
        for d in self.deltas:
            require(d > 0, f"{where}.deltas", f"every delta must be > 0, got {d}")
        require(self.grid >= 2, f"{where}.grid", f"must be >= 2, got {self.grid}")


def _fmt(d: float) -> str:
    return f"{d:g}"


@torch.no_grad()
def predict(model: torch.nn.Module, images, thetas: np.ndarray | None = None, batch: int = 512,
            fam: str | perturbation.Family | perturbation.Box = perturbation.DEFAULT_FAMILY) -> np.ndarray:
    """Keypoints ``[N, K, 2]`` (float64) for images ``[N, C, H, W]``, optionally under one
    perturbation of family ``fam`` per image (``thetas [N, k]``)."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images, dtype=torch.float32)
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        if thetas is not None:
            xb = perturbation.apply(xb, torch.as_tensor(thetas[i : i + batch], dtype=xb.dtype), fam)
        out.append(model(xb.to(dev)).double().cpu())
    y = torch.cat(out) if out else torch.zeros(0)
    return y.view(len(x), -1, 2).numpy()


@torch.no_grad()
def worst_deviation(model: torch.nn.Module, images, refs: np.ndarray, thetas: np.ndarray,
                    batch: int = 4096,
                    fam: str | perturbation.Family | perturbation.Box = perturbation.DEFAULT_FAMILY) -> np.ndarray:
    """``[N, K]``: for each image and keypoint, the largest L-inf distance between the
    prediction under any of ``thetas`` and ``refs[i, k]``. All (image, theta) pairs are run
    in large batches."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    m = len(thetas)
    per = max(1, batch // m)
    dev = next(model.parameters()).device
    worst = []
    model.eval()
    # a large set takes seconds (the demo: 300 images x 121 points, twice): say so at once
    with progress_bar(len(x), "images x box grid", unit="img", enabled=None if len(x) * m > 20000 else False) as bar:
        for i in range(0, len(x), per):
            xb = perturbation.pairs(x[i : i + per], thetas, fam).to(dev)
            y = model(xb).double().cpu().view(-1, m, refs.shape[1], 2).numpy()
            d = np.abs(y - refs[i : i + per, None]).max(axis=-1)  # [n, m, K]
            worst.append(d.max(axis=1))
            bar.update(len(xb) // m)
    return np.concatenate(worst) if worst else np.zeros((0, refs.shape[1]))


def evaluate(model: torch.nn.Module, ds, deltas=(1.0, 2.0), box: perturbation.Box | None = None,
             grid: int = 11, batch: int = 512) -> dict:
    """Metrics overall and per keypoint. ``ds`` is a KeypointDataset. Robust metrics only
    when ``box`` is given (``box.grid(grid)``: for two parameters a ``grid x grid`` grid,
    corners and identity included; for more, see :meth:`~.perturbation.Box.grid`)."""
    mask = np.asarray(ds.flags) >= 1
    gt = np.asarray(ds.keypoints, dtype=np.float64)
    pred = predict(model, ds.images, batch=batch)
    linf = np.abs(pred - gt).max(-1)
    l2 = np.sqrt(((pred - gt) ** 2).sum(-1))
    names = list(ds.keypoint_names)
    cols: dict[str, np.ndarray] = {}
    for d in deltas:
        cols[f"pck@{_fmt(d)}"] = linf <= d
    if box is not None:
        thetas = box.grid(grid)
        dev_gt = worst_deviation(model, ds.images, gt, thetas, fam=box)
        dev_self = worst_deviation(model, ds.images, pred, thetas, fam=box)
        for d in deltas:
            cols[f"robust_pck@{_fmt(d)}"] = dev_gt <= d
            cols[f"stable_pck@{_fmt(d)}"] = dev_self <= d
        cols["max_shift_px"] = dev_self

    def summarize(sel: np.ndarray) -> dict:
        n = int(sel.sum())
        row = {"n": n, "mean_error_px": float(l2[sel].mean()) if n else float("nan")}
        for k, v in cols.items():
            vals = v[sel].astype(np.float64)
            row[k] = float(vals.mean()) if n else float("nan")
        return row

    overall = summarize(mask)
    per_kp = []
    for j, name in enumerate(names):
        sel = np.zeros_like(mask)
        sel[:, j] = mask[:, j]
        per_kp.append({"keypoint": name, **summarize(sel)})
    return {"overall": overall, "per_keypoint": per_kp, "images": int(len(gt))}


def metrics_table(result: dict, extra: dict | None = None):
    """Per-keypoint rows plus an ``all`` row, as a DataFrame (the CSV eval writes)."""
    import pandas as pd

    rows = [dict(r) for r in result["per_keypoint"]]
    rows.append({"keypoint": "all", **result["overall"]})
    df = pd.DataFrame(rows)
    for k, v in (extra or {}).items():
        df.insert(0, k, v)
    return df
