"""Choosing the executor of a verification: ``serial``, ``local`` (driver/local.py) or
``slurm`` (driver/slurm/)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from usnprune.errors import ConfigError
from usnprune.verifier_specs.base import Instance

from . import local, slurm

EXECUTORS = ("serial", "local", "slurm")


def preflight(kind: str, run_dir: Path, options: dict | None, log: Callable[[str], None] = print) -> None:
    """Checks an executor can run at all, before the run folder is created (so a typo in a
    partition name does not leave a half-made run behind)."""
    if kind == "slurm":
        slurm.preflight(run_dir, options, log)
    elif kind not in ("serial", "local"):
        raise ConfigError(f"unknown executor {kind!r} (serial, local, slurm)")
    elif options:
        raise ConfigError(f"{', '.join(sorted(options))}: options of the slurm executor, not of {kind} "
                          f"(add --executor slurm)")


def execute(kind: str, spec, run_dir: Path, instances: list[Instance], workers: int = 1,
            chunk_size: int | None = None, options: dict | None = None, log: Callable[[str], None] = print) -> None:
    if kind == "serial" or (kind == "local" and workers == 1 and not options):
        if kind == "local":  # docs/cli.md: one worker runs in this process, as --executor serial
            log("verify: --workers 1 runs the instances in this process (the serial executor: "
                "no worker process, no chunks, no silent-worker kill); --workers 2 or more for those")
        return local.run_serial(spec, run_dir, instances, log)
    if kind == "local":
        return local.run_local(spec, run_dir, instances, workers, chunk_size, log)
    if kind == "slurm":
        return slurm.run_slurm(spec, run_dir, instances, chunk_size=chunk_size, options=options or {}, log=log)
    raise ConfigError(f"unknown executor {kind!r} (serial, local, slurm)")
