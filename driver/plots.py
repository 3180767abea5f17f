"""The report's plots: certified accuracy and stability against sparsity (y from 0 to 100 %,
the empirical ceiling drawn dashed, clean accuracy dotted), and verification time (median
with the interquartile band, log axis in seconds). Every title names the tolerance, the box,
the reference and the backend, so a plot makes sense on its own.

One panel per (run, delta): a report over two backends gets two columns. The unpruned
network is every method's point at sparsity 0 (the ``none`` baseline when present, else the
dense network); seeds give error bars (standard deviation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .report_md import box_text
from .tables import label_of, run_title

METRICS = {  # file stem -> (certified column, ceiling column, reference text, headline)
    "certified_accuracy": ("certified_accuracy_pct", "empirical_accuracy_pct", "ground truth",
                           "Certified accuracy: keypoint within δ of its ground truth for every parameter of the box"),
    "certified_stability": ("certified_stability_pct", "empirical_stability_pct", "clean prediction",
                            "Certified stability: keypoint within δ of the network's clean prediction for every parameter"),
}
UNPRUNED = ("dense", "none", "")
REPORT_PLOTS = ("certified_accuracy.png", "certified_stability.png", "verification_time.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sparsity(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").fillna(0.0)


def method_groups(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{line: rows}: one line per method, each with the unpruned network's rows as its
    sparsity-0 point. Several unpruned networks that are not seeds of one (a report over
    hand-picked checkpoints) get a point each and join no line."""
    t = table.assign(sparsity=_sparsity(table["sparsity"]))
    labels = t["network"].map(label_of)
    unpruned = t["method"].astype(str).isin(UNPRUNED) | (t["sparsity"] == 0)
    base = t[unpruned & (t["method"] == "none")] if (t["method"] == "none").any() else t[unpruned]
    pruned = t[~unpruned]
    if labels[base.index].nunique() > 1:
        return {**{str(n): g for n, g in base.groupby(labels[base.index], sort=True)},
                **{str(m): g for m, g in pruned.groupby("method", sort=True)}}
    if pruned.empty:
        return {str(labels[base.index].iloc[0]) if len(base) else "dense": base}
    return {str(m): pd.concat([base, g]) for m, g in pruned.groupby("method", sort=True)}


def _colors(names) -> dict[str, str]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(sorted(names))}


def _grid(keys: list[tuple], width: float = 5.6, height: float = 3.9):
    plt = _plt()
    runs = sorted({k[0] for k in keys})
    deltas = sorted({k[1] for k in keys})
    fig, axes = plt.subplots(len(deltas), len(runs), figsize=(max(7.5, width * len(runs)), height * len(deltas) + 1.2),
                             squeeze=False, sharey=True, layout="constrained")
    return plt, fig, {(r, d): axes[i][j] for i, d in enumerate(deltas) for j, r in enumerate(runs)}


def _title(fig, headline: str, sub: str) -> None:
    import textwrap

    width = int(fig.get_figwidth() * 13)  # characters per line at this font size
    fig.suptitle("\n".join(textwrap.wrap(headline, width) + textwrap.wrap(sub, width)), fontsize=9.5)


def _finish(plt, fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _legend(ax, colors: dict[str, str], styles: list[tuple[str, str]]) -> None:
    """One entry per method (colour) and one per line style (what the line is)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2, label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="#444444", ls=ls, lw=1.2, label=what) for ls, what in styles]
    ax.legend(handles=handles, fontsize=7, loc="lower left", ncol=2)


def _percent_axis(ax, xlabel: str) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(-2, 102)  # 0 to 100 %, with room for a line that sits on either end
    ax.set_yticks(range(0, 101, 20))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def _mean_std(g: pd.DataFrame, x: str, y: str):
    agg = g.groupby(x)[y].agg(["mean", "std"]).sort_index()
    return agg.index.values, agg["mean"].values, agg["std"].fillna(0).values


def plot_metric(summary: pd.DataFrame, stem: str, sub: str, path: Path) -> bool:
    """Certified share against sparsity, its empirical ceiling dashed (and, for accuracy, the
    clean accuracy dotted); False when no row has the metric."""
    cert, ceiling, reference, headline = METRICS[stem]
    s = summary[summary[cert].notna()]
    if s.empty:
        return False
    keys = list(s.groupby(["run", "delta_px"]).groups)
    plt, fig, axes = _grid(keys)
    colors = _colors(method_groups(s))
    for (run, delta), ax in axes.items():
        part = s[(s["run"] == run) & (s["delta_px"] == delta)]
        for method, g in method_groups(part).items():
            c = colors.get(method, "#333333")
            x, m, e = _mean_std(g, "sparsity", cert)
            ax.errorbar(x, m, yerr=e, color=c, marker="o", capsize=3)
            x, m, _ = _mean_std(g, "sparsity", ceiling)
            ax.plot(x, m, color=c, ls="--", lw=1, marker="^", ms=4)
            if stem == "certified_accuracy":
                x, m, _ = _mean_std(g, "sparsity", "clean_accuracy_pct")
                ax.plot(x, m, color=c, ls=":", lw=1)
        backend = part["backend"].iloc[0] if len(part) else run
        ax.set_title(f"{run_title(backend, run)}, δ = {delta:g} px, reference: {reference}", fontsize=8.5)
        _percent_axis(ax, "share of units removed (0 = the unpruned network)")
        ax.set_ylabel(f"{stem.replace('_', ' ')} (% of keypoints)")
        styles = [("-", "certified"), ("--", "empirical ceiling (sampling)")]
        _legend(ax, colors, styles + ([(":", "clean accuracy")] if stem == "certified_accuracy" else []))
    _title(fig, headline, sub)
    _finish(plt, fig, path)
    return True


def _log_seconds(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("seconds per instance (log)")
    ax.grid(alpha=0.3, which="both")


def _time_band(ax, times: pd.DataFrame, x: str, label: str, color: str) -> None:
    """Median line and 25-75 % band of the pooled instance times at each x."""
    q = times.groupby(x)["time"].quantile([0.25, 0.5, 0.75]).unstack().sort_index()
    ax.plot(q.index.values, q[0.5].values, color=color, marker="o", label=f"{label}: median")
    ax.fill_between(q.index.values, q[0.25].values, q[0.75].values, color=color, alpha=0.18, lw=0)


def plot_time(df: pd.DataFrame, sub: str, path: Path) -> bool:
    """Verification time against sparsity per method: median and interquartile band."""
    t = df[~df["left_out"] & (df["verdict"] != "missing")].copy()
    t["time"] = pd.to_numeric(t["time"], errors="coerce")
    t = t[t["time"] > 0]
    if t.empty:
        return False
    t["delta_px"] = pd.to_numeric(t["delta"], errors="coerce")
    plt, fig, axes = _grid(list(t.groupby(["run", "delta_px"]).groups))
    groups_all = method_groups(t)
    colors = _colors(groups_all)
    for (run, delta), ax in axes.items():
        part = t[(t["run"] == run) & (t["delta_px"] == delta)]
        for method, g in method_groups(part).items():
            _time_band(ax, g, "sparsity", method, colors.get(method, "#333333"))
        limit = pd.to_numeric(part.get("timeout_s", pd.Series(dtype=float)), errors="coerce").max()
        if np.isfinite(limit):
            ax.axhline(limit, color="#555555", ls=":", lw=1, label=f"timeout {limit:g} s")
        _log_seconds(ax)
        ax.set_xlabel("share of units removed (0 = the unpruned network)")
        ax.set_title(f"{run_title(part['backend'].iloc[0], run)}, δ = {delta:g} px, all instances", fontsize=8.5)
        ax.legend(fontsize=6.5)
    _title(fig, "Verification time per instance: median (line) and interquartile range (band)", sub)
    _finish(plt, fig, path)
    return True


def report_plots(summary: pd.DataFrame, df: pd.DataFrame, sets: list[dict], path) -> list[str]:
    """The report's PNGs; ``path(name)`` says where to write each. Returns the names written."""
    sub = plot_subtitle(sets)
    written = []
    for stem in METRICS:
        if plot_metric(summary, stem, sub, path(f"{stem}.png")):
            written.append(f"{stem}.png")
    timeouts = {s["bench"]: s["meta"].get("timeout") for s in sets}
    df = df.assign(timeout_s=df["bench"].map(timeouts))
    if plot_time(df, sub, path("verification_time.png")):
        written.append("verification_time.png")
    return written


def plot_subtitle(sets: list[dict]) -> str:
    """The box and the images, for every plot's title."""
    boxes = sorted({box_text(s["meta"]) for s in sets})
    images = sorted({s["images_per_network"] for s in sets})
    return (f"{'; '.join(boxes)}; {', '.join(map(str, images))} image{'s' if images != [1] else ''} per network")


# ---- the perturbation-size sweep (study) --------------------------------------------


def plot_sweep(table: pd.DataFrame, df: pd.DataFrame, out: Path, backend: str) -> list[str]:
    """Certified accuracy / stability and time against eps (eps_c = eps_b), per network."""
    plt = _plt()
    written = []
    colors = _colors(table["network"].unique())
    deltas = ", ".join(f"{d:g}" for d in sorted(table["delta_px"].unique()))
    for stem, (cert, ceiling, reference, headline) in METRICS.items():
        if table[cert].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
        for net, g in table.groupby("network"):
            x, m, e = _mean_std(g, "eps", cert)
            ax.errorbar(x, m, yerr=e, color=colors[net], marker="o", capsize=3)
            x, m, _ = _mean_std(g, "eps", ceiling)
            ax.plot(x, m, color=colors[net], ls="--", lw=1, marker="^", ms=4)
        _percent_axis(ax, "εc = εb (box size)")
        ax.set_ylabel(f"{stem.replace('_', ' ')} (% of keypoints)")
        _legend(ax, colors, [("-", "certified"), ("--", "empirical ceiling (sampling)")])
        _title(fig, headline.split(":")[0] + " against the size of the box",
               f"δ = {deltas} px, reference: {reference}, backend {backend}")
        _finish(plt, fig, out / f"{stem}_vs_eps.png")
        written.append(f"{stem}_vs_eps.png")
    t = df[~df["left_out"] & (df["verdict"] != "missing")].copy()
    t["time"] = pd.to_numeric(t["time"], errors="coerce")
    t = t[t["time"] > 0]
    if not t.empty:
        fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
        for net, g in t.groupby("network"):
            _time_band(ax, g, "eps", str(net), colors.get(net, "#333333"))
        _log_seconds(ax)
        ax.set_xlabel("εc = εb (box size)")
        ax.legend(fontsize=6.5)
        _title(fig, "Verification time against the size of the box: median and interquartile range",
               f"δ = {deltas} px, all instances, backend {backend}")
        _finish(plt, fig, out / "time_vs_eps.png")
        written.append("time_vs_eps.png")
    return written
