"""The ``slurm`` executor: one Slurm job array per verification, through submitit.

The instances are cut into chunks (grouped by ONNX file, ``--chunk-size`` each; default:
the backend's own chunk size, else 16) and submitted as ONE job array; array task k runs
:func:`driver.verify.run_chunk` on chunk k -- the same worker code as the local
executors -- and appends its rows to the run folder's results store as
``RUN/results/slurm-<arrayid>_<k>.jsonl``. The run folder must
therefore be on a filesystem the compute nodes share with the submit host.

While the array runs, the submit process shows how many tasks are pending / running /
done / failed (from sacct, else squeue) and a progress bar of finished instances read from the store. A task that
fails, is cancelled, hits its time limit or runs out of memory leaves the instances it
had not finished without a row (never an ``error`` row it did not earn): the run ends
with "N missing", a message per failed task says why (its state and the tail of its
stderr), and ``--resume`` submits only the instances without a row.

Each submission gets its own submitit folder ``RUN/logs/slurm/<time>-<random>/`` (the
task logs ``<arrayid>_<k>_0_log.{out,err}`` are there), so a job id reused by a cluster
whose ids restarted can never hand back a stale result.

Options (``--partition`` ... on the command line, ``verify.executor_options`` in an
experiment YAML; any other key is passed to sbatch as ``--key=value``): see
:class:`SlurmOptions` and docs/cluster.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from pruner.errors import ConfigError, UsnpruneError
from verifier_specs.base import Instance, load_backend

from .executors import Progress, chunks_of
from .store import ResultStore

DEFAULT_CHUNK = 16
SLURM_TIMEOUT_S = 60  # for sinfo / squeue / scontrol calls
STARTUP_S = 300  # added to a chunk's summed instance timeouts for the default time limit
VANISH_S = 15  # a task neither sacct nor squeue knows for this long has left the queue
LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")

# sbatch options the executor sets itself; overriding them would break it
RESERVED = {"array", "output", "error", "open-mode", "wrap", "parsable"}

PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "SPECIAL_EXIT",
           "UNKNOWN"}
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}


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


# ---- before anything is submitted ---------------------------------------------------


def _run(cmd: list[str], what: str) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except FileNotFoundError:
        raise UsnpruneError(f"slurm executor: {cmd[0]} not found on PATH (is this a Slurm submit host?)") from None
    except subprocess.TimeoutExpired:
        raise UsnpruneError(f"slurm executor: {what} did not answer within {SLURM_TIMEOUT_S} s "
                            f"(is slurmctld reachable?)") from None
    if p.returncode != 0:
        msg = _last_line(p.stderr) or _last_line(p.stdout) or f"exit status {p.returncode}"
        raise UsnpruneError(f"slurm executor: {what} failed: {msg}")
    return p.stdout


def _last_line(text: str | None) -> str:
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


def test_submission(opts: SlurmOptions) -> None:
    """``sbatch --test-only`` with the task's options: Slurm itself rejects a bad option,
    an unknown account, a GPU or memory request no node can meet -- and nothing is queued."""
    args = [f"--{k}" if v is True else f"--{k}={v}" for k, v in sbatch_options(opts).items()]
    try:
        p = subprocess.run(["sbatch", "--test-only", "--job-name=usnprune-check", "--output=/dev/null", *args,
                            "--wrap", "true"], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UsnpruneError(f"slurm executor: sbatch --test-only did not answer within {SLURM_TIMEOUT_S} s") from None
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


# ---- inside an array task -----------------------------------------------------------


def run_task(spec_dict: dict, run_dir: str, chunk: list[dict]) -> dict:
    """One array task: verify the chunk's instances that have no row yet (a requeued task
    skips what it finished before), appending to ``RUN/results/slurm-<arrayid>_<k>.jsonl``."""
    from .verify import RunSpec, run_chunk

    # scancel means stop now (submitit ignores SIGTERM). The early-warning signal before
    # the time limit only gets a log line: submitit's handler would raise inside the
    # verifier, and run_chunk would then write error rows for instances nobody verified.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    signal.signal(usr, lambda *_: print("usnprune: the time limit is near; unfinished instances stay without a row "
                                        "(--resume runs them again)", file=sys.stderr, flush=True))
    # torch threads: the CPUs Slurm gave this task (1 unless --cpus-per-task), not the node's
    # cores -- several tasks share a node, and oversubscribed torch threads spin
    os.environ.setdefault("USNPRUNE_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "nojob")
    task_id = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    writer = f"slurm-{array_id}_{task_id}"
    spec = RunSpec(**spec_dict)
    insts = [Instance.from_dict(d) for d in chunk]
    finished = ResultStore(run_dir).finished_keys()
    todo = [i for i in insts if i.key not in finished]
    host = socket.gethostname()
    print(f"usnprune: task {array_id}_{task_id} on {host}: {len(todo)} of {len(insts)} instances to verify "
          f"(GPUs: {os.environ.get('CUDA_VISIBLE_DEVICES', 'none')})", flush=True)
    t0 = time.perf_counter()

    def show(row: dict) -> None:
        print(f"{row['verdict']:>9} {row['time']:8.2f} s  {row['onnx']} {row['vnnlib']}", flush=True)

    n = run_chunk(spec, Path(run_dir), todo, writer, on_row=show) if todo else 0
    print(f"usnprune: {n} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"writer": writer, "rows": n, "skipped": len(insts) - len(todo), "host": host}


# ---- the submit side ----------------------------------------------------------------


def _code_root() -> str | None:
    """The folder holding the packages that submit, when it is a source checkout: the
    tasks must import this code, not another copy installed on the nodes."""
    root = Path(__file__).resolve().parent.parent
    if root.name in ("site-packages", "dist-packages"):
        return None
    return str(root)


def default_time_min(chunks: list[list[Instance]]) -> int:
    worst = max(sum(i.timeout for i in c) for c in chunks)
    return max(5, math.ceil((worst * 1.2 + STARTUP_S) / 60))


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-600:]


@dataclasses.dataclass
class _Task:
    job: Any  # submitit SlurmJob
    chunk: list[Instance]
    state: str = "UNKNOWN"
    final: bool = False
    reason: str = ""
    unseen_since: float | None = None  # neither sacct nor squeue knows it (accounting lag, or gone)
    completed_since: float | None = None  # sacct says COMPLETED but the result file is not visible yet


def run_slurm(spec, run_dir: Path, instances: list[Instance], chunk_size: int | None = None,
              options: dict | None = None, log: Callable[[str], None] = print) -> None:
    """Verify ``instances`` as one Slurm job array; returns when every task has ended."""
    import submitit

    opts = parse_options(options)
    run_dir = Path(run_dir).absolute()
    check_cluster(opts, run_dir, log)
    backend = load_backend(spec.backend, **spec.options)  # its default chunk size, as the local executor uses
    chunks = chunks_of(instances, chunk_size or getattr(backend, "default_chunk_size", None) or DEFAULT_CHUNK)
    limit = max_array_size()
    if limit is not None and len(chunks) > limit:  # task indices run from 0 to MaxArraySize - 1
        need = math.ceil(len(instances) / limit)
        raise ConfigError(f"slurm executor: {len(chunks)} array tasks exceed the cluster's MaxArraySize {limit}; "
                          f"use --chunk-size {need} or more")
    folder = run_dir / "logs" / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        folder.mkdir(parents=True)
        (run_dir / "results").mkdir(exist_ok=True)
        probe = run_dir / "results" / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsnpruneError(f"slurm executor: cannot write the run folder {run_dir} ({e.strerror or e})") from None

    time_min = opts.time_min or default_time_min(chunks)
    params: dict[str, Any] = {
        "job_name": f"usnprune-{spec.run_id}", "time": time_min,
        # the early-warning signal must not come before the task has set its handler
        "signal_delay_s": int(min(90, max(10, time_min * 60 // 4))),
        # the same options the preflight's sbatch --test-only accepted
        "additional_parameters": sbatch_options(opts, time_min),
    }
    if opts.array_parallelism is not None:
        params["array_parallelism"] = opts.array_parallelism
    root = _code_root()
    if root:
        params["setup"] = [f"export PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0, python=opts.python)
    executor.update_parameters(**params)

    spec_dict = dataclasses.asdict(spec)
    chunk_dicts = [[i.to_dict() for i in c] for c in chunks]
    n = len(chunks)
    try:
        jobs = executor.map_array(run_task, [spec_dict] * n, [str(run_dir)] * n, chunk_dicts)
    except Exception as e:  # sbatch refused (bad account, bad --sbatch option, ...): nothing was submitted
        msg = _last_line(str(e).replace("\\n", "\n")) or type(e).__name__
        raise UsnpruneError(f"slurm executor: sbatch refused the job array: {msg}") from None
    array_id = jobs[0].job_id.split("_")[0]
    where = f"partition {opts.partition}" if opts.partition else "the default partition"
    log(f"slurm: submitted array {array_id}: {n} tasks of up to {max(len(c) for c in chunks)} instances on {where}, "
        f"time limit {time_min} min per task; task logs in {folder}")
    tasks = [_Task(j, c) for j, c in zip(jobs, chunks)]
    try:
        _watch(tasks, array_id, run_dir, {i.key for i in instances}, opts, log)
    except KeyboardInterrupt:
        subprocess.run(["scancel", array_id], capture_output=True, timeout=SLURM_TIMEOUT_S)
        log(f"slurm: interrupted; cancelled array {array_id}. Finished rows are kept; --resume continues.")
        raise


def _watch(tasks: list[_Task], array_id: str, run_dir: Path, keys: set[str], opts: SlurmOptions, log) -> None:
    """Poll until every task has ended: result files (cheap, every 2 s), then sacct (backing
    off to ``poll_s``), then squeue for the tasks sacct does not know.

    sacct is called here rather than through ``job.state``: submitit's watcher keeps the
    last state it saw, and a task cancelled while pending gets no accounting record of its
    own, so ``job.state`` would say PENDING forever."""
    store = ResultStore(run_dir)
    progress = Progress(len(keys), f"verify slurm {array_id}")
    seen: set[str] = set()
    t0 = time.monotonic()
    last_poll = -math.inf
    last_counts = None
    parse = tasks[0].job.watcher.read_info  # submitit's sacct parser (expands 12_[3-7] ranges)
    try:
        while True:
            for key, row in store.rows().items():
                if key in keys and key not in seen:
                    seen.add(key)
                    progress.row(row)
            now = time.monotonic()
            open_tasks = [t for t in tasks if not t.final]
            if open_tasks and now - last_poll >= min(opts.poll_s, max(2.0, (now - t0) / 4)):
                last_poll = now
                states = _sacct_states(array_id, parse)
                queued: dict[str, str] | None = {}
                if any(t.job.job_id not in states for t in open_tasks):
                    queued = _squeue_states(array_id)
                    states = {**(queued or {}), **states}
                for t in open_tasks:
                    t.state = states.get(t.job.job_id, "UNKNOWN")
                    if t.state != "UNKNOWN":
                        t.unseen_since = None
                    elif queued is not None:  # squeue answered and does not list it either
                        t.unseen_since = t.unseen_since or now
            for t in open_tasks:
                _settle(t, now)
            counts = _counts(tasks)
            if counts != last_counts:
                last_counts = counts
                log(f"slurm array {array_id}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                    + f" (of {len(tasks)} tasks)")
            if all(t.final for t in tasks):
                break
            time.sleep(2.0)
        for key, row in store.rows().items():
            if key in keys and key not in seen:
                seen.add(key)
                progress.row(row)
    finally:
        progress.close()
    rows = store.rows()
    for t in tasks:
        left = [i for i in t.chunk if i.key not in rows]
        if t.state != "COMPLETED":
            log(f"slurm: task {t.job.job_id} ended {t.state}: {len(left)} of its {len(t.chunk)} instances have no "
                f"result (--resume runs them again); {t.reason or 'no log (it never started)'}")
        elif left:
            log(f"slurm: task {t.job.job_id} completed but {len(left)} of its instances have no result; "
                f"see {t.job.paths.stderr}")


def _settle(t: _Task, now: float) -> None:
    """Decide whether a task has ended, and why."""
    job = t.job
    try:
        job.paths.folder.chmod(job.paths.folder.stat().st_mode)  # refresh NFS attribute caches
    except OSError:
        pass
    result = job.paths.result_pickle
    if result.exists():
        try:
            with open(result, "rb") as f:
                outcome, value = pickle.load(f)
        except Exception:  # still being moved into place
            return
        t.final = True
        if outcome == "success":
            t.state = "COMPLETED"
        else:
            t.state = "FAILED"
            t.reason = "stderr: " + (_tail(job.paths.stderr) or _last_line(str(value)))
        return
    if t.state in PENDING or t.state in RUNNING:
        if t.state == "UNKNOWN" and t.unseen_since is not None and now - t.unseen_since > VANISH_S:
            # gone from the queue without an accounting record or a result: typically cancelled
            # while pending (such a task never gets a record of its own)
            t.final, t.state = True, "CANCELLED"
            tail = _tail(job.paths.stderr)
            t.reason = ("neither sacct nor squeue knows it any more; "
                        + (f"stderr: {tail}" if tail else "it never started (cancelled while pending?)"))
        return
    if t.state == "COMPLETED":
        # the result file may lag behind sacct on a network filesystem: give it a minute
        t.completed_since = t.completed_since or now
        if now - t.completed_since < 60:
            return
        t.final = True
        return
    t.final = True  # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, ...
    tail = _tail(job.paths.stderr)
    t.reason = f"stderr: {tail}" if tail else "no log (it never started)"


def _counts(tasks: list[_Task]) -> dict[str, int]:
    c = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for t in tasks:
        if t.final:
            c["done" if t.state == "COMPLETED" else "failed"] += 1
        elif t.state in RUNNING:
            c["running"] += 1
        else:
            c["pending"] += 1
    return c


def _sacct_states(array_id: str, parse) -> dict[str, str]:
    """Task id -> first word of its state (``CANCELLED by 0`` -> ``CANCELLED``); {} when
    sacct fails (no accounting)."""
    try:
        p = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", array_id],
                           capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if p.returncode != 0:
        return {}
    try:
        info = parse(p.stdout)
    except Exception:
        return {}
    return {jid: (d.get("State") or "UNKNOWN").split()[0].upper() for jid, d in info.items()}


def _squeue_states(array_id: str) -> dict[str, str] | None:
    """Task states from slurmctld (``-t all`` includes recently ended tasks): used while
    accounting has no record of a task yet, or where the cluster has no accounting.
    None when slurmctld did not answer (then nothing can be concluded from an absence)."""
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i|%T"], capture_output=True,
                           text=True, timeout=SLURM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
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
