"""Does a new run reproduce a published study summary?

    python benchmarks/compare_summary.py benchmarks/results/small/summary.csv NEW/summary.csv

Matches rows on (method, sparsity, seed) and prints, per accuracy or verdict column, the
largest difference and how many rows differ; then, per (method, sparsity), whether the new
mean certified accuracy (certified stability when a summary has no accuracy: summaries
published before it existed are read in today's columns) lies within the published mean ± the
published standard deviation over seeds (the spread docs/results.md states). Exit status 1 when a row is missing or a mean
falls outside its spread, else 0. Times are compared as a ratio only (they are machine noise).
"""

from __future__ import annotations

import sys

import pandas as pd

KEY = ["method", "sparsity", "seed"]
EXACT = ["parameters", "clean_accuracy_pct", "certified_accuracy_pct", "empirical_accuracy_pct", "certified_stability_pct",
         "empirical_stability_pct", "clean_pck_test_pct", "stable_pck_test_pct", "robust_pck_test_pct", "timeouts",
         "unknown", "errors", "fidelity_px"]
# summaries published before certified accuracy existed: fractions, and one reference (the clean
# prediction), so their certified and empirical PCK are certified and empirical stability
OLD_NAMES = {"certified_pck": "certified_stability_pct", "empirical_robust_pck": "empirical_stability_pct",
             "clean_pck_test": "clean_pck_test_pct", "stable_pck_test": "stable_pck_test_pct",
             "robust_pck_test": "robust_pck_test_pct"}


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """A summary in today's columns (percent), whichever version wrote it."""
    if "certified_pck" not in df:
        return df
    if "reference" in df and (df["reference"] != "prediction").any():
        raise ValueError("an old summary with reference gt: its certified PCK is not stability")
    out = df.rename(columns=OLD_NAMES)
    for c in OLD_NAMES.values():
        if c in out:
            out[c] = 100 * out[c]
    return out


def _spread_column(m: pd.DataFrame) -> str:
    """The headline both summaries have: certified accuracy, else certified stability."""
    ok = all(f"certified_accuracy_pct_{side}" in m and m[f"certified_accuracy_pct_{side}"].notna().any()
             for side in ("pub", "new"))
    return "certified_accuracy_pct" if ok else "certified_stability_pct"


def compare(published: pd.DataFrame, new: pd.DataFrame) -> int:
    published, new = normalise(published), normalise(new)
    m = published.merge(new, on=KEY, how="outer", suffixes=("_pub", "_new"), indicator=True)
    missing = m[m["_merge"] != "both"]
    for _, r in missing.iterrows():
        side = "the new run" if r["_merge"] == "left_only" else "the published summary"
        print(f"missing in {side}: {r['method']} sparsity {r['sparsity']} seed {r['seed']}")
    m = m[m["_merge"] == "both"]
    for c in EXACT:
        if f"{c}_pub" not in m or f"{c}_new" not in m:
            continue
        d = (m[f"{c}_new"] - m[f"{c}_pub"]).abs()
        print(f"{c:24s} max |difference| {d.max():.4g}; rows differing {int((d > 1e-9).sum())} of {len(m)}")
    ratio = (m["time_mean_s_new"] / m["time_mean_s_pub"]).mean()
    print(f"{'time_mean_s':24s} mean ratio new / published {ratio:.3f}")
    col = _spread_column(m)
    outside = 0
    for (method, sparsity), g in m.groupby(["method", "sparsity"]):
        mu, sd = g[f"{col}_pub"].mean(), g[f"{col}_pub"].std(ddof=1) if len(g) > 1 else 0.0
        new_mu = g[f"{col}_new"].mean()
        ok = abs(new_mu - mu) <= sd + 1e-12
        outside += not ok
        if not ok:
            print(f"outside the spread: {method} {sparsity:g}: new {new_mu:.1f} vs published {mu:.1f} ± {sd:.1f}")
    groups = m.groupby(["method", "sparsity"]).ngroups
    print(f"{col.removesuffix('_pct').replace('_', ' ')} within the published mean ± std: {groups - outside} of "
          f"{groups} (method, sparsity) cells")
    return 1 if outside or len(missing) else 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python benchmarks/compare_summary.py PUBLISHED.csv NEW.csv", file=sys.stderr)
        return 2
    try:
        published, new = pd.read_csv(argv[1]), pd.read_csv(argv[2])
        return compare(published, new)
    except (OSError, pd.errors.ParserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
