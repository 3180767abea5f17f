"""Does a new run reproduce a published study summary?

    python benchmarks/compare_summary.py benchmarks/results/small/summary.csv NEW/summary.csv

Matches rows on (method, sparsity, seed) and prints, per accuracy or verdict column, the
largest difference and how many rows differ; then, per (method, sparsity), whether the new
mean certified PCK lies within the published mean ± the published standard deviation over
seeds (the spread docs/results.md states). Exit status 1 when a row is missing or a mean
falls outside its spread, else 0. Times are compared as a ratio only (they are machine noise).
"""

from __future__ import annotations

import sys

import pandas as pd

KEY = ["method", "sparsity", "seed"]
EXACT = ["parameters", "clean_pck_test", "stable_pck_test", "robust_pck_test", "empirical_robust_pck",
         "certified_pck", "timeouts", "unknown", "errors", "fidelity_px"]


def compare(published: pd.DataFrame, new: pd.DataFrame) -> int:
    m = published.merge(new, on=KEY, how="outer", suffixes=("_pub", "_new"), indicator=True)
    missing = m[m["_merge"] != "both"]
    for _, r in missing.iterrows():
        side = "the new run" if r["_merge"] == "left_only" else "the published summary"
        print(f"missing in {side}: {r['method']} sparsity {r['sparsity']} seed {r['seed']}")
    m = m[m["_merge"] == "both"]
    for c in EXACT:
        if f"{c}_pub" not in m:
            continue
        d = (m[f"{c}_new"] - m[f"{c}_pub"]).abs()
        print(f"{c:22s} max |difference| {d.max():.4g}; rows differing {int((d > 1e-9).sum())} of {len(m)}")
    ratio = (m["time_mean_s_new"] / m["time_mean_s_pub"]).mean()
    print(f"{'time_mean_s':22s} mean ratio new / published {ratio:.3f}")
    outside = 0
    for (method, sparsity), g in m.groupby(["method", "sparsity"]):
        mu, sd = g["certified_pck_pub"].mean(), g["certified_pck_pub"].std(ddof=1) if len(g) > 1 else 0.0
        new_mu = g["certified_pck_new"].mean()
        ok = abs(new_mu - mu) <= sd + 1e-12
        outside += not ok
        if not ok:
            print(f"outside the spread: {method} {sparsity:g}: new {new_mu:.3f} vs published {mu:.3f} ± {sd:.3f}")
    groups = m.groupby(["method", "sparsity"]).ngroups
    print(f"certified PCK within the published mean ± std: {groups - outside} of {groups} (method, sparsity) cells")
    return 1 if outside or len(missing) else 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python benchmarks/compare_summary.py PUBLISHED.csv NEW.csv", file=sys.stderr)
        return 2
    try:
        published, new = pd.read_csv(argv[1]), pd.read_csv(argv[2])
    except (OSError, pd.errors.ParserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return compare(published, new)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
