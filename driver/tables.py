"""The report's tables: one row per property (a run's verdicts joined with its benchmark's
manifest), and the shares computed from them (driver/report.py writes them out).

A keypoint of an image is *certified accurate* at tolerance delta when the verifier proved
it stays within delta px (L-inf) of its ground truth for every parameter of the box (the
property with reference ``gt``); *certified stable* when it proved the keypoint stays within
delta of the network's own clean prediction (reference ``prediction``). Every share is over
the same base: the visible keypoints of the verified images (one per (network, image,
keypoint, delta)), so

    certified accuracy  <= empirical accuracy  (no sample of the box breaks it) <= clean accuracy
    certified stability <= empirical stability

and :func:`check_rows` reports a row that breaks one of them as an error.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from usnprune.errors import UsnpruneError
from usnprune.verifier_specs.base import STATUSES

from .runfolder import RUN_FILE, RunSpec, benchmark_top, table

VERDICT_COLORS = {"certified": "#2ca02c", "falsified": "#d62728", "timeout": "#ff7f0e", "unknown": "#7f7f7f",
                  "error": "#000000", "missing": "#9467bd"}
REFERENCES = {"gt": "accuracy", "prediction": "stability"}  # manifest reference -> metric
LEFT_OUT = "left out of the benchmark: violated at the identity"
MANIFEST_COLUMNS = ("ref_u", "ref_v", "gt_u", "gt_v", "pred_u", "pred_v", "clean_error_px", "violated_at_identity")


class ReportError(UsnpruneError):
    pass


def _truthy(s: pd.Series) -> pd.Series:
    """CSV round trips turn booleans into strings; read them back."""
    return s.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def load_benchmark_meta(bench: str | Path) -> dict:
    """benchmark.json of a usnprune benchmark ({} for a foreign folder)."""
    path = benchmark_top(bench, "benchmark.json") / "benchmark.json"  # beside a version folder given alone
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """One row per property of the run's benchmark: the run's verdict joined with the
    manifest (reference, ground truth, clean prediction).

    A property of the manifest without a row in the run is ``missing`` (the run did not
    finish it); one left out at export (violated at the identity) is ``falsified`` without a
    time. A benchmark without manifest.csv (not written by usnprune) gives the run's rows
    with an unknown reference: verdict counts and times, no accuracy or stability.
    """
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
    manifest_path = benchmark_top(spec.bench, "manifest.csv") / "manifest.csv"
    if manifest_path.is_file():
        df = _join_manifest(df, pd.read_csv(manifest_path))
    else:
        df["reference"] = ""
        df["left_out"] = False
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


def _join_manifest(rows: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    listed = m[m["vnnlib"].notna() & (m["vnnlib"].astype(str) != "")]
    left_out = m[~m.index.isin(listed.index)]
    keep = ["onnx", "vnnlib", *[c for c in MANIFEST_COLUMNS if c in m.columns]]
    ran = rows.merge(listed[keep], on=["onnx", "vnnlib"], how="left")
    base_cols = {"category": "category", "network": "network", "method": "method", "sparsity": "sparsity",
                 "seed": "seed", "parameters": "parameters", "image": "image_id", "keypoint": "keypoint",
                 "keypoint_name": "keypoint_name", "delta": "delta", "eps_c": "eps_c", "eps_b": "eps_b",
                 "family": "family", "reference": "reference", "onnx": "onnx", "vnnlib": "vnnlib"}
    done = set(zip(rows["onnx"], rows["vnnlib"]))
    missing = listed[[(o, v) not in done for o, v in zip(listed["onnx"], listed["vnnlib"])]]
    first = rows.iloc[0]
    extra = []
    for part, verdict, message in ((missing, "missing", "no result in this run"), (left_out, "falsified", LEFT_OUT)):
        if part.empty:
            continue
        e = pd.DataFrame({ours: part[theirs].values for ours, theirs in base_cols.items() if theirs in part})
        for c in MANIFEST_COLUMNS:
            if c in part:
                e[c] = part[c].values
        e["run_id"], e["backend"], e["backend_version"] = first["run_id"], first["backend"], first["backend_version"]
        e["verdict"], e["time"], e["message"] = verdict, np.nan, message
        e["sample_violated"] = verdict == "falsified"  # the identity is a sample of the box
        extra.append(e)
    out = pd.concat([ran, *extra], ignore_index=True) if extra else ran
    out["left_out"] = out["message"].astype(str).eq(LEFT_OUT)
    out["vnnlib"] = out["vnnlib"].fillna("")
    return out


def _pct(hits: int, base: int) -> float:
    return round(100.0 * hits / base, 2) if base else float("nan")


def _metrics(g: pd.DataFrame) -> dict:
    """The shares of one group of properties, over its base of visible keypoints."""
    keys = ["image", "keypoint"]
    base = int(g[keys].drop_duplicates().shape[0])
    out = {"keypoints": base}
    if "clean_error_px" in g and g["clean_error_px"].notna().any():
        first = g.drop_duplicates(keys)
        out["clean_accuracy_pct"] = _pct(int((first["clean_error_px"] < first["delta"].astype(float)).sum()), base)
    else:
        out["clean_accuracy_pct"] = float("nan")
    sampled = _truthy(g["sample_violated"])
    for ref, metric in REFERENCES.items():
        r = g["reference"] == ref
        present = bool(r.any())
        out[f"certified_{metric}_pct"] = _pct(int((r & (g["verdict"] == "certified")).sum()), base) if present else float("nan")
        out[f"empirical_{metric}_pct"] = _pct(int((r & ~sampled & (g["verdict"] != "missing")).sum()), base) if present else float("nan")
    ran = g[~g["left_out"] & (g["verdict"] != "missing")]
    t = pd.to_numeric(ran["time"], errors="coerce").dropna()
    out.update({
        "instances": int(len(ran)), "certified": int((g["verdict"] == "certified").sum()),
        "falsified": int((g["verdict"] == "falsified").sum()), "left_out": int(g["left_out"].sum()),
        "timeouts": int((g["verdict"] == "timeout").sum()), "unknown": int((g["verdict"] == "unknown").sum()),
        "errors": int((g["verdict"] == "error").sum()), "missing": int((g["verdict"] == "missing").sum()),
        "time_median_s": _q(t, 0.5), "time_q25_s": _q(t, 0.25), "time_q75_s": _q(t, 0.75),
        "time_mean_s": round(float(t.mean()), 4) if len(t) else float("nan"),
        "time_max_s": round(float(t.max()), 4) if len(t) else float("nan"),
    })
    return out


def _q(t: pd.Series, q: float) -> float:
    return round(float(t.quantile(q)), 4) if len(t) else float("nan")


def run_title(backend: str, run: str) -> str:
    """How a run is named in titles: its backend, and its folder when that says more."""
    return str(backend) if str(run) == str(backend) else f"{backend} ({run})"


def label_of(network: str) -> str:
    """The network's name without its seed: networks that differ only by seed share a row of
    the method x sparsity table (mean and spread over seeds)."""
    return re.sub(r"-seed\d+$", "", str(network))


def _family(row: pd.Series) -> str:
    """The row's lighting family; runs from before families existed were brightness_contrast."""
    v = row.get("family")
    return v if isinstance(v, str) and v else "brightness_contrast"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run x network x delta (see the module docstring)."""
    rows = []
    for (run, net, delta), g in df.groupby(["run", "network", "delta"], dropna=False, sort=True):
        first = g.iloc[0]
        refs = sorted(set(g["reference"].dropna().astype(str)) - {""})
        rows.append({
            "run": run, "backend": first["backend"], "network": net, "label": label_of(net),
            "method": first.get("method", ""), "sparsity": first.get("sparsity", np.nan), "seed": first.get("seed", ""),
            "parameters": first.get("parameters", np.nan), "delta_px": delta, "eps_c": first.get("eps_c"),
            "eps_b": first.get("eps_b"), "family": _family(first),
            "references": "+".join(refs) if refs else "unknown", **_metrics(g),
        })
    return pd.DataFrame(rows)


def keypoint_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (run, net, delta, k, kp), g in df.groupby(["run", "network", "delta", "keypoint", "keypoint_name"],
                                                  dropna=False, sort=True):
        m = _metrics(g)
        rows.append({"run": run, "network": net, "method": g.iloc[0].get("method", ""),
                     "sparsity": g.iloc[0].get("sparsity", np.nan), "delta_px": delta, "keypoint_index": k,
                     "keypoint": kp,
                     **{k: m[k] for k in ("keypoints", "clean_accuracy_pct", "certified_accuracy_pct",
                                          "empirical_accuracy_pct", "certified_stability_pct",
                                          "empirical_stability_pct", "timeouts", "time_median_s")}})
    return pd.DataFrame(rows)


CHECKS = [  # (lower, upper, what the upper is): certified shares that a sound verifier cannot exceed
    ("certified_accuracy_pct", "clean_accuracy_pct", "clean accuracy"),
    ("certified_accuracy_pct", "empirical_accuracy_pct", "empirical accuracy (sampled)"),
    ("certified_stability_pct", "empirical_stability_pct", "empirical stability (sampled)"),
]


def check_rows(summary: pd.DataFrame) -> list[str]:
    """Rows whose certified share exceeds a share it cannot exceed if the verifier is sound."""
    problems = []
    for r in summary.to_dict("records"):
        for low, high, what in CHECKS:
            a, b = r.get(low, np.nan), r.get(high, np.nan)
            if np.isfinite(a) and np.isfinite(b) and a > b + 1e-9:
                problems.append(f"{r['run']}/{r['network']} delta {r['delta_px']:g} px: "
                                f"{low.removesuffix('_pct').replace('_', ' ')} {a:.1f}% > {what} {b:.1f}%")
    return problems





def settings(df: pd.DataFrame) -> list[dict]:
    """What each benchmark of the report was: box, tolerance, references, backend, timeout."""
    out = []
    for bench, g in df.groupby("bench", sort=True):
        meta = load_benchmark_meta(bench)
        out.append({"bench": bench, "meta": meta, "runs": sorted(g["run"].unique()),
                    "backends": sorted(set(f"{r.backend} ({r.backend_version})" for r in
                                           g[["backend", "backend_version"]].drop_duplicates().itertuples())),
                    "deltas": sorted(pd.to_numeric(g["delta"], errors="coerce").dropna().unique().tolist()),
                    "references": sorted(set(g["reference"].dropna().astype(str)) - {""}),
                    "networks": int(g["network"].nunique()),
                    "images_per_network": int(g.groupby("network")["image"].nunique().max())})
    return out
