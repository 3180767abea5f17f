"""The stages of ``usnprune run``: one function and one section type per stage.

Each stage reads what the stages before it wrote under the experiment's ``out`` folder and
writes into ``<out>/<stage>/``. Stages that produce many items (a network per seed, a pruned
network per method x sparsity x seed) skip items that are already complete, so an
interrupted run continues; ``--force`` redoes them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from pruner.config import ConfigError, from_dict, require

STAGES = ("data", "train", "eval", "prune", "export", "verify", "report", "sweep", "publish")


@dataclasses.dataclass
class SynthSection:
    n_train: int = 4000
    n_test: int = 400
    seed: int = 0
    size: int = 32


@dataclasses.dataclass
class DataSection:
    synth: SynthSection | None = None  # generate the synthetic dataset into <out>/data
    path: str | None = None  # or use an existing COCO-keypoints folder

    def check(self, where: str) -> None:
        require((self.synth is None) != (self.path is None), where, "give exactly one of 'synth' or 'path'")


@dataclasses.dataclass
class EvalSection:
    eps_c: float = 0.1
    eps_b: float = 0.1
    deltas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    grid: int = 11

    def check(self, where: str) -> None:
        from pruner.perturbation import check_eps

        check_eps(self.eps_c, self.eps_b, where)
        for d in self.deltas:
            require(d > 0, f"{where}.deltas", f"every delta must be > 0, got {d}")
        require(self.grid >= 2, f"{where}.grid", f"must be >= 2, got {self.grid}")


@dataclasses.dataclass
class Context:
    """What the stages of one experiment share."""

    out: Path
    sections: dict[str, Any]
    seeds: list[int]
    force: bool = False
    log: Callable[[str], None] = print

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    @property
    def data_dir(self) -> Path:
        sec: DataSection = self.sections["data"]
        return Path(sec.path) if sec.path else self.out / "data"

    def dense_checkpoint(self, seed: int) -> Path:
        return self.out / "train" / f"seed{seed}" / "model.pt"

    @property
    def input_size(self) -> int | None:
        sec: DataSection = self.sections["data"]
        return sec.synth.size if sec.synth is not None else None


def _discard_run(run: Path) -> None:
    """Remove a stale run folder of this experiment (only one usnprune wrote: it has run.json)."""
    import shutil

    if (run / "run.json").is_file():
        shutil.rmtree(run)


def _progress() -> bool:
    import os

    return os.environ.get("USNPRUNE_NO_PROGRESS") != "1"


# ---- stages -------------------------------------------------------------------------


def stage_data(ctx: Context, sec: DataSection) -> None:
    if sec.path:
        if not Path(sec.path).is_dir():
            raise ConfigError(f"data.path: {sec.path} is not a folder")
        return
    from pruner.data.synthetic import generate

    s = sec.synth
    generate(ctx.out / "data", n_train=s.n_train, n_test=s.n_test, seed=s.seed, size=s.size, force=True,
             progress=_progress())


def stage_train(ctx: Context, sec: dict) -> None:
    """One dense network per seed (resumable: a seed whose checkpoint exists is skipped)."""
    from pruner.train import TrainConfig, train

    for seed in ctx.seeds:
        if ctx.dense_checkpoint(seed).is_file() and not ctx.force:
            ctx.log(f"  seed {seed}: {ctx.dense_checkpoint(seed)} exists")
            continue
        raw = dict(sec, seed=seed, data=str(ctx.data_dir), out=str(ctx.dense_checkpoint(seed).parent))
        if ctx.input_size is not None:
            raw.setdefault("input_size", ctx.input_size)
        cfg = from_dict(TrainConfig, raw, where="train")
        metrics = train(cfg, log=ctx.log)
        ctx.log(f"  seed {seed}: dense network, clean {_fmt_metrics(metrics['test'])}")


def stage_eval(ctx: Context, sec: EvalSection) -> None:
    from pruner.data.coco import load_split
    from pruner.evaluate import evaluate, metrics_table
    from pruner.models import load_checkpoint
    from pruner.perturbation import Box

    out = ctx.stage_dir("eval")
    out.mkdir(parents=True, exist_ok=True)
    for seed in ctx.seeds:
        model, _ = load_checkpoint(ctx.dense_checkpoint(seed))
        ds = load_split(ctx.data_dir, "test", model.arch.input_size)
        res = evaluate(model, ds, deltas=sec.deltas, box=Box(sec.eps_c, sec.eps_b), grid=sec.grid)
        metrics_table(res, {"network": "dense", "seed": seed}).to_csv(out / f"dense_seed{seed}_keypoints.csv", index=False)
        (out / f"dense_seed{seed}.json").write_text(json.dumps(res["overall"], indent=2))
        ctx.log(f"  seed {seed}: dense network under eps_c={sec.eps_c}, eps_b={sec.eps_b}: {_fmt_metrics(res['overall'])}")


def _fmt_metrics(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items() if "pck" in k or k == "mean_error_px")


@dataclasses.dataclass
class PruneSection:
    """Every method x sparsity x seed; other keys are PruneConfig keys shared by all runs."""

    methods: list[str] = dataclasses.field(default_factory=lambda: ["none", "random", "magnitude", "activation", "usn", "usn_w"])
    sparsities: list[float] = dataclasses.field(default_factory=lambda: [0.5])
    options: dict = dataclasses.field(default_factory=dict)

    def check(self, where: str) -> None:
        from pruner.prune import METHODS

        for m in self.methods:
            require(m in METHODS, f"{where}.methods", f"{m!r} is not one of {', '.join(METHODS)}")
        for p in self.sparsities:
            require(0.0 <= p < 1.0, f"{where}.sparsities", f"every sparsity must be in [0, 1), got {p}")
        bad = {"checkpoint", "data", "out", "method", "sparsity", "seed"} & set(self.options)
        require(not bad, f"{where}.options", f"{', '.join(sorted(bad))} are set by the experiment")
        from pruner.prune import PruneConfig

        from_dict(PruneConfig, dict(self.options, checkpoint="-", data="-", out="-"), f"{where}.options")


def prune_runs(ctx: Context, sec: PruneSection) -> list[tuple[str, float, int, Path]]:
    """(method, sparsity, seed, folder) of every pruned network, in a stable order."""
    runs = []
    for seed in ctx.seeds:
        for m in sec.methods:
            for p in ([0.0] if m == "none" else sec.sparsities):
                runs.append((m, p, seed, ctx.stage_dir("prune") / f"{m}-{p:g}-seed{seed}"))
    return runs


def stage_prune(ctx: Context, sec: PruneSection) -> None:
    import pandas as pd

    from pruner.prune import PruneConfig, prune

    rows = []
    for method, sparsity, seed, folder in prune_runs(ctx, sec):
        report_path = folder / "report.json"
        if report_path.is_file() and (folder / "model.pt").is_file() and not ctx.force:
            report = json.loads(report_path.read_text())
        else:
            raw = dict(sec.options, checkpoint=str(ctx.dense_checkpoint(seed)), data=str(ctx.data_dir),
                       out=str(folder), method=method, sparsity=sparsity, seed=seed)
            cfg = from_dict(PruneConfig, raw, where="prune.options")
            report = prune(cfg, log=ctx.log)
        rows.append({"method": method, "sparsity": sparsity, "seed": seed, "folder": str(folder),
                     "units": report["units_after"], "parameters": report["parameters"],
                     "flops": report["flops"], "fidelity_px": report["fidelity_px"],
                     "prune_seconds": report["prune_seconds"], **report["test"]})
    pd.DataFrame(rows).to_csv(ctx.stage_dir("prune") / "summary.csv", index=False)


@dataclasses.dataclass
class ExportSection:
    """One benchmark folder <out>/export/bench, a category per network (dense + pruned)."""

    eps_c: float = 0.1
    eps_b: float = 0.1
    deltas: list[float] = dataclasses.field(default_factory=lambda: [0.5])
    images: int = 5
    pool: int | None = None
    timeout: float = 60.0
    reference: str = "prediction"
    gzip: bool = False
    skip_violated: bool = False
    dense: bool = True  # include the dense networks
    methods: list[str] | None = None  # pruned networks to include (default: all of the prune stage)

    def check(self, where: str) -> None:
        from export.benchmark import ExportConfig

        ExportConfig(checkpoints=["-"], data="-", out="-", eps_c=self.eps_c, eps_b=self.eps_b, deltas=self.deltas,
                     images=self.images, pool=self.pool, timeout=self.timeout, reference=self.reference).check(where)
        require(self.reference in ("gt", "prediction"), f"{where}.reference", "must be gt or prediction")


def exported_networks(ctx: Context, sec: ExportSection) -> list[tuple[str, Path]]:
    """(category, checkpoint) of every network the export stage puts in the benchmark."""
    nets = []
    if sec.dense:
        nets += [(f"dense-seed{s}", ctx.dense_checkpoint(s)) for s in ctx.seeds]
    if "prune" in ctx.sections:
        for method, sparsity, seed, folder in prune_runs(ctx, ctx.sections["prune"]):
            if sec.methods is None or method in sec.methods:
                nets.append((folder.name, folder / "model.pt"))
    return nets


def stage_export(ctx: Context, sec: ExportSection) -> None:
    from export.benchmark import ExportConfig, export_benchmark

    nets = exported_networks(ctx, sec)
    if not nets:
        raise ConfigError("export: no network to export (dense: false and no prune stage)")
    cfg = ExportConfig(
        checkpoints=[str(p) for _, p in nets], categories=[c for c, _ in nets], data=str(ctx.data_dir),
        out=str(ctx.stage_dir("export") / "bench"), eps_c=sec.eps_c, eps_b=sec.eps_b, deltas=sec.deltas,
        images=sec.images, pool=sec.pool, timeout=sec.timeout, seed=ctx.seeds[0], reference=sec.reference,
        gzip=sec.gzip, skip_violated=sec.skip_violated, force=True)
    export_benchmark(cfg, log=ctx.log)


@dataclasses.dataclass
class VerifySection:
    """Verify <out>/export/bench into <out>/verify/<backend> (resumable)."""

    backends: list[str] = dataclasses.field(default_factory=lambda: ["builtin"])
    workers: int = 1
    timeout: float | None = None  # override the benchmark's per-instance timeout
    executor: str = "local"
    chunk_size: int | None = None
    options: dict = dataclasses.field(default_factory=dict)  # backend option overrides
    executor_options: dict = dataclasses.field(default_factory=dict)  # e.g. slurm partition, time_min
    skip_unavailable: bool = True  # a backend that is not installed (abcrown) is skipped with a note

    def check(self, where: str) -> None:
        require(self.workers >= 1, f"{where}.workers", f"must be >= 1, got {self.workers}")
        require(self.timeout is None or self.timeout > 0, f"{where}.timeout", "must be > 0")
        require(self.executor in ("serial", "local", "slurm"), f"{where}.executor", "must be serial, local or slurm")
        if self.executor == "slurm":
            from .slurm import parse_options

            parse_options(self.executor_options, f"{where}.executor_options")
        else:
            require(not self.executor_options, f"{where}.executor_options", "only the slurm executor takes options")
        require(len(self.backends) >= 1, f"{where}.backends", "give at least one backend")


def stage_verify(ctx: Context, sec: VerifySection) -> None:
    from pruner.errors import UsnpruneError
    from verifier_specs.base import load_backend

    from .verify import verify

    for name in sec.backends:
        run = ctx.stage_dir("verify") / Path(name).stem
        if ctx.force:
            _discard_run(run)
        try:
            load_backend(name, **sec.options).check_available()
        except UsnpruneError as e:
            if not sec.skip_unavailable:
                raise
            ctx.log(f"  skipping {name}: {e}")
            continue
        verify(ctx.stage_dir("export") / "bench", run, backend=name, workers=sec.workers, timeout=sec.timeout,
               resume=True, executor=sec.executor, options=sec.options, chunk_size=sec.chunk_size,
               executor_options=sec.executor_options, log=ctx.log)


@dataclasses.dataclass
class ReportSection:
    sheets: bool = True


def stage_report(ctx: Context, sec: ReportSection) -> None:
    from .report import report

    runs = sorted(p for p in ctx.stage_dir("verify").glob("*") if (p / "run.json").is_file())
    if not runs:
        raise ConfigError("report: no verify run to report on")
    res = report(runs, ctx.stage_dir("report"), sheets=sec.sheets, log=ctx.log)
    if res["problems"]:
        raise ConfigError("report: certified PCK above the empirical ceiling: " + "; ".join(res["problems"]))


def check_train_section(sec: dict, where: str) -> None:
    """Validate the train section up front (it is a TrainConfig minus data/out/seed)."""
    from pruner.train import TrainConfig

    bad = {"data", "out", "seed"} & set(sec)
    require(not bad, where, f"{', '.join(sorted(bad))} are set by the experiment")
    from_dict(TrainConfig, dict(sec, data="-", out="-"), where)


@dataclasses.dataclass
class SweepSection:
    """Certified PCK against the perturbation size, for the dense and the best pruned network."""

    eps: list[float] = dataclasses.field(default_factory=lambda: [0.02, 0.05, 0.1, 0.15, 0.2])  # eps_c = eps_b
    networks: list[str] | None = None  # categories; default: dense and the best pruned (by certified PCK)
    backend: str = "builtin"
    workers: int = 2
    timeout: float | None = None  # default: the export section's

    def check(self, where: str) -> None:
        from pruner.perturbation import check_eps

        require(len(self.eps) >= 1, f"{where}.eps", "give at least one eps")
        for e in self.eps:
            check_eps(e, e, f"{where}.eps")
        require(self.workers >= 1, f"{where}.workers", "must be >= 1")


def best_pruned(ctx: Context) -> str | None:
    """Category (first seed) of the method x sparsity with the highest mean certified PCK
    over seeds in the builtin report; ties go to the higher sparsity."""
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
    agg = s.groupby(["method", "sparsity"])["certified_pck"].mean().reset_index()
    agg = agg.sort_values(["certified_pck", "sparsity"], ascending=False)
    m, p = agg.iloc[0]["method"], float(agg.iloc[0]["sparsity"])
    return f"{m}-{p:g}-seed{ctx.seeds[0]}"


def stage_sweep(ctx: Context, sec: SweepSection) -> None:
    import pandas as pd

    from export.benchmark import ExportConfig, export_benchmark

    from .report import load_run, plot_vs, summary_table
    from .verify import verify

    exp: ExportSection = ctx.sections.get("export") or ExportSection()
    all_nets = dict(exported_networks(ctx, exp))
    names = sec.networks or [f"dense-seed{ctx.seeds[0]}"] + [b for b in [best_pruned(ctx)] if b]
    missing = [n for n in names if n not in all_nets]
    if missing:
        raise ConfigError(f"sweep.networks: unknown network {', '.join(missing)} (known: {', '.join(all_nets)})")
    out = ctx.stage_dir("sweep")
    frames = []
    for eps in sec.eps:
        folder = out / f"eps{eps:g}"
        bench, run = folder / "bench", folder / "run"
        if not (bench / "benchmark.json").is_file() or ctx.force:
            export_benchmark(ExportConfig(
                checkpoints=[str(all_nets[n]) for n in names], categories=names, data=str(ctx.data_dir), out=str(bench),
                eps_c=eps, eps_b=eps, deltas=exp.deltas, images=exp.images, pool=exp.pool,
                timeout=sec.timeout or exp.timeout, seed=ctx.seeds[0], reference=exp.reference, force=True), log=ctx.log)
        if ctx.force:
            _discard_run(run)
        verify(bench, run, backend=sec.backend, workers=sec.workers, resume=True, log=ctx.log)
        frames.append(load_run(run).assign(eps=eps))
    df = pd.concat(frames, ignore_index=True)
    table = pd.concat([summary_table(g).assign(eps=e) for e, g in df.groupby("eps")], ignore_index=True)
    table.to_csv(out / "summary.csv", index=False)
    plot_vs(table, "eps", "network", "certified_pck", "eps_c = eps_b", "certified PCK", out / "certified_pck_vs_eps.png")
    plot_vs(table, "eps", "network", "time_mean_s", "eps_c = eps_b", "mean verification time per instance (s)",
            out / "time_vs_eps.png", logy=True)
    ctx.log(table[["network", "eps", "certified_pck", "empirical_robust_pck", "time_mean_s", "timeouts"]].to_string(index=False))


@dataclasses.dataclass
class PublishSection:
    """Copy the study's tables and plots to a folder meant for git, with a report.md."""

    to: str = "benchmarks/results/study"
    title: str = "usnprune study"


def stage_publish(ctx: Context, sec: PublishSection) -> None:
    from .publish import publish

    publish(ctx, Path(sec.to), sec.title)


# Each entry: (section type or None for a free mapping passed to the stage, runner).
STAGE_TABLE: dict[str, tuple[Any, Callable]] = {
    "data": (DataSection, stage_data),
    "train": (None, stage_train),
    "eval": (EvalSection, stage_eval),
    "prune": (PruneSection, stage_prune),
    "export": (ExportSection, stage_export),
    "verify": (VerifySection, stage_verify),
    "report": (ReportSection, stage_report),
    "sweep": (SweepSection, stage_sweep),
    "publish": (PublishSection, stage_publish),
}


