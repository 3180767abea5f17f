"""Contact sheets (``report/sheets/<network>.png``): what the verifier decided, on the images.

Top: every verified image with, per keypoint, the ground truth (+), the clean prediction
(×), the δ box around the ground truth (accuracy property, solid) and around the clean
prediction (stability property, dashed), each coloured by its verdict. Below: for every
falsified keypoint, the clean image beside the image at its counterexample, with the
prediction the network makes there — keypoints the perturbation broke first, those already
wrong at the identity after them.

The perturbed image is computed from the instance model itself: its front is one Gemm from
the parameters θ to the pixels, clipped to [0, 1] (docs/formats.md), so ``clip(θ W + b)`` is
the image the network saw, for any linear lighting family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from usnprune.progress import bar as progress_bar
from usnprune.verifier_specs.replay import evaluate, get_session

from .runfolder import benchmark_file
from .tables import VERDICT_COLORS, ReportError, load_benchmark_meta

COLS = 6  # panels per row
MAX_PAIRS = 36  # falsified keypoints shown per sheet
GT_COLOR, PRED_COLOR = "#00e5ff", "#ffd400"


class Front:
    """The instance model's image front: parameters -> pixels, and the image shape."""

    def __init__(self, onnx_path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(onnx_path))
        init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        x = m.graph.input[0].name
        gemm = next((n for n in m.graph.node if n.op_type == "Gemm" and n.input[0] == x), None)
        if gemm is None or gemm.input[1] not in init:
            raise ReportError(f"{onnx_path}: no Gemm front from the parameters to the pixels")
        attrs = {a.name: a for a in gemm.attribute}
        w = init[gemm.input[1]].astype(np.float64)
        self.w = w.T if attrs.get("transB") and attrs["transB"].i else w
        self.b = init[gemm.input[2]].astype(np.float64) if len(gemm.input) > 2 and gemm.input[2] in init else 0.0
        shape = init.get("image_shape")
        n = self.w.shape[1]
        if shape is not None and len(shape) == 4:
            self.shape = tuple(int(v) for v in shape[1:])
        else:
            side = int(round(np.sqrt(n)))
            self.shape = (1, side, n // side)
        self.path = onnx_path

    def image(self, theta) -> np.ndarray:
        """The pixels at θ as [H, W] (gray) or [H, W, C]."""
        px = np.clip(np.asarray(theta, dtype=np.float64) @ self.w + self.b, 0.0, 1.0).reshape(self.shape)
        return px[0] if px.shape[0] == 1 else np.transpose(px, (1, 2, 0))

    def keypoints(self, theta) -> np.ndarray:
        """The network's keypoints at θ, [K, 2] (onnxruntime)."""
        return evaluate(get_session(str(self.path)), np.asarray(theta, dtype=np.float64)[None])[0].reshape(-1, 2)


def identity(meta: dict) -> np.ndarray:
    """θ of the unperturbed image: benchmark.json's ``identity``, else the box centre."""
    if meta.get("identity") is not None:
        return np.asarray(meta["identity"], dtype=np.float64)
    return (np.asarray(meta["input_lower"], dtype=np.float64) + np.asarray(meta["input_upper"], dtype=np.float64)) / 2


def _counterexample(r) -> np.ndarray | None:
    full = getattr(r, "cex", None)
    if isinstance(full, str) and full.strip().startswith("["):
        return np.asarray(json.loads(full), dtype=np.float64)
    c, b = getattr(r, "cex_c", np.nan), getattr(r, "cex_b", np.nan)
    if pd.notna(c) and pd.notna(b):
        return np.array([float(c), float(b)])
    return None


def _show(ax, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, extent=(0, w, h, 0),
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, u: float, v: float, d: float, verdict: str, dashed: bool) -> None:
    import matplotlib.patches as patches

    ax.add_patch(patches.Rectangle((u - d, v - d), 2 * d, 2 * d, fill=False, lw=1.1,
                                   edgecolor=VERDICT_COLORS.get(verdict, "#000000"), ls="--" if dashed else "-"))


def _overview(ax, img: np.ndarray, g: pd.DataFrame) -> None:
    _show(ax, img)
    for r in g.itertuples():
        d = float(r.delta)
        if r.reference == "gt":
            _box(ax, r.gt_u, r.gt_v, d, r.verdict, dashed=False)
        elif r.reference == "prediction":
            _box(ax, r.pred_u, r.pred_v, d, r.verdict, dashed=True)
    kps = g.drop_duplicates("keypoint")
    ax.plot(kps["gt_u"], kps["gt_v"], "+", color=GT_COLOR, ms=3.5, mew=0.8)
    ax.plot(kps["pred_u"], kps["pred_v"], "x", color=PRED_COLOR, ms=2.5, mew=0.8)
    parts = []
    for ref, word in (("gt", "acc"), ("prediction", "stab")):
        sel = g[g["reference"] == ref]
        if len(sel):
            parts.append(f"{word} {int((sel['verdict'] == 'certified').sum())}/{len(sel)}")
    ax.set_title(f"image {g['image'].iloc[0]}: " + ", ".join(parts), fontsize=7)


def _zoom(ax, u: float, v: float, d: float, shape: tuple) -> None:
    """Show a window around the keypoint, so that a box of a fraction of a pixel is visible."""
    half = max(5.0, 6 * d)
    h, w = shape[:2]
    ax.set_xlim(max(0.0, u - half), min(float(w), u + half))
    ax.set_ylim(min(float(h), v + half), max(0.0, v - half))


def _pair(ax_clean, ax_cex, front: Front, theta0: np.ndarray, r) -> None:
    d = float(r.delta)
    u, v = float(r.ref_u), float(r.ref_v)
    what = "accuracy" if r.reference == "gt" else "stability"
    clean = front.image(theta0)
    _show(ax_clean, clean)
    _box(ax_clean, u, v, d, "falsified", dashed=r.reference != "gt")
    ax_clean.plot([r.gt_u], [r.gt_v], "+", color=GT_COLOR, ms=7, mew=1.3)
    ax_clean.plot([r.pred_u], [r.pred_v], "x", color=PRED_COLOR, ms=5, mew=1.1)
    _zoom(ax_clean, u, v, d, clean.shape)
    ax_clean.set_title(f"img {r.image} {r.keypoint_name}\n{what}, clean", fontsize=6.5)
    theta = _counterexample(r)
    if theta is None:
        ax_cex.axis("off")
        ax_cex.set_title("no counterexample stored", fontsize=6.5)
        return
    _show(ax_cex, front.image(theta))
    _box(ax_cex, u, v, d, "falsified", dashed=r.reference != "gt")
    k = int(r.keypoint)
    moved = front.keypoints(theta)[k]
    ax_cex.plot([moved[0]], [moved[1]], "x", color=VERDICT_COLORS["falsified"], ms=6, mew=1.4)
    _zoom(ax_cex, u, v, d, clean.shape)
    where = ", ".join(f"{t:.3g}" for t in theta)
    ax_cex.set_title(f"at θ = ({where})" + ("\nwrong at identity" if r.violated_at_identity_b else ""),
                     fontsize=6.5)


def contact_sheet(df: pd.DataFrame, bench: Path, meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    df = df.assign(violated_at_identity_b=df["violated_at_identity"].map(lambda v: str(v).lower() in ("true", "1")))
    images = list(df.groupby("onnx", sort=True))
    fronts = {onnx_rel: Front(benchmark_file(bench, onnx_rel)) for onnx_rel, _ in images}  # 2.0/onnx/... too
    theta0 = identity(meta)
    bad = df[(df["verdict"] == "falsified") & ~df["left_out"]]
    left_out = df[df["left_out"]]
    bad = pd.concat([bad, left_out]).sort_values(["violated_at_identity_b", "image", "keypoint"], kind="stable")
    shown = bad.head(MAX_PAIRS)
    top_rows = int(np.ceil(len(images) / COLS))
    pair_rows = int(np.ceil(len(shown) / (COLS // 2)))
    rows = top_rows + pair_rows
    fig, axes = plt.subplots(rows, COLS, figsize=(1.9 * COLS, 2.1 * rows + 0.9), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i, (onnx_rel, g) in enumerate(images):
        ax = axes.flat[i]
        ax.axis("on")
        _overview(ax, fronts[onnx_rel].image(theta0), g)
    for j, r in enumerate(shown.itertuples()):
        row, col = top_rows + j // (COLS // 2), 2 * (j % (COLS // 2))
        a, b = axes[row][col], axes[row][col + 1]
        a.axis("on")
        b.axis("on")
        _pair(a, b, fronts[r.onnx], theta0, r)
    handles = [patches.Patch(color=c, label=v) for v, c in VERDICT_COLORS.items() if v in set(df["verdict"])]
    handles += [plt.Line2D([], [], color="#555555", ls="-", label="box around ground truth (accuracy)"),
                plt.Line2D([], [], color="#555555", ls="--", label="box around clean prediction (stability)"),
                plt.Line2D([], [], color=GT_COLOR, marker="+", ls="", label="ground truth"),
                plt.Line2D([], [], color=PRED_COLOR, marker="x", ls="", label="clean prediction"),
                plt.Line2D([], [], color=VERDICT_COLORS["falsified"], marker="x", ls="", label="prediction at θ")]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=6.5, frameon=False)
    more = f" (first {MAX_PAIRS} of {len(bad)} shown)" if len(bad) > MAX_PAIRS else ""
    fig.suptitle(f"{df['network'].iloc[0]}, {df['backend'].iloc[0]}, δ = "
                 f"{', '.join(f'{d:g}' for d in sorted(df['delta'].astype(float).unique()))} px — "
                 f"top: verified images; below: {len(bad)} falsified keypoints, clean | at the counterexample "
                 f"(zoomed){more}", fontsize=8.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sheets(df: pd.DataFrame, path, log=print) -> list[str]:
    """One sheet per run x network of a usnprune benchmark (one with manifest.csv), each
    written to ``path("sheets/<name>.png")``; returns those relative names."""
    if "gt_u" not in df:
        log("report: no contact sheets (the benchmark has no manifest.csv with ground truth)")
        return []
    several = df["run"].nunique() > 1
    names = []
    groups = list(df.groupby(["run", "network"], sort=True))
    with progress_bar(len(groups), "contact sheets", unit="sheets") as bar:
        for (run, net), g in groups:
            rel = f"sheets/{run}-{net}.png" if several else f"sheets/{net}.png"
            bench = Path(g["bench"].iloc[0])
            contact_sheet(g, bench, load_benchmark_meta(bench), path(rel))
            names.append(rel)
            bar.update()
    return names
