"""report.md: what a newcomer reads first.

The settings in one sentence; one table method x sparsity (parameters, clean accuracy,
certified accuracy, certified stability, median time, timeouts); the checks; the
per-keypoint table; the plots and contact sheets. Percent with one decimal everywhere, each
column's unit named once, in its header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from usnprune.verifier_specs.trust import BUDGET, REFINE_POINTS, REFINE_ROUNDS

from .tables import label_of, run_title

REFERENCE_TEXT = {"gt": "the ground truth (certified accuracy)",
                  "prediction": "the network's clean prediction (certified stability)"}
# the trust layer's sample (verifier_specs/trust.py), whatever the box's dimension k
SAMPLING = (f"the {BUDGET} points sampled per box (a grid when one of at least 3 points per axis fits in half "
            f"of them, 21 × 21 for two parameters, else the corners and the centre; the rest uniform) plus "
            f"{REFINE_ROUNDS} × {REFINE_POINTS} around the closest call of each property, run through onnxruntime")


def _num(v: float) -> str:
    return f"{v:g}".replace("-", "−")


def box_text(meta: dict) -> str:
    """The perturbation box in words, from benchmark.json."""
    lo, hi = meta.get("input_lower"), meta.get("input_upper")
    family = meta.get("family", "brightness_contrast")
    if not lo or not hi:
        return "box unknown (not a usnprune benchmark)"
    if family == "brightness_contrast" and len(lo) == 2:
        return (f"contrast c ∈ [{_num(lo[0])}, {_num(hi[0])}], brightness b ∈ [{_num(lo[1])}, {_num(hi[1])}] "
                f"(εc = {_num(meta.get('eps_c', hi[0] - 1))}, εb = {_num(meta.get('eps_b', hi[1]))})")
    ranges = ", ".join(f"[{_num(a)}, {_num(b)}]" for a, b in zip(lo, hi))
    return f"{family} family, θ ∈ {ranges}"


def settings_sentence(s: dict) -> str:
    meta = s["meta"]
    names = meta.get("keypoint_names") or []
    task = (f"{len(names)} keypoints per image on the {meta.get('split', 'test')} split of `{meta.get('data', '?')}`"
            if names else f"the instances of `{s['bench']}`")
    deltas = ", ".join(f"{d:g}" for d in s["deltas"])
    refs = " and ".join(REFERENCE_TEXT.get(r, r) for r in s["references"]) or "unknown (no manifest.csv)"
    timeout = f"timeout {meta['timeout']:g} s per instance" if "timeout" in meta else "the benchmark's timeouts"
    n = s["images_per_network"]
    return (f"Task: {task}; tolerance δ = {deltas} px (L∞); box: {box_text(meta)}; reference: {refs}; "
            f"backend {', '.join(s['backends'])}; {timeout}; {n} image{'' if n == 1 else 's'} per network.")


def _pct(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if np.isfinite(std) and std > 0 else f"{mean:.1f}"


def _label(label: str, method: str, sparsity: float) -> tuple[str, str]:
    """(method cell, sparsity cell); a network not named after its method keeps its name."""
    sp = f"{float(sparsity):g}" if np.isfinite(float(sparsity)) else "–"
    plain = label in (str(method), f"{method}-{sp}")
    return (str(method) if plain else f"{label} ({method})"), sp


def _order(t: pd.DataFrame) -> pd.DataFrame:
    rank = t["method"].astype(str).map(lambda m: 0 if m in ("dense", "none") else 1)
    return t.assign(_rank=rank).sort_values(["_rank", "method", "sparsity", "label"]).drop(columns="_rank")


def method_table(summary: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Per run x delta x network label (method x sparsity): seeds, parameters, shares (mean
    and std over seeds), the median instance time (pooled over seeds) and the timeouts."""
    s = summary.assign(sparsity=pd.to_numeric(summary["sparsity"], errors="coerce").fillna(0.0))
    times = df[~df["left_out"] & (df["verdict"] != "missing")].assign(
        time=lambda d: pd.to_numeric(d["time"], errors="coerce"),
        delta_px=lambda d: pd.to_numeric(d["delta"], errors="coerce"))
    rows = []
    for (run, delta, label), g in s.groupby(["run", "delta_px", "label"], dropna=False):
        method, sp = g["method"].iloc[0], g["sparsity"].iloc[0]
        t = times[(times["run"] == run) & (times["delta_px"] == delta) & times["network"].isin(g["network"])]["time"]
        row = {"run": run, "backend": g["backend"].iloc[0], "delta_px": delta, "label": label, "method": method,
               "sparsity": sp,
               "seeds": len(g), "parameters": g["parameters"].astype(float).mean(), "keypoints": int(g["keypoints"].sum()),
               "time_median_s": float(t.median()) if len(t) else np.nan,
               "timeouts": int(g["timeouts"].sum()), "instances": int(g["instances"].sum())}
        for c in ("clean_accuracy_pct", "certified_accuracy_pct", "certified_stability_pct",
                  "empirical_accuracy_pct", "empirical_stability_pct"):
            row[c], row[c + "_std"] = g[c].mean(), g[c].std() if len(g) > 1 else 0.0
        rows.append(row)
    return _order(pd.DataFrame(rows))


def _main_table(t: pd.DataFrame) -> list[str]:
    seeds = t["seeds"].max() > 1
    head = ["method", "sparsity", *(["seeds"] if seeds else []), "parameters", "clean accuracy (%)",
            "**certified accuracy (%)**", "certified stability (%)", "median time (s)", "timeouts (of instances)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in t.to_dict("records"):
        cells = [*_label(r["label"], r["method"], r["sparsity"]), *([str(r["seeds"])] if seeds else []),
                 f"{r['parameters']:,.0f}" if np.isfinite(r["parameters"]) else "–",
                 _pct(r["clean_accuracy_pct"], r["clean_accuracy_pct_std"]),
                 f"**{_pct(r['certified_accuracy_pct'], r['certified_accuracy_pct_std'])}**",
                 _pct(r["certified_stability_pct"], r["certified_stability_pct_std"]),
                 f"{r['time_median_s']:.2f}" if np.isfinite(r["time_median_s"]) else "–",
                 f"{r['timeouts']} of {r['instances']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _keypoint_table(kp: pd.DataFrame) -> list[str]:
    k = kp.assign(sparsity=pd.to_numeric(kp["sparsity"], errors="coerce").fillna(0.0),
                  label=kp["network"].map(label_of)).sort_values("keypoint_index", kind="stable")
    names = list(dict.fromkeys(k["keypoint"].astype(str)))
    agg = k.groupby(["label", "keypoint"])[["certified_accuracy_pct", "certified_stability_pct"]].mean()
    order = _order(k.drop_duplicates("label")[["label", "method", "sparsity"]])
    lines = ["| method | sparsity | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
    for r in order.to_dict("records"):
        cells = []
        for n in names:
            a, b = agg.loc[(r["label"], n)] if (r["label"], n) in agg.index else (np.nan, np.nan)
            cells.append(f"{_pct(a, 0)} / {_pct(b, 0)}")
        lines.append("| " + " | ".join(_label(r["label"], r["method"], r["sparsity"])) + " | " + " | ".join(cells) + " |")
    return lines


def render(summary: pd.DataFrame, kp: pd.DataFrame, sets: list[dict], problems: list[str], figures: list[str],
           sheet_files: list[str], df: pd.DataFrame | None = None) -> str:
    """The page; ``figures`` and ``sheet_files`` are paths relative to it."""
    lines = ["# Certified keypoints", ""]
    for s in sets:
        lines += [settings_sentence(s), ""]
    base = sorted(summary["keypoints"].unique())
    lines += [f"Every percentage is a share of the visible keypoints of the verified images ({', '.join(map(str, base))} "
              "per network and tolerance): **certified accuracy** — proved within δ of the ground truth for every "
              "parameter of the box (the headline); **certified stability** — proved within δ of the network's own "
              "clean prediction, right or wrong; clean accuracy — within δ of the ground truth on the unperturbed "
              "image. Time is per instance (one keypoint, one reference).", ""]
    if summary["certified_accuracy_pct"].isna().all():
        lines += ["No property with the ground truth as reference was verified, so there is no certified accuracy "
                  "here: export with `--reference both` (the default) or `gt`.", ""]
    table = method_table(summary, df if df is not None else _empty())
    for (run, delta), t in table.groupby(["run", "delta_px"], sort=True):
        lines += [f"## {run_title(t['backend'].iloc[0], run)}, δ = {delta:g} px", "", *_main_table(t), ""]
    lines += ["## Checks", ""]
    if problems:
        lines += ["**ERROR** — a certified share above a share a sound verifier cannot exceed:", ""]
        lines += [f"- {p}" for p in problems] + [""]
    else:
        lines += [f"Passed for every row ({len(summary)}: network × tolerance × run): certified accuracy ≤ clean "
                  f"accuracy, certified accuracy ≤ empirical accuracy and certified stability ≤ empirical "
                  f"stability (empirical: no point of {SAMPLING} breaks the property).", ""]
    notes = _verdict_notes(summary)
    if notes:
        lines += [notes, ""]
    lines += ["## Per keypoint", "", "Certified accuracy / certified stability (%), mean over seeds and runs.", "",
              *_keypoint_table(kp), ""]
    captions = {"certified_accuracy.png": "Certified accuracy (solid), its empirical ceiling (dashed) and clean "
                                          "accuracy (dotted) against sparsity.",
                "certified_stability.png": "Certified stability (solid) and its empirical ceiling (dashed).",
                "verification_time.png": "Verification time per instance: median and interquartile band, log scale."}
    if figures:
        lines += ["## Plots", ""]
        for f in figures:
            lines += [captions.get(f, f), "", f"![{f}]({f})", ""]
    if sheet_files:
        lines += ["## Contact sheets", "", "Per network: ground truth (+), clean prediction (×), the δ box of each "
                  "reference coloured by its verdict, and each falsified keypoint's perturbed image at its "
                  "counterexample beside the clean one.", ""]
        lines += [f"- [{Path(p).stem}]({p})" for p in sheet_files] + [""]
    return "\n".join(lines)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=["run", "delta", "network", "time", "verdict", "left_out"])


def _verdict_notes(summary: pd.DataFrame) -> str:
    parts = []
    for col, what in (("left_out", "properties left out at export (violated at the identity, counted as falsified)"),
                      ("missing", "properties without a result (the run did not finish: `usnprune verify --resume`)"),
                      ("errors", "error rows (see the run's instances.csv, column message)"),
                      ("unknown", "unknown verdicts (the verifier gave up)")):
        n = int(summary[col].sum()) if col in summary else 0
        if n:
            parts.append(f"{n} {what}")
    return ("Not certified and not shown as timeouts: " + "; ".join(parts) + ".") if parts else ""


def console_table(summary: pd.DataFrame) -> str:
    cols = {"network": "network", "delta_px": "delta_px", "keypoints": "keypoints",
            "clean_accuracy_pct": "clean_acc_%", "certified_accuracy_pct": "cert_acc_%",
            "certified_stability_pct": "cert_stab_%", "time_median_s": "median_s", "timeouts": "timeouts"}
    t = summary[list(cols)].rename(columns=cols)
    return t.to_string(index=False, float_format=lambda v: f"{v:.1f}")
