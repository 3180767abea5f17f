"""The pipeline stages of ``usnprune run``: one runner per stage, each over the stage's own
configuration type.

An experiment section holds the keys of the stage's real configuration (``TrainConfig``,
``EvalConfig``, ``PruneConfig``, ``ExportConfig``, ``VerifyConfig``, ...) minus those the
experiment sets itself (data, output folders, seeds, checkpoints), plus a few keys of the
experiment's own (which methods, which backends). So every setting has one default: the
one of its configuration type (``Stage.config``), and the command line reads the same.

Each stage reads what the stages before it wrote under the experiment's ``out`` folder and
writes into ``<out>/<stage>/``; the folders are the experiment's, so train, prune and report
run with ``force`` there (which still replaces only files usnprune wrote). Stages that produce many items (a network per seed, a pruned
network per method x sparsity x seed) skip items that are already complete, so an
interrupted run continues; ``--force`` redoes them. :class:`Context` is the one place that
names every path and every network of an experiment.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from usnprune.config import ConfigError, embedded, from_dict, require
from usnprune.errors import UsnpruneError
from usnprune.export.benchmark import ExportConfig, export_benchmark
from usnprune.files import atomic_write_text
from usnprune.pruner.data.source import DataSource
from usnprune.pruner.data.synthetic import SynthConfig
from usnprune.pruner.evaluate import EvalConfig
from usnprune.pruner.models import CHECKPOINT_NAME, network_name
from usnprune.pruner.prune import METHODS, PruneConfig
from usnprune.pruner.train import TrainConfig
from usnprune.system import progress_enabled
from usnprune.verifier_specs.base import load_backend, resolve_profile

from .report import report
from .runfolder import RUN_FILE
from .verify import VerifyConfig, run_verify


@dataclasses.dataclass
class Stage:
    """A stage of an experiment: ``section`` holds the experiment's own keys of the stage
    (or None), ``config`` is the stage's configuration type whose other keys sit beside them
    (or None), ``set_here`` the keys of ``config`` the experiment sets (placeholders)."""

    name: str
    run: Callable[["Context", Any, Any], None]
    section: type | None = None
    config: type | None = None
    set_here: dict = dataclasses.field(default_factory=dict)

    def load(self, raw: Any, where: str) -> tuple[Any, Any]:
        """(section, config template) from the experiment's mapping for this stage."""
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
        own = {f.name for f in dataclasses.fields(self.section)} if self.section else set()
        if self.config is None:
            return from_dict(self.section, raw, where), None
        section = from_dict(self.section, {k: v for k, v in raw.items() if k in own}, where) if self.section else None
        config = embedded(self.config, {k: v for k, v in raw.items() if k not in own}, where, self.set_here)
        return section, config


@dataclasses.dataclass
class DataSection:
    synth: SynthConfig | None = None  # generate the synthetic dataset into <out>/data
    path: str | None = None  # or use an existing dataset folder (annotations/keypoints_<split>.json, images/<split>/)
    coco: DataSource | None = None  # or standard COCO files: {train: {annotations, image_dir}, test: ..., category}

    def check(self, where: str) -> None:
        given = [k for k in ("synth", "path", "coco") if getattr(self, k) is not None]
        require(len(given) == 1, where, "give exactly one of 'synth', 'path' or 'coco'")


@dataclasses.dataclass
class PruneSection:
    """Which pruned networks: every method x sparsity x seed (``none`` once per seed)."""

    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    sparsities: list[float] = dataclasses.field(default_factory=lambda: [0.5])

    def check(self, where: str) -> None:
        for m in self.methods:
            require(m in METHODS, f"{where}.methods", f"{m!r} is not one of {', '.join(METHODS)}")
        for p in self.sparsities:
            require(0.0 <= p < 1.0, f"{where}.sparsities", f"every sparsity must be in [0, 1), got {p}")


@dataclasses.dataclass
class ExportSection:
    """Which networks go into the benchmark <out>/export/bench (one category each)."""

    dense: bool = True  # include the dense networks
    methods: list[str] | None = None  # pruned networks to include (default: all of the prune stage)


@dataclasses.dataclass
class VerifySection:
    """Verify <out>/export/bench into <out>/verify/<backend> (resumable), once per backend."""

    backends: list[str] = dataclasses.field(default_factory=lambda: ["builtin"])
    skip_unavailable: bool = True  # a backend that is not installed (abcrown) is skipped with a note

    def check(self, where: str) -> None:
        require(len(self.backends) >= 1, f"{where}.backends", "give at least one backend")
        for name in self.backends:  # an unknown name is a typo, never "not installed here"
            try:
                resolve_profile(name)
            except ConfigError as e:
                raise ConfigError(f"{where}.backends: {e}") from None


@dataclasses.dataclass
class ReportSection:
    sheets: bool = True


@dataclasses.dataclass
class Context:
    """What the stages of one experiment share: every path and network name is made here."""

    out: Path
    sections: dict[str, tuple[Any, Any]]  # stage -> (section, config template)
    seeds: list[int]
    force: bool = False
    log: Callable[[str], None] = print

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    @property
    def data(self) -> str | DataSource:
        """What every stage reads: a dataset folder, or the COCO files of ``data.coco``."""
        sec: DataSection = self.sections["data"][0]
        if sec.coco is not None:
            return sec.coco
        return sec.path if sec.path else str(self.out / "data")

    def dense_checkpoint(self, seed: int) -> Path:
        return self.stage_dir("train") / f"seed{seed}" / CHECKPOINT_NAME

    def prune_runs(self) -> list[tuple[str, float, int, Path]]:
        """(method, sparsity, seed, folder) of every pruned network, in a stable order."""
        if "prune" not in self.sections:
            return []
        sec: PruneSection = self.sections["prune"][0]
        return [(m, p, seed, self.stage_dir("prune") / network_name(m, p, seed))
                for seed in self.seeds for m in sec.methods for p in ([0.0] if m == "none" else sec.sparsities)]

    def networks(self) -> list[tuple[str, Path]]:
        """(name, checkpoint) of every network the export stage puts in the benchmark."""
        sec: ExportSection = self.sections["export"][0] if "export" in self.sections else ExportSection()
        nets = [(network_name("dense", 0.0, s), self.dense_checkpoint(s)) for s in self.seeds] if sec.dense else []
        nets += [(folder.name, folder / CHECKPOINT_NAME) for method, _, _, folder in self.prune_runs()
                 if sec.methods is None or method in sec.methods]
        return nets

    @property
    def bench(self) -> Path:
        return self.stage_dir("export") / "bench"

    def verify_runs(self) -> list[Path]:
        return sorted(p for p in self.stage_dir("verify").glob("*") if (p / RUN_FILE).is_file())

    def discard_run(self, run: Path) -> None:
        """Remove a stale run folder of this experiment (only one usnprune wrote: it has run.json)."""
        if (run / RUN_FILE).is_file():
            shutil.rmtree(run)


# ---- stages -------------------------------------------------------------------------


def stage_data(ctx: Context, sec: DataSection, _cfg) -> None:
    if sec.path:
        if not Path(sec.path).is_dir():
            raise ConfigError(f"data.path: {sec.path} is not a folder")
        return
    if sec.coco is not None:
        for split in ("train", "test"):
            files = sec.coco.files(split)
            if files is not None and not Path(files.annotations).is_file():
                raise ConfigError(f"data.coco.{split}.annotations: {files.annotations}: no such annotation file")
        return
    from usnprune.pruner.data.synthetic import generate

    s = sec.synth
    generate(ctx.out / "data", n_train=s.n_train, n_test=s.n_test, seed=s.seed, size=s.size, channels=s.channels,
             force=True, progress=progress_enabled())


def stage_train(ctx: Context, _sec, cfg: TrainConfig) -> None:
    """One dense network per seed (resumable: a seed whose checkpoint exists is skipped)."""
    from usnprune.pruner.train import train

    for seed in ctx.seeds:
        if ctx.dense_checkpoint(seed).is_file() and not ctx.force:
            ctx.log(f"  seed {seed}: {ctx.dense_checkpoint(seed)} exists")
            continue
        metrics = train(dataclasses.replace(cfg, seed=seed, data=ctx.data,
                                            out=str(ctx.dense_checkpoint(seed).parent)), log=ctx.log, force=True)
        ctx.log(f"  seed {seed}: dense network, clean {_fmt_metrics(metrics['test'])}")


def stage_eval(ctx: Context, _sec, cfg: EvalConfig) -> None:
    from usnprune.pruner.data.source import load
    from usnprune.pruner.evaluate import evaluate, metrics_table
    from usnprune.pruner.models import load_checkpoint

    out = ctx.stage_dir("eval")
    out.mkdir(parents=True, exist_ok=True)
    box = cfg.perturbation
    for seed in ctx.seeds:
        model, _ = load_checkpoint(ctx.dense_checkpoint(seed))
        box.fam.check_channels(model.arch.in_channels, "eval.perturbation.family")
        ds = load(ctx.data, cfg.split, model.arch.input_size, model.arch.in_channels)
        res = evaluate(model, ds, deltas=cfg.deltas, box=box, grid=cfg.grid)
        metrics_table(res, {"network": "dense", "seed": seed}).to_csv(out / f"dense_seed{seed}_keypoints.csv", index=False)
        atomic_write_text(out / f"dense_seed{seed}.json", json.dumps(res["overall"], indent=2))
        ctx.log(f"  seed {seed}: dense network under {box.family} eps_c={box.eps_c}, eps_b={box.eps_b}: "
                f"{_fmt_metrics(res['overall'])}")


def _fmt_metrics(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items() if "pck" in k or k == "mean_error_px")


def stage_prune(ctx: Context, _sec: PruneSection, cfg: PruneConfig) -> None:
    import pandas as pd
    from usnprune.pruner.prune import prune

    rows = []
    for method, sparsity, seed, folder in ctx.prune_runs():
        report_path = folder / "report.json"
        if report_path.is_file() and (folder / CHECKPOINT_NAME).is_file() and not ctx.force:
            rep = json.loads(report_path.read_text())
        else:
            rep = prune(dataclasses.replace(cfg, checkpoint=str(ctx.dense_checkpoint(seed)), data=ctx.data,
                                            out=str(folder), method=method, sparsity=sparsity, seed=seed), log=ctx.log,
                        force=True)
        rows.append({"method": method, "sparsity": sparsity, "seed": seed, "folder": str(folder),
                     "units": rep["units_after"], "parameters": rep["parameters"], "flops": rep["flops"],
                     "fidelity_px": rep["fidelity_px"], "prune_seconds": rep["prune_seconds"], **rep["test"]})
    pd.DataFrame(rows).to_csv(ctx.stage_dir("prune") / "summary.csv", index=False)


def stage_export(ctx: Context, _sec: ExportSection, cfg: ExportConfig) -> None:
    nets = ctx.networks()
    if not nets:
        raise ConfigError("export: no network to export (dense: false and no prune stage)")
    export_benchmark(dataclasses.replace(cfg, checkpoints=[str(p) for _, p in nets], categories=[c for c, _ in nets],
                                         data=ctx.data, out=str(ctx.bench), seed=ctx.seeds[0], force=True),
                     log=ctx.log)


def stage_verify(ctx: Context, sec: VerifySection, cfg: VerifyConfig) -> None:
    for name in sec.backends:
        run = ctx.stage_dir("verify") / Path(name).stem
        if ctx.force:
            ctx.discard_run(run)
        try:
            load_backend(name, **cfg.options).check_available()
        except UsnpruneError as e:
            if not sec.skip_unavailable:
                raise
            ctx.log(f"  skipping {name}: {e}")
            continue
        run_verify(ctx.bench, run, dataclasses.replace(cfg, backend=name), resume=True, log=ctx.log)


def stage_report(ctx: Context, sec: ReportSection, _cfg) -> None:
    runs = ctx.verify_runs()
    if not runs:
        raise ConfigError("report: no verify run to report on")
    res = report(runs, ctx.stage_dir("report"), sheets=sec.sheets, log=ctx.log, force=True)
    if res["problems"]:
        raise ConfigError("report: a certified share above a share it cannot exceed: " + "; ".join(res["problems"]))


PIPELINE = [
    Stage("data", stage_data, DataSection),
    Stage("train", stage_train, None, TrainConfig, {"data": "-", "out": "-", "seed": 0}),
    Stage("eval", stage_eval, None, EvalConfig),
    Stage("prune", stage_prune, PruneSection, PruneConfig,
          {"checkpoint": "-", "data": "-", "out": "-", "method": "none", "sparsity": 0.0, "seed": 0}),
    Stage("export", stage_export, ExportSection, ExportConfig,
          {"checkpoints": ["-"], "categories": None, "data": "-", "out": "-", "seed": 0, "force": True,
           "onnx": [], "onnx_normalized": False, "builtin_check": True}),  # the experiment's own networks only
    Stage("verify", stage_verify, VerifySection, VerifyConfig, {"backend": "builtin"}),
    Stage("report", stage_report, ReportSection),
]
