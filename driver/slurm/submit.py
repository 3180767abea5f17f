"""The submit side: one job array through submitit, then a watcher until every task ended."""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from usnprune.errors import ConfigError, UsnpruneError
from usnprune.process import run_limited
from usnprune.verifier_specs.base import Instance, backend_from_profile

from ..progress import Progress
from ..store import ResultStore
from ..worker import chunks_of
from .cluster import SLURM_TIMEOUT_S, check_cluster, last_line, max_array_size, sacct_states, squeue_states
from .options import SlurmOptions, parse_options, sbatch_options
from .task import run_task

DEFAULT_CHUNK = 16
STARTUP_S = 300  # added to a chunk's summed instance timeouts for the default time limit
VANISH_S = 15  # a task neither sacct nor squeue knows for this long has left the queue
PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "SPECIAL_EXIT",
           "UNKNOWN"}
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}


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
    backend = backend_from_profile(spec.profile)  # its default chunk size, as the local executor uses
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
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0, python=opts.python)
    executor.update_parameters(**params)

    spec_dict = dataclasses.asdict(spec)
    chunk_dicts = [[i.to_dict() for i in c] for c in chunks]
    n = len(chunks)
    try:
        jobs = executor.map_array(run_task, [spec_dict] * n, [str(run_dir)] * n, chunk_dicts)
    except Exception as e:  # sbatch refused (bad account, bad --sbatch option, ...): nothing was submitted
        msg = last_line(str(e).replace("\\n", "\n")) or type(e).__name__
        raise UsnpruneError(f"slurm executor: sbatch refused the job array: {msg}") from None
    array_id = jobs[0].job_id.split("_")[0]
    where = f"partition {opts.partition}" if opts.partition else "the default partition"
    log(f"slurm: submitted array {array_id}: {n} tasks of up to {max(len(c) for c in chunks)} instances on {where}, "
        f"time limit {time_min} min per task; task logs in {folder}")
    tasks = [_Task(j, c) for j, c in zip(jobs, chunks)]
    try:
        _watch(tasks, array_id, run_dir, {i.key for i in instances}, opts, log)
    except KeyboardInterrupt:
        run_limited(["scancel", array_id], SLURM_TIMEOUT_S)
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
                states = sacct_states(array_id, parse)
                queued: dict[str, str] | None = {}
                if any(t.job.job_id not in states for t in open_tasks):
                    queued = squeue_states(array_id)
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
            t.reason = "stderr: " + (_tail(job.paths.stderr) or last_line(str(value)))
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
