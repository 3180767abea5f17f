"""The ``usnprune`` command line. It only parses arguments and calls the Python API.

A bare ``usnprune`` (or a bare command) prints its help; every option's help shows its
default, which comes from the configuration type the experiment YAML uses too
(:func:`usnprune.config.default_of`). User errors (bad files, bad options) end in one line
``usnprune: error: ...`` naming the option as typed, and exit status 2, without a traceback;
bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import sys

from usnprune import __version__
from usnprune.config import default_of
from usnprune.errors import UsnpruneError

from . import commands

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _positive(name: str):
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{name} must be > 0 and finite, got {s}")
        return v

    return conv


def _count(name: str, minimum: int = 1):
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {s}")
        return v

    return conv


# ---- parser -------------------------------------------------------------------------
# Each command's arguments are built only when that command runs (or for --help of it): the
# configuration types that hold the defaults import PyTorch, which a bare `usnprune`, `--version`
# or `verify` should not wait for.


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (argparse's ArgumentDefaultsHelpFormatter, but
    without "default: None" for options that have none, and lists written as typed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == argparse.SUPPRESS
                or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        elif isinstance(default, float):
            default = f"{default:g}"
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _show_help(parser: argparse.ArgumentParser):
    def show(_args) -> int:
        print(parser.format_help(), end="")
        return 0

    return show


def _share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def _add_box_args(p: argparse.ArgumentParser) -> None:
    from usnprune.pruner.perturbation import Box

    p.add_argument("--eps-contrast", type=float, default=default_of(Box, "eps_c"), metavar="EPS",
                   help="contrast c ranges over [1-EPS, 1+EPS]")
    p.add_argument("--eps-brightness", type=float, default=default_of(Box, "eps_b"), metavar="EPS",
                   help="brightness b ranges over [-EPS, EPS]")
    p.add_argument("--family", default=default_of(Box, "family"),
                   help="lighting family: brightness_contrast (k=2), channel_gain_bias (k=6), channel_gain (k=3); docs/method.md")


def _data_args(d: argparse.ArgumentParser) -> None:
    from usnprune.pruner.data.synthetic import SynthConfig

    d.set_defaults(func=_show_help(d))
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=_Parser, title="subcommands")
    s = dsub.add_parser("synth", help="generate the synthetic aircraft keypoint dataset (COCO format)",
                        description="Generate the synthetic aircraft keypoint dataset (COCO keypoints, docs/dataset.md); "
                                    "deterministic in the seed.", formatter_class=_Formatter)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n-train", type=_count("--n-train"), default=default_of(SynthConfig, "n_train"),
                   help="training images")
    s.add_argument("--n-test", type=_count("--n-test"), default=default_of(SynthConfig, "n_test"), help="test images")
    s.add_argument("--seed", type=int, default=default_of(SynthConfig, "seed"), help="random seed of the renderer")
    s.add_argument("--size", type=_count("--size", 16), default=default_of(SynthConfig, "size"), help="image side in pixels")
    s.add_argument("--channels", type=int, choices=[1, 3], default=default_of(SynthConfig, "channels"),
                   help="1: grayscale, 3: RGB")
    s.add_argument("--force", action="store_true", help="write into a non-empty folder (replacing only what usnprune wrote)")
    s.set_defaults(func=commands.cmd_data_synth)


def _train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--config", required=True, metavar="FILE.yaml",
                   help="training configuration (examples/train.yaml; keys in docs/cli.md)")
    t.add_argument("--data", help="dataset folder, overriding the config's data")
    _add_coco_args(t, test=True)
    t.add_argument("--out", help="output folder, overriding the config's out")
    t.add_argument("--force", action="store_true", help="replace what an earlier usnprune command wrote in the output folder")
    t.add_argument("--family", help="override the augmentation's lighting family")
    t.set_defaults(func=commands.cmd_train)


def _eval_args(e: argparse.ArgumentParser) -> None:
    from usnprune.pruner.evaluate import EvalConfig

    e.add_argument("--checkpoint", required=True, help="the network (model.pt)")
    e.add_argument("--data", help="dataset folder (or --annotations FILE.json --image-dir DIR)")
    _add_coco_args(e)
    e.add_argument("--split", help=f"which split of the --data folder (default: {default_of(EvalConfig, 'split')})")
    _add_box_args(e)
    e.add_argument("--delta", type=_positive("--delta"), nargs="+", default=default_of(EvalConfig, "deltas"),
                   metavar="PX", help="tolerances in pixels")
    e.add_argument("--grid", type=_count("--grid", 2), default=default_of(EvalConfig, "grid"),
                   help="grid points per axis of the box")
    e.add_argument("--out", help="CSV file for the per-keypoint table (default: print the overall figures only)")
    e.add_argument("--force", action="store_true", help="replace an existing --out file")
    e.set_defaults(func=commands.cmd_eval)


def _prune_args(pr: argparse.ArgumentParser) -> None:
    from usnprune.pruner.prune import METHODS

    pr.add_argument("--config", required=True, metavar="FILE.yaml",
                    help="pruning configuration (examples/prune.yaml; keys in docs/cli.md)")
    pr.add_argument("--checkpoint", help="the dense network, overriding the config's checkpoint")
    pr.add_argument("--data", help="dataset folder, overriding the config's data")
    _add_coco_args(pr, test=True)
    pr.add_argument("--family", help="the lighting family of the scoring and augmentation boxes, overriding the config's")
    pr.add_argument("--out", help="output folder, overriding the config's out; with --analyze-only the analysis "
                                  "folder (default there: the config's out with -analysis appended)")
    pr.add_argument("--method", choices=METHODS, help="pruning method, overriding the config's method")
    pr.add_argument("--sparsity", type=_share, help="share of prunable units removed, in [0, 1), overriding the config's")
    pr.add_argument("--seed", type=int, help="seed, overriding the config's")
    pr.add_argument("--analyze-only", action="store_true",
                    help="only write the per-layer USN / stability analysis of the checkpoint (analysis.csv, analysis.png)")
    pr.add_argument("--force", action="store_true", help="replace what an earlier usnprune command wrote in the output folder")
    pr.set_defaults(func=commands.cmd_prune)


def _export_args(ex: argparse.ArgumentParser) -> None:
    from typing import get_args, get_type_hints

    from usnprune.export.benchmark import ExportConfig

    ex.add_argument("--checkpoint", nargs="+", help="one or more usnprune checkpoints (one category each)")
    ex.add_argument("--onnx", nargs="+", metavar="MODEL.onnx",
                    help="one or more ONNX keypoint regressors: image [1, C, H, W] -> [1, 2K] or [1, K, 2] "
                         "pixel coordinates (docs/formats.md); one category each, after the checkpoints")
    ex.add_argument("--onnx-normalized", action="store_true",
                    help="the --onnx outputs are in [0, 1] of the image's width and height (mapped to u*W, v*H pixels)")
    ex.add_argument("--no-builtin-check", action="store_true",
                    help="export --onnx models the builtin verifier cannot read (for other verifiers)")
    ex.add_argument("--category", nargs="+", help="category names, one per checkpoint then per --onnx model")
    ex.add_argument("--data", help="dataset folder (or --annotations FILE.json --image-dir DIR)")
    _add_coco_args(ex, category="--coco-category")
    ex.add_argument("--split", help=f"which split of the --data folder the images come from (default: {default_of(ExportConfig, 'split')})")
    ex.add_argument("--out", required=True, help="benchmark folder to write")
    _add_box_args(ex)
    ex.add_argument("--delta", type=_positive("--delta"), nargs="+", default=default_of(ExportConfig, "deltas"),
                    metavar="PX", help="tolerances in pixels")
    ex.add_argument("--images", type=_count("--images"), default=default_of(ExportConfig, "images"),
                    help="images verified per network")
    ex.add_argument("--pool", type=_count("--pool"), help="images exported (default: 2 x --images)")
    ex.add_argument("--timeout", type=_positive("--timeout"), default=default_of(ExportConfig, "timeout"),
                    help="seconds per instance")
    ex.add_argument("--seed", type=int, default=default_of(ExportConfig, "seed"), help="seed that picks the images")
    ex.add_argument("--reference", choices=get_args(get_type_hints(ExportConfig)["reference"]),
                    default=default_of(ExportConfig, "reference"),
                    help="what a keypoint must stay near: gt (the ground truth: certified accuracy), prediction "
                         "(the clean prediction: certified stability), or both (a property of each)")
    ex.add_argument("--gzip", action="store_true", help="write .vnnlib.gz")
    ex.add_argument("--skip-violated", action="store_true",
                    help="leave out properties already violated at the identity (reports count them as falsified)")
    ex.add_argument("--vnnlib-version", choices=["1", "2", "both"], default=default_of(ExportConfig, "vnnlib_version"),
                    help="VNN-LIB versions written, as VNN-COMP 2026 folders 1.0/ and 2.0/ (default both)")
    ex.add_argument("--force", action="store_true",
                    help="write into an existing folder (replacing only what an earlier export wrote)")
    ex.set_defaults(func=commands.cmd_export)


def _verify_args(v: argparse.ArgumentParser) -> None:
    from .dispatch import EXECUTORS
    from .verify import VerifyConfig

    v.add_argument("bench", help="benchmark folder: 1.0/ and 2.0/ (VNN-COMP 2026), or one of them, or flat "
                                 "(instances.csv, onnx/, vnnlib/)")
    v.add_argument("--backend", default=default_of(VerifyConfig, "backend"),
                   help="verifier profile name or profile YAML (builtin, abcrown, abcrown-gpu, onnxsim, marabou, ...)")
    v.add_argument("--out", required=True, help="run folder")
    v.add_argument("--workers", type=_count("--workers"), default=default_of(VerifyConfig, "workers"),
                   help="verifier processes (local executor)")
    v.add_argument("--timeout", type=_positive("--timeout"), help="seconds per instance (default: instances.csv)")
    v.add_argument("--resume", action="store_true", help="continue a run: only instances without a result")
    v.add_argument("--executor", choices=list(EXECUTORS), default=default_of(VerifyConfig, "executor"),
                   help="serial (this process), local (--workers processes) or slurm (a job array)")
    v.add_argument("--chunk-size", type=_count("--chunk-size"),
                   help="instances per worker task / array task (default: the backend's)")
    v.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option override (repeatable)")
    v.add_argument("--cross-check", nargs="+", metavar="BACKEND", help="also run these backends and compare verdicts")
    sl = v.add_argument_group("slurm executor (docs/cluster.md)")
    sl.add_argument("--partition", help="Slurm partition")
    sl.add_argument("--time-min", type=_count("--time-min"), dest="time_min", help="time limit per array task, minutes")
    sl.add_argument("--gpus-per-task", type=_count("--gpus-per-task", 0), dest="gpus_per_task", help="GPUs per array task")
    sl.add_argument("--cpus-per-task", type=_count("--cpus-per-task"), dest="cpus_per_task", help="CPUs per array task")
    sl.add_argument("--mem-gb", type=_count("--mem-gb"), dest="mem_gb", help="memory per array task, GB")
    sl.add_argument("--account", help="Slurm account")
    sl.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="extra sbatch option (repeatable)")
    v.set_defaults(func=commands.cmd_verify)


def _report_args(rp: argparse.ArgumentParser) -> None:
    rp.add_argument("runs", nargs="+", help="run folders (from usnprune verify)")
    rp.add_argument("--out", required=True, help="output folder: report.md, summary.csv, keypoints.csv, plots, sheets/")
    rp.add_argument("--no-sheets", action="store_true", help="skip the per-network contact sheets")
    rp.add_argument("--force", action="store_true", help="replace what an earlier report wrote in the output folder")
    rp.set_defaults(func=commands.cmd_report)


def _run_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("experiment", help="experiment YAML (benchmarks/demo.yaml; keys in docs/cli.md)")
    r.add_argument("--force", action="store_true", help="redo stages whose configuration changed")
    r.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    r.set_defaults(func=commands.cmd_run)


COMMANDS = {  # name -> (one line, what it does at more length, argument builder)
    "data": ("datasets", "Make a dataset: `usnprune data synth` renders the synthetic aircraft keypoints.", _data_args),
    "train": ("train a keypoint network from a YAML config", "Train the dense network (writes model.pt).", _train_args),
    "eval": ("clean and empirically robust keypoint metrics",
             "Clean PCK, empirical robust PCK (within δ of the ground truth on a grid of the box) and stable PCK.",
             _eval_args),
    "prune": ("prune a network (USN, USN + Wasserstein, or a baseline)",
              "Prune the dense network into a smaller one, or analyse its layers (--analyze-only).", _prune_args),
    "export": ("write a VNN-COMP benchmark folder (ONNX + VNNLIB) for networks",
               "One ONNX model per (network, image), one VNNLIB property per (keypoint, tolerance, reference).",
               _export_args),
    "verify": ("verify a benchmark folder; one result row per instance",
               "Run a verifier on every instance; counterexamples are replayed, certificates attacked by sampling.",
               _verify_args),
    "report": ("certified accuracy and stability: report.md, tables, plots",
               "Certified accuracy (against the ground truth) beside certified stability, from run folders.",
               _report_args),
    "run": ("run an experiment YAML end to end", "data -> train -> eval -> prune -> export -> verify -> report.",
            _run_args),
}


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one)."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(command: str | None = None, every: bool = True) -> argparse.ArgumentParser:
    """The parser. ``every``: build every command's arguments; else only ``command``'s (the
    others are listed with their one-line help)."""
    p = _Parser(prog="usnprune", formatter_class=_Formatter,
                description=f"usnprune {__version__}: prune keypoint networks and certify them against lighting changes.",
                epilog="A bare command prints its help; `usnprune COMMAND --help` lists its options and defaults.\n"
                       "Documentation: README.md and docs/ (cli.md: commands and configuration files).")
    p.add_argument("--version", action="version", version=f"usnprune {__version__}")
    p.set_defaults(func=_show_help(p))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, title="commands")
    for name, (short, long, build) in COMMANDS.items():
        sp = sub.add_parser(name, help=short, description=long, formatter_class=_Formatter)
        if every or command == name:
            build(sp)
    return p


def _add_coco_args(p: argparse.ArgumentParser, test: bool = False, category: str = "--category") -> None:
    p.add_argument("--annotations", metavar="FILE.json", help="COCO keypoints file (instead of --data)")
    p.add_argument("--image-dir", metavar="DIR", help="the folder file_name in --annotations is relative to")
    if test:
        p.add_argument("--test-annotations", metavar="FILE.json", help="COCO keypoints file of the test split")
        p.add_argument("--test-image-dir", metavar="DIR", help="its image folder")
    names = [category] if category == "--coco-category" else [category, "--coco-category"]
    p.add_argument(*names, dest="coco_category", metavar="NAME", help="the COCO keypoint category (name or id)")


# what the machine refused (a full disk, a read-only folder, a path that is a folder): the
# user's to fix, so one line; any other OSError is a bug and keeps its traceback
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                      errno.ENOTDIR, errno.ENOENT, errno.EEXIST, errno.EFBIG, errno.ENAMETOOLONG, errno.ENOTEMPTY}


def _one_line(message: str) -> None:
    msg = " ".join(str(message).split())
    print(f"usnprune: error: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_in(argv), every=False)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsnpruneError as e:
        _one_line(str(e))
        return EXIT_USER_ERROR
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = e.filename if e.filename is not None else "a file"
        hint = "; nothing half-written was left looking complete" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        _one_line(f"{where}: {e.strerror or e}{hint}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("usnprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
