"""Talking to the cluster before anything is submitted, and its queries while the array
runs (sinfo, sbatch --test-only, scontrol, sacct, squeue), each with a hard limit."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable

from usnprune.errors import ConfigError, UsnpruneError
from usnprune.process import run_limited

from .options import SlurmOptions, parse_options, sbatch_options

SLURM_TIMEOUT_S = 60  # for sinfo / squeue / scontrol calls
LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def _run(cmd: list[str], what: str) -> str:
    try:
        p = run_limited(cmd, SLURM_TIMEOUT_S)
    except FileNotFoundError:
        raise UsnpruneError(f"slurm executor: {cmd[0]} not found on PATH (is this a Slurm submit host?)") from None
    if p.killed:
        raise UsnpruneError(f"slurm executor: {what} did not answer within {SLURM_TIMEOUT_S} s "
                            f"(is slurmctld reachable?)")
    if p.returncode != 0:
        msg = last_line(p.stderr) or last_line(p.stdout) or f"exit status {p.returncode}"
        raise UsnpruneError(f"slurm executor: {what} failed: {msg}")
    return p.stdout


def last_line(text: str | None) -> str:
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    return lines[-1] if lines else ""


def check_cluster(opts: SlurmOptions, run_dir: Path, log: Callable[[str], None] = print) -> None:
    """Fail with one line when the array could not run: no Slurm, an unknown partition, a
    run folder the tasks cannot write. Warns when the run folder looks local to this host."""
    check_run_folder(run_dir)
    for tool in ("sbatch", "sinfo", "srun", "squeue", "scancel"):
        if shutil.which(tool) is None:
            raise UsnpruneError(f"slurm executor: {tool} not found on PATH (is this a Slurm submit host?)")
    parts = _run(["sinfo", "-h", "-o", "%P"], "sinfo").split()
    if not parts:
        raise UsnpruneError("slurm executor: sinfo lists no partition")
    if opts.partition is not None:
        if not _run(["sinfo", "-h", "-p", opts.partition, "-o", "%P"], f"sinfo -p {opts.partition}").split():
            raise ConfigError(f"slurm executor: unknown partition {opts.partition!r} (known: {', '.join(parts)})")
    elif not any(p.endswith("*") for p in parts) and "partition" not in opts.sbatch:
        raise ConfigError(f"slurm executor: the cluster has no default partition; choose one with --partition "
                          f"(known: {', '.join(parts)})")
    nodes = sorted(set(_run(["sinfo", "-h", "-N", "-o", "%N"], "sinfo -N").split()))
    warn_if_local(run_dir, nodes, log)
    test_submission(opts)



def test_submission(opts: SlurmOptions) -> None:
    """``sbatch --test-only`` with the task's options: Slurm itself rejects a bad option,
    an unknown account, a GPU or memory request no node can meet -- and nothing is queued."""
    args = [f"--{k}" if v is True else f"--{k}={v}" for k, v in sbatch_options(opts).items()]
    p = run_limited(["sbatch", "--test-only", "--job-name=usnprune-check", "--output=/dev/null", *args,
                     "--wrap", "true"], SLURM_TIMEOUT_S)
    if p.killed:
        raise UsnpruneError(f"slurm executor: sbatch --test-only did not answer within {SLURM_TIMEOUT_S} s")
    if p.returncode != 0:
        lines = [l.strip() for l in (p.stderr + "\n" + p.stdout).splitlines() if l.strip()]
        why = next((l for l in lines if re.search(r"error|unrecognized|invalid|failure|not available", l, re.I)),
                   lines[0] if lines else f"exit status {p.returncode}")
        raise UsnpruneError(f"slurm executor: Slurm refuses these task options ({' '.join(args) or 'defaults'}): {why}")


def check_run_folder(run_dir: Path) -> None:
    """The run folder, or the folder it will be created in, must be writable."""
    run_dir = Path(run_dir).absolute()
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folder is created later (prepare_run): check where it will be
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsnpruneError(f"slurm executor: the array tasks cannot write the run folder {run_dir} "
                            f"({probe} is not a writable folder)")


def warn_if_local(run_dir: Path, nodes: list[str], log: Callable[[str], None] = print) -> None:
    """A run folder under /tmp (and the like) is only visible to this host."""
    run_dir = Path(run_dir).absolute()
    here = socket.gethostname().split(".")[0]
    elsewhere = [n for n in nodes if n.split(".")[0] != here]
    resolved = str(run_dir.resolve())
    if elsewhere and any(resolved == p or resolved.startswith(p + "/") for p in LOCAL_PREFIXES):
        top = "/" + resolved.split("/")[1]
        log(f"warning: the run folder {run_dir} is under {top}, "
            f"which is usually local to this host; tasks on other nodes ({', '.join(elsewhere[:3])}"
            f"{', ...' if len(elsewhere) > 3 else ''}) cannot write it. Put it on a shared filesystem.")


def preflight(run_dir: Path, options: dict | None, log: Callable[[str], None] = print) -> SlurmOptions:
    """Everything that can be checked before the run folder exists (called by verify())."""
    opts = parse_options(options)
    check_cluster(opts, run_dir, log)
    return opts


def max_array_size() -> int | None:
    try:
        out = _run(["scontrol", "show", "config"], "scontrol show config")
    except UsnpruneError:
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else None



def sacct_states(array_id: str, parse) -> dict[str, str]:
    """Task id -> first word of its state (``CANCELLED by 0`` -> ``CANCELLED``); {} when
    sacct fails (no accounting)."""
    try:
        p = run_limited(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", array_id], SLURM_TIMEOUT_S)
    except OSError:
        return {}
    if p.returncode != 0:
        return {}
    try:
        info = parse(p.stdout)
    except Exception:
        return {}
    return {jid: (d.get("State") or "UNKNOWN").split()[0].upper() for jid, d in info.items()}


def squeue_states(array_id: str) -> dict[str, str] | None:
    """Task states from slurmctld (``-t all`` includes recently ended tasks): used while
    accounting has no record of a task yet, or where the cluster has no accounting.
    None when slurmctld did not answer (then nothing can be concluded from an absence)."""
    try:
        p = run_limited(["squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i|%T"], SLURM_TIMEOUT_S)
    except OSError:
        return None
    if p.returncode != 0:
        # the whole array has left slurmctld's memory: an answer ("none of them"), not a failure
        return {} if "invalid job id" in (p.stderr or "").lower() else None
    out = {}
    for line in p.stdout.splitlines():
        if "|" in line:
            jid, state = line.strip().split("|", 1)
            out[jid] = state.split()[0].upper()
    return out
