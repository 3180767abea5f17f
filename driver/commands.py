"""What each ``usnprune`` command does with its parsed arguments: build the stage's
configuration (naming the option as typed when a value is wrong) and call the Python API.
The parser is in :mod:`usnprune.driver.cli`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from usnprune.config import from_dict, load_yaml
from usnprune.errors import ConfigError
from usnprune.files import atomic_write
from usnprune.system import progress_enabled


def _box(args):
    """The box from --eps-contrast/--eps-brightness; an error names the flag."""
    from usnprune.pruner.perturbation import Box, family

    family(args.family, "--family")
    try:
        return Box.make(args.eps_contrast, args.eps_brightness, args.family, where="box")
    except ConfigError as e:
        msg = str(e).replace("box.eps_c:", f"--eps-contrast {args.eps_contrast}:")
        raise ConfigError(msg.replace("box.eps_b:", f"--eps-brightness {args.eps_brightness}:")) from None


def _files(annotations, image_dir, flag: str) -> dict | None:
    if annotations is None and image_dir is None:
        return None
    if annotations is None or image_dir is None:
        raise ConfigError(f"--{flag}annotations and --{flag}image-dir go together (give both)")
    return {"annotations": annotations, "image_dir": image_dir}


def _data(args, split: str | None = None):
    """The data a command reads: ``--data DIR`` or ``--annotations FILE --image-dir DIR``
    (``split``: the split those files are, for commands that read one), plus
    ``--category``; None when the command line names none (a config file's data stays)."""
    files = _files(args.annotations, args.image_dir, "")
    test = _files(getattr(args, "test_annotations", None), getattr(args, "test_image_dir", None), "test-")
    if files is not None and getattr(args, "data", None):
        raise ConfigError("give either --data DIR or --annotations FILE --image-dir DIR, not both")
    if test is not None and files is None:
        raise ConfigError("--test-annotations needs --annotations and --image-dir (the training files)")
    if files is None:
        if getattr(args, "data", None) is None:
            return None
        return args.data if args.coco_category is None else {"folder": args.data, "category": args.coco_category}
    src = {split or "train": files, "category": args.coco_category}
    if test is not None:
        src["test"] = test
    return src


def _split(args) -> tuple[object, str]:
    """(data, split) for a command that reads one split (eval, export)."""
    data = _data(args, "test")
    if data is None:
        raise ConfigError("give the data: --data DIR, or --annotations FILE.json --image-dir DIR")
    from usnprune.pruner.data.source import DataSource

    if isinstance(data, dict) and "folder" not in data:
        if args.split is not None:
            raise ConfigError("--split picks a split of a --data folder; with --annotations the file is the data")
        return from_dict(DataSource, data, "--annotations"), "test"
    if isinstance(data, dict):
        data = from_dict(DataSource, data, "--data")
    return data, args.split or "test"


# ---- commands -----------------------------------------------------------------------


def cmd_data_synth(args) -> int:
    from usnprune.pruner.data.synthetic import generate

    out = generate(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, size=args.size,
                   channels=args.channels, force=args.force, progress=None if progress_enabled() else False)
    print(f"wrote a synthetic COCO-keypoints dataset to {out}")
    return 0


def cmd_train(args) -> int:
    from usnprune.pruner.models import CHECKPOINT_NAME
    from usnprune.pruner.train import TrainConfig, train

    raw = load_yaml(args.config)
    data = _data(args)
    if data is not None:
        raw["data"] = data
    if args.out:
        raw["out"] = args.out
    cfg = from_dict(TrainConfig, raw, where=str(args.config))
    if args.family is not None:
        from usnprune.pruner.perturbation import Box, family

        family(args.family, "--family")
        aug = cfg.augment.perturbation
        cfg.augment.perturbation = Box.make(aug.eps_c, aug.eps_b, args.family, where="--family")
    metrics = train(cfg, force=args.force)
    print(json.dumps(metrics, indent=2))
    print(f"checkpoint: {Path(cfg.out) / CHECKPOINT_NAME}")
    return 0


def cmd_eval(args) -> int:
    from usnprune.pruner.data.source import load
    from usnprune.pruner.evaluate import EvalConfig, evaluate, metrics_table
    from usnprune.pruner.models import load_checkpoint
    from usnprune.pruner.prune import check_keypoints

    data, split = _split(args)
    cfg = EvalConfig(perturbation=_box(args), deltas=args.delta, grid=args.grid, split=split)
    cfg.check("eval")
    out = Path(args.out) if args.out else None
    if out is not None:  # before the work: the table goes to one file the user named
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a folder; name the CSV file to write")
        if out.exists() and not args.force:
            raise ConfigError(f"--out {out}: exists; pass --force to replace it")
        if out.resolve() in (Path(args.checkpoint).resolve(),):
            raise ConfigError(f"--out {out}: is the checkpoint; choose another file")
    model, meta = load_checkpoint(args.checkpoint)
    cfg.perturbation.fam.check_channels(model.arch.in_channels, "--family")
    ds = load(data, cfg.split, model.arch.input_size, model.arch.in_channels)
    check_keypoints(model, ds, args.checkpoint, args.data or args.annotations)
    res = evaluate(model, ds, deltas=cfg.deltas, box=cfg.perturbation, grid=cfg.grid)
    df = metrics_table(res, {"checkpoint": str(args.checkpoint)})
    if out is not None:
        atomic_write(out, lambda tmp: df.to_csv(tmp, index=False))
        print(f"wrote {out}")
    overall = res["overall"]
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in overall.items()))
    return 0


def cmd_prune(args) -> int:
    from usnprune.pruner.models import CHECKPOINT_NAME
    from usnprune.pruner.prune import analyze, load_prune_config

    cfg = load_prune_config(args.config, checkpoint=args.checkpoint, data=_data(args), out=args.out,
                            method=args.method, sparsity=args.sparsity, seed=args.seed, family=args.family)
    if args.analyze_only:
        # its own folder: the analysis describes the checkpoint, not a pruned network
        out = Path(args.out) if args.out else Path(f"{cfg.out.rstrip('/')}-analysis")
        rows = analyze(cfg.checkpoint, cfg.data, str(out), cfg.perturbation, cfg.calibration.images,
                       cfg.calibration.perturbations, cfg.seed, force=args.force)
        for r in rows:
            print(f"{r['layer']:>6}: {r['units']:4d} units, mean USN {r['mean_usn']:.3f}, "
                  f"unstable {r['unstable_share']:.1%}, looseness share {r['looseness_share']:.1%}")
        print(f"wrote {out / 'analysis.csv'} and {out / 'analysis.png'}")
        return 0
    from usnprune.pruner.prune import prune

    prune(cfg, force=args.force)
    print(f"checkpoint: {Path(cfg.out) / CHECKPOINT_NAME}; report: {Path(cfg.out) / 'report.json'}")
    return 0


def cmd_export(args) -> int:
    from usnprune.export.benchmark import ExportConfig, export_benchmark

    if not args.checkpoint and not args.onnx:
        raise ConfigError("give the networks: --checkpoint MODEL.pt ... and/or --onnx MODEL.onnx ...")
    if args.onnx_normalized and not args.onnx:
        raise ConfigError("--onnx-normalized describes --onnx models; give --onnx MODEL.onnx")
    data, split = _split(args)
    cfg = ExportConfig(
        checkpoints=args.checkpoint or [], onnx=args.onnx or [], onnx_normalized=args.onnx_normalized,
        builtin_check=not args.no_builtin_check, categories=args.category, data=data, out=args.out,
        perturbation=_box(args), deltas=args.delta, images=args.images, pool=args.pool,
        timeout=args.timeout, seed=args.seed, reference=args.reference, gzip=args.gzip,
        skip_violated=args.skip_violated, split=split, vnnlib_version=args.vnnlib_version, force=args.force)
    try:
        cfg.check("export")
    except ConfigError as e:  # name the flag the user typed
        msg = str(e)
        for key, flag in EXPORT_FLAGS.items():
            msg = msg.replace(f"export.{key}:", f"{flag}:")
        raise ConfigError(msg) from None
    export_benchmark(cfg)
    return 0


EXPORT_FLAGS = {"categories": "--category", "deltas": "--delta", "delta": "--delta", "images": "--images",
                "pool": "--pool", "timeout": "--timeout", "checkpoints": "--checkpoint"}


def _parse_options(items: list[str] | None, flag: str = "--option") -> dict:
    """KEY=VALUE pairs (values parsed as YAML scalars) for backend/executor options."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"{flag} {item!r}: the key is empty (expected KEY=VALUE)")
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"{flag} {item!r}: the value is not a YAML scalar ({getattr(e, 'problem', e)})") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} {item!r}: the value must be finite")
        out[k.strip()] = value
    return out


def cmd_verify(args) -> int:
    from .verify import VerifyConfig, run_verify

    executor_options = _parse_options(args.sbatch, "--sbatch")
    for key in ("partition", "time_min", "gpus_per_task", "cpus_per_task", "account", "mem_gb"):
        val = getattr(args, key, None)
        if val is not None:
            executor_options[key] = val
    cfg = VerifyConfig(backend=args.backend, workers=args.workers, timeout=args.timeout, executor=args.executor,
                       chunk_size=args.chunk_size, options=_parse_options(args.option),
                       executor_options=executor_options)
    cfg.check("verify")
    res = run_verify(args.bench, args.out, cfg, resume=args.resume)
    if args.cross_check:
        from .verify import cross_check

        cross_check(args.bench, args.out, args.cross_check, timeout=args.timeout)
    return 1 if res["alarms"] or res["missing"] else 0  # missing: e.g. failed Slurm tasks; --resume


def cmd_report(args) -> int:
    from .report import report

    res = report(args.runs, args.out, sheets=not args.no_sheets, force=args.force)
    return 1 if res["problems"] else 0


def cmd_run(args) -> int:
    from .experiment import run_experiment

    run_experiment(args.experiment, force=args.force, only=args.only)
    return 0
