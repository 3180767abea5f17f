"""What each array task asks Slurm for: ``--partition`` ... on the command line,
``verify.executor_options`` in an experiment YAML; any other key is passed to sbatch as
``--key=value`` (docs/cluster.md)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from usnprune.errors import ConfigError

# sbatch options the executor sets itself; overriding them would break it
RESERVED = {"array", "output", "error", "open-mode", "wrap", "parsable"}


@dataclasses.dataclass
class SlurmOptions:
    """What each array task asks Slurm for."""

    partition: str | None = None  # default: the cluster's default partition
    time_min: int | None = None  # per task; default: the chunk's summed instance timeouts x 1.2 + 5 min
    gpus_per_task: int | None = None  # e.g. 1 for alpha-beta-CROWN on GPU (abcrown-gpu profile)
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    array_parallelism: int | None = None  # at most this many tasks at once (sbatch --array=...%N)
    python: str | None = None  # the command that runs Python on the nodes (default: this interpreter)
    poll_s: float = 30.0  # longest pause between two looks at the tasks' states (sacct)
    sbatch: dict = dataclasses.field(default_factory=dict)  # extra sbatch options, --key=value


_INTS = {"time_min": 1, "gpus_per_task": 0, "cpus_per_task": 1, "array_parallelism": 1}
_STRS = ("partition", "account", "python")


def parse_options(raw: dict | None, where: str = "executor_options") -> SlurmOptions:
    """Validated options; unknown keys are extra sbatch options (as ``--sbatch KEY=VALUE``)."""
    opts = SlurmOptions()
    extra: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        key = str(key)
        if key in _INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < _INTS[key]:
                raise ConfigError(f"{where}.{key}: must be an integer >= {_INTS[key]}, got {value!r}")
        elif key in ("mem_gb", "poll_s"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{where}.{key}: must be a number > 0, got {value!r}")
        elif key in _STRS:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}.{key}: must be a non-empty string, got {value!r}")
        elif key == "sbatch":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.sbatch: must be a mapping of sbatch options, got {value!r}")
            for k, v in value.items():
                extra[_sbatch_key(str(k), f"{where}.sbatch")] = _sbatch_value(v, f"{where}.sbatch.{k}")
            continue
        else:
            extra[_sbatch_key(key, where)] = _sbatch_value(value, f"{where}.{key}")
            continue
        setattr(opts, key, value)
    opts.sbatch = extra
    return opts


def _sbatch_key(key: str, where: str) -> str:
    k = key.strip().lstrip("-").replace("_", "-")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", k):
        raise ConfigError(f"{where}: {key!r} is not an sbatch option name (known keys: "
                          f"{', '.join(f.name for f in dataclasses.fields(SlurmOptions))}, or any sbatch --option)")
    if k in RESERVED:
        raise ConfigError(f"{where}.{key}: set by the slurm executor itself (logs go to RUN/logs/slurm)")
    return k


def _sbatch_value(v: Any, where: str) -> Any:
    if v is None or v is False or isinstance(v, (dict, list)):
        raise ConfigError(f"{where}: must be a single value (or true for a flag), got {v!r}")
    return v



def sbatch_options(opts: SlurmOptions, time_min: int | None = None) -> dict[str, Any]:
    """The sbatch options (long names) one array task asks for."""
    out: dict[str, Any] = {}
    if opts.partition is not None:
        out["partition"] = opts.partition
    if opts.account is not None:
        out["account"] = opts.account
    if opts.cpus_per_task is not None:
        out["cpus-per-task"] = opts.cpus_per_task
    if opts.gpus_per_task is not None:
        out["gpus-per-task"] = opts.gpus_per_task
        out["ntasks-per-node"] = 1  # --gpus-per-task counts per task: make the one task explicit
    if opts.mem_gb is not None:
        out["mem"] = f"{int(opts.mem_gb)}G" if float(opts.mem_gb).is_integer() else f"{int(opts.mem_gb * 1024)}M"
    if time_min or opts.time_min:
        out["time"] = time_min or opts.time_min
    out.update(opts.sbatch)
    return out
