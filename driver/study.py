"""The study stages after the report: the perturbation-size sweep and publishing.

* ``sweep`` -- certified accuracy and stability against the size of the box (eps_c = eps_b),
  for the dense and the best pruned network: one benchmark and one run per eps under
  ``<out>/sweep/``;
* ``publish`` -- the study's tables and plots copied to a folder meant for git, with a
  report.md (driver/publish.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from usnprune.config import ConfigError, require
from usnprune.export.benchmark import BENCHMARK_FILE, ExportConfig, export_benchmark
from usnprune.pruner.models import network_name
from usnprune.pruner.perturbation import Box

from .plots import plot_sweep
from .publish import publish
from .report import load_run, summary_table
from .stages import Context, Stage
from .verify import VerifyConfig, run_verify


@dataclasses.dataclass
class SweepSection:
    """Which boxes and networks; the other keys of the section are VerifyConfig keys."""

    eps: list[float] = dataclasses.field(default_factory=lambda: [0.02, 0.05, 0.1, 0.15, 0.2])  # eps_c = eps_b
    networks: list[str] | None = None  # categories; default: dense and the best pruned (by certified accuracy)

    def check(self, where: str) -> None:
        require(len(self.eps) >= 1, f"{where}.eps", "give at least one eps")
        for e in self.eps:
            Box(e, e).check(f"{where}.eps")


def best_pruned(ctx: Context) -> str | None:
    """Network name (first seed) of the method x sparsity with the highest mean certified
    accuracy over seeds in the builtin report (certified stability when the benchmark has no
    ground-truth properties); ties go to the higher sparsity."""
    import pandas as pd

    path = ctx.stage_dir("report") / "summary.csv"
    if not path.is_file():
        return None
    s = pd.read_csv(path)
    s = s[~s["method"].isin(["dense", "none"])]
    if "backend" in s and (s["backend"] == "builtin").any():
        s = s[s["backend"] == "builtin"]
    if s.empty:
        return None
    key = "certified_accuracy_pct" if s["certified_accuracy_pct"].notna().any() else "certified_stability_pct"
    agg = s.groupby(["method", "sparsity"])[key].mean().reset_index()
    agg = agg.sort_values([key, "sparsity"], ascending=False)
    return network_name(agg.iloc[0]["method"], float(agg.iloc[0]["sparsity"]), ctx.seeds[0])


def stage_sweep(ctx: Context, sec: SweepSection, cfg: VerifyConfig) -> None:
    import pandas as pd

    exp: ExportConfig = ctx.sections["export"][1] if "export" in ctx.sections else ExportConfig(["-"], "-", "-")
    all_nets = dict(ctx.networks())
    names = sec.networks or [network_name("dense", 0.0, ctx.seeds[0])] + [b for b in [best_pruned(ctx)] if b]
    missing = [n for n in names if n not in all_nets]
    if missing:
        raise ConfigError(f"sweep.networks: unknown network {', '.join(missing)} (known: {', '.join(all_nets)})")
    out = ctx.stage_dir("sweep")
    frames = []
    for eps in sec.eps:
        folder = out / f"eps{eps:g}"
        bench, run = folder / "bench", folder / "run"
        if not (bench / BENCHMARK_FILE).is_file() or ctx.force:
            export_benchmark(dataclasses.replace(
                exp, checkpoints=[str(all_nets[n]) for n in names], categories=names, data=ctx.data,
                out=str(bench), perturbation=Box(eps, eps, exp.perturbation.family), seed=ctx.seeds[0], force=True),
                log=ctx.log)
        if ctx.force:
            ctx.discard_run(run)
        run_verify(bench, run, cfg, resume=True, log=ctx.log)
        frames.append(load_run(run).assign(eps=eps))
    df = pd.concat(frames, ignore_index=True)
    table = pd.concat([summary_table(g).assign(eps=e) for e, g in df.groupby("eps")], ignore_index=True)
    table.to_csv(out / "summary.csv", index=False)
    plot_sweep(table, df, out, cfg.backend)
    cols = ["clean_accuracy_pct", "certified_accuracy_pct", "certified_stability_pct", "time_median_s"]
    ctx.log(table[["network", "eps", *cols, "timeouts"]].round({c: 1 for c in cols}).to_string(index=False))


@dataclasses.dataclass
class PublishSection:
    """Copy the study's tables and plots to a folder meant for git, with a report.md."""

    to: str = "benchmarks/results/study"
    title: str = "usnprune study"


def stage_publish(ctx: Context, sec: PublishSection, _cfg) -> None:
    publish(ctx, Path(sec.to), sec.title)


STUDY = [
    Stage("sweep", stage_sweep, SweepSection, VerifyConfig),
    Stage("publish", stage_publish, PublishSection),
]
