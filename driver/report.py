"""``usnprune report RUN [RUN ...] --out DIR``: certified-keypoint tables and plots.

* ``keypoints.csv`` -- per run x network x delta x keypoint: share certified / falsified /
  timeout / unknown / error, median time;
* ``summary.csv``   -- per run x network x delta: parameters, sparsity, clean PCK, empirical
  robust PCK (share of instances no sample of the box breaks), certified PCK, time
  mean/median/max, timeouts;
* ``certified_pck.png``, ``verification_time.png`` -- against sparsity, one line per
  method (the dense network is every method's sparsity 0), mean and spread over seeds;
* ``sheets/<network>.png`` -- a contact sheet per network: every verified image with each
  keypoint's delta box coloured by its verdict.

Certified PCK@delta = certified keypoints / all keypoints verified. A certified instance
that sampling breaks is a bug, flagged by verify as an error row, so certified PCK never
exceeds empirical robust PCK (``check_ceiling``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from usnprune.errors import UsnpruneError
from usnprune.files import OutputFolder
from usnprune.verifier_specs.base import STATUSES

from .runfolder import RUN_FILE, RunSpec, table

VERDICT_COLORS = {"certified": "#2ca02c", "falsified": "#d62728", "timeout": "#ff7f0e", "unknown": "#7f7f7f", "error": "#000000"}


class ReportError(UsnpruneError):
    pass


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """The run's rows joined with its benchmark's manifest (reference, clean prediction)."""
    run = Path(run_dir)
    if not (run / RUN_FILE).is_file():
        raise ReportError(f"{run}: not a usnprune run folder (no {RUN_FILE})")
    spec = RunSpec.load(run)
    # from the store, not RUN/instances.csv (a killed run's table may be stale), and without
    # writing into the run folder: report writes only under its --out
    df = pd.read_csv(io.StringIO(table(run).to_csv(index=False)))
    if df.empty:
        raise ReportError(f"{run}: the run has no finished instance yet")
    _check_rows(df, run)
    manifest_path = Path(spec.bench) / "manifest.csv"
    if manifest_path.is_file():
        m = pd.read_csv(manifest_path)
        keep = [c for c in ("onnx", "vnnlib", "ref_u", "ref_v", "gt_u", "gt_v", "pred_u", "pred_v", "clean_error_px",
                            "violated_at_identity") if c in m.columns]
        df = df.merge(m[keep], on=["onnx", "vnnlib"], how="left")
    df["run"] = run.name
    df["bench"] = spec.bench
    return df


def _check_rows(df: pd.DataFrame, run: Path) -> None:
    """Refuse rows a report cannot count (a hand-edited results store), naming the first."""
    bad_verdict = ~df["verdict"].isin(STATUSES)
    times = pd.to_numeric(df["time"], errors="coerce")
    bad_time = ~np.isfinite(times.astype(float))
    for mask, what in ((bad_verdict, "verdict"), (bad_time, "time")):
        if mask.any():
            r = df[mask].iloc[0]
            raise ReportError(f"{run}: the row of {r['onnx']},{r['vnnlib']} has {what} {r[what]!r} "
                              f"(expected {'one of ' + ', '.join(STATUSES) if what == 'verdict' else 'a number of seconds'})")
    df["time"] = times


def _truthy(s: pd.Series) -> pd.Series:
    """CSV round trips turn booleans into strings; read them back."""
    return s.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def _family(row: pd.Series) -> str:
    """The row's lighting family; runs from before families existed were brightness_contrast."""
    v = row.get("family")
    return v if isinstance(v, str) and v else "brightness_contrast"


def _pct(s: pd.Series, value: str) -> float:
    return float((s == value).mean()) if len(s) else float("nan")


def keypoint_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (run, net, delta, kp), g in df.groupby(["run", "network", "delta", "keypoint_name"], dropna=False, sort=True):
        rows.append({"run": run, "network": net, "delta": delta, "keypoint": kp, "instances": len(g),
                     **{f"{v}_pct": 100 * _pct(g["verdict"], v) for v in VERDICT_COLORS},
                     "median_time_s": float(g["time"].median())})
    return pd.DataFrame(rows)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (run, net, delta), g in df.groupby(["run", "network", "delta"], dropna=False, sort=True):
        first = g.iloc[0]
        clean = float((~_truthy(g["violated_at_identity"])).mean()) if "violated_at_identity" in g else float("nan")
        sv = _truthy(g["sample_violated"])
        rows.append({
            "run": run, "backend": first["backend"], "network": net, "method": first.get("method", ""),
            "sparsity": first.get("sparsity", np.nan), "seed": first.get("seed", ""),
            "parameters": first.get("parameters", np.nan), "delta": delta, "eps_c": first.get("eps_c"),
            "eps_b": first.get("eps_b"), "family": _family(first),
            "reference": first.get("reference", ""), "instances": len(g),
            "clean_pck": clean,
            "empirical_robust_pck": float((~sv).mean()),
            "certified_pck": _pct(g["verdict"], "certified"),
            "falsified": int((g["verdict"] == "falsified").sum()), "timeouts": int((g["verdict"] == "timeout").sum()),
            "unknown": int((g["verdict"] == "unknown").sum()), "errors": int((g["verdict"] == "error").sum()),
            "time_mean_s": float(g["time"].mean()), "time_median_s": float(g["time"].median()),
            "time_max_s": float(g["time"].max()),
        })
    return pd.DataFrame(rows)


def check_ceiling(summary: pd.DataFrame) -> list[str]:
    """Rows whose certified PCK exceeds the empirical robust PCK (impossible if sound)."""
    bad = summary[summary["certified_pck"] > summary["empirical_robust_pck"] + 1e-12]
    return [f"{r.run}/{r.network} delta {r.delta}: certified {r.certified_pck:.3f} > empirical {r.empirical_robust_pck:.3f}"
            for r in bad.itertuples()]


def _method_lines(summary: pd.DataFrame, value: str):
    """{(method, delta): (sparsities, mean, std)}. The unpruned network is every method's
    point at sparsity 0: the ``none`` baseline (same training budget) when present, else
    the dense network."""
    s = summary.copy()
    s["sparsity"] = pd.to_numeric(s["sparsity"], errors="coerce").fillna(0.0)
    unpruned = s["method"].isin(["dense", "none", ""]) | (s["sparsity"] == 0)
    base = s[unpruned & (s["method"] == "none")] if (s["method"] == "none").any() else s[unpruned]
    s = s[~unpruned | s.index.isin(base.index)]
    lines = {}
    for (method, delta), g in s[~s.index.isin(base.index)].groupby(["method", "delta"]):
        g = pd.concat([g, base[base["delta"] == delta]])
        agg = g.groupby("sparsity")[value].agg(["mean", "std"]).sort_index()
        lines[(method, delta)] = (agg.index.values, agg["mean"].values, agg["std"].fillna(0).values)
    if not lines:  # only dense networks
        for delta, g in base.groupby("delta"):
            agg = g.groupby("sparsity")[value].agg(["mean", "std"]).sort_index()
            lines[("dense", delta)] = (agg.index.values, agg["mean"].values, agg["std"].fillna(0).values)
    return lines


def _line_plot(lines: list[tuple[str, tuple]], xlabel: str, ylabel: str, path: Path, logy: bool) -> None:
    """One line with error bars per ``(label, (x, mean, std))``, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, mean, std) in lines:
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_sparsity(summary: pd.DataFrame, value: str, ylabel: str, path: Path, logy: bool = False) -> None:
    one_delta = summary["delta"].nunique() == 1
    lines = [(method if one_delta else f"{method} (delta {delta:g})", xy)
             for (method, delta), xy in sorted(_method_lines(summary, value).items())]
    _line_plot(lines, "share of units removed", ylabel, path, logy)


def plot_vs(table: pd.DataFrame, x: str, group: str, y: str, xlabel: str, ylabel: str, path: Path,
            logy: bool = False) -> None:
    """One line per ``group`` value: mean of ``y`` at each ``x``, spread as error bars."""
    lines = []
    for name, g in table.groupby(group):
        agg = g.groupby(x)[y].agg(["mean", "std"]).sort_index()
        lines.append((str(name), (agg.index.values, agg["mean"].values, agg["std"].fillna(0).values)))
    _line_plot(lines, xlabel, ylabel, path, logy)


def _image_of(onnx_path: Path) -> np.ndarray:
    """The image held by an instance model (first row of the front Gemm's weights)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    shape = None
    for t in m.graph.initializer:
        if t.name == "image_shape":
            shape = numpy_helper.to_array(t)
    for t in m.graph.initializer:
        if t.name == "front_W":
            pix = numpy_helper.to_array(t)[0]
            side = int(round(np.sqrt(pix.size))) if shape is None else int(shape[-1])
            return pix.reshape(-1, side)
    raise ReportError(f"{onnx_path}: not a usnprune instance model (no front_W)")


def contact_sheet(df: pd.DataFrame, bench: Path, path: Path, cols: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    groups = list(df.groupby("onnx", sort=True))
    rows = max(1, int(np.ceil(len(groups) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (onnx_rel, g) in zip(axes.flat, groups):
        img = _image_of(bench / onnx_rel)
        h, w = img.shape
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0), interpolation="nearest")
        for r in g.itertuples():
            u, v = getattr(r, "ref_u", np.nan), getattr(r, "ref_v", np.nan)
            if not np.isfinite(u):
                continue
            d = float(r.delta)
            color = VERDICT_COLORS.get(r.verdict, "#000000")
            ax.add_patch(patches.Rectangle((u - d, v - d), 2 * d, 2 * d, fill=False, edgecolor=color, linewidth=1.2))
            ax.plot(u, v, ".", color=color, ms=3)
        cert = int((g["verdict"] == "certified").sum())
        ax.set_title(f"image {g['image'].iloc[0]}: {cert}/{len(g)}", fontsize=8)
    handles = [patches.Patch(color=c, label=v) for v, c in VERDICT_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(str(df["network"].iloc[0]), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


OUTPUTS = ("keypoints.csv", "summary.csv", "certified_pck.png", "verification_time.png", "report.json")


def report(runs: list[str | Path], out: str | Path, sheets: bool = True, log=print, force: bool = False) -> dict:
    """Tables and plots of ``runs`` into ``out``, written together at the end; an existing
    file is replaced only with ``force`` and only when usnprune wrote it (OutputFolder)."""
    seen: dict[Path, str] = {}
    for r in runs:
        real = Path(r).resolve()
        if real in seen:
            raise ReportError(f"{r}: the run is given twice (as {seen[real]} too); its rows would count twice")
        seen[real] = str(r)
    names = [Path(r).resolve().name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ReportError(f"two runs are both named {clash[0]!r}; the tables tell runs apart by folder name: "
                          f"rename one")
    folder = OutputFolder(out, "report", force, inputs=[Path(r) / "instances.csv" for r in runs])
    folder.claim(OUTPUTS)
    frames = [load_run(r) for r in runs]
    df = pd.concat(frames, ignore_index=True)
    kp = keypoint_table(df)
    summary = summary_table(df)
    problems = check_ceiling(summary)
    with folder.staging(OUTPUTS, remove_stale=True) as stage:
        kp.to_csv(stage.path("keypoints.csv"), index=False)
        summary.to_csv(stage.path("summary.csv"), index=False)
        plot_vs_sparsity(summary, "certified_pck", "certified PCK", stage.path("certified_pck.png"))
        plot_vs_sparsity(summary, "time_mean_s", "mean verification time per instance (s)",
                         stage.path("verification_time.png"), logy=True)
        if sheets:
            for (run, net), g in df.groupby(["run", "network"]):
                name = f"{net}.png" if df["run"].nunique() == 1 else f"{run}-{net}.png"
                contact_sheet(g, Path(g["bench"].iloc[0]), stage.path(f"sheets/{name}"))
        stage.path("report.json").write_text(json.dumps({"runs": [str(r) for r in runs],
                                                         "ceiling_violations": problems}, indent=2))
    o = Path(out)
    log(summary[["network", "delta", "parameters", "instances", "certified_pck", "empirical_robust_pck",
                 "time_mean_s", "timeouts"]].to_string(index=False))
    for p in problems:
        log(f"SOUNDNESS: {p}")
    log(f"wrote {o}/summary.csv, keypoints.csv, certified_pck.png, verification_time.png" + (", sheets/" if sheets else ""))
    return {"summary": summary, "keypoints": kp, "problems": problems}
