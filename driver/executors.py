"""Executors: who runs the chunks of a verification.

* ``serial`` -- in this process, one instance after the other;
* ``local``  -- ``workers`` processes on this machine. Each worker runs the same
  :func:`driver.verify.run_chunk` as every other executor and appends to the run's results
  store itself. The parent hands out chunks one at a time, shows progress, and enforces a
  hard wall-clock limit: a worker silent for longer than the instance timeout plus a grace
  period is killed with its process group, its instance in flight gets a ``timeout`` row,
  and the rest of its chunk goes back to the queue. A worker that dies (crash, out of
  memory) leaves an ``error`` row for its instance in flight, never the end of the run.
  Each worker talks to the parent over its own pair of pipes: a worker killed while
  sending cannot wedge the others (with one shared multiprocessing queue, a SIGKILL during
  a put left its lock taken and hung the run in 2 of 3 tries). When GPUs are visible,
  worker k sees only GPU ``k mod n`` (one verifier per GPU).
* ``slurm``  -- a Slurm job array through submitit (driver/slurm.py).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from pruner.errors import ConfigError
from verifier_specs.base import Instance, Verdict, load_backend, usable_cores

GRACE_S = 30.0  # beyond an instance's timeout before the parent kills a silent worker


def chunks_of(instances: list[Instance], size: int | None) -> list[list[Instance]]:
    """Instances ordered by ONNX file (so consecutive ones share a loaded model): one chunk
    per ONNX file without ``size``, else chunks of ``size`` (which may span files)."""
    by_onnx: dict[str, list[Instance]] = {}
    for inst in instances:
        by_onnx.setdefault(inst.onnx, []).append(inst)
    if not size:
        return list(by_onnx.values())
    flat = [inst for group in by_onnx.values() for inst in group]
    return [flat[k:k + size] for k in range(0, len(flat), size)]


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class Progress:
    def __init__(self, total: int, desc: str) -> None:
        self.counts: Counter = Counter()
        self.bar = tqdm(total=total, desc=desc, unit="inst", dynamic_ncols=True,
                        disable=os.environ.get("USNPRUNE_NO_PROGRESS") == "1")

    def row(self, row: dict) -> None:
        self.counts[row["verdict"]] += 1
        self.bar.update(1)
        self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=False)

    def close(self) -> None:
        self.bar.close()


def preflight(kind: str, run_dir: Path, options: dict | None, log: Callable[[str], None] = print) -> None:
    """Checks an executor can run at all, before the run folder is created (so a typo in a
    partition name does not leave a half-made run behind)."""
    if kind == "slurm":
        from .slurm import preflight as slurm_preflight

        slurm_preflight(run_dir, options, log)
    elif kind not in ("serial", "local"):
        raise ConfigError(f"unknown executor {kind!r} (serial, local, slurm)")
    elif options:
        raise ConfigError(f"{', '.join(sorted(options))}: options of the slurm executor, not of {kind} "
                          f"(add --executor slurm)")


def execute(kind: str, spec, run_dir: Path, instances: list[Instance], workers: int = 1,
            chunk_size: int | None = None, options: dict | None = None, log: Callable[[str], None] = print) -> None:
    if kind == "serial" or (kind == "local" and workers == 1 and not options):
        return run_serial(spec, run_dir, instances, log)
    if kind == "local":
        return run_local(spec, run_dir, instances, workers, chunk_size, log)
    if kind == "slurm":
        from .slurm import run_slurm

        return run_slurm(spec, run_dir, instances, chunk_size=chunk_size, options=options or {}, log=log)
    raise ConfigError(f"unknown executor {kind!r} (serial, local, slurm)")


def run_serial(spec, run_dir: Path, instances: list[Instance], log) -> None:
    from .store import writer_name
    from .verify import run_chunk

    progress = Progress(len(instances), "verify")
    try:
        run_chunk(spec, run_dir, instances, writer_name("serial"), on_row=progress.row)
    finally:
        progress.close()


# ---- local processes ----------------------------------------------------------------


def _worker_main(wid: int, spec_dict: dict, run_dir: str, tasks, results, gpu: str | None, threads: int) -> None:
    """Worker process: take chunks until told to stop; report row/ready/fatal messages.

    ``tasks`` and ``results`` are this worker's own pipe ends: a worker killed in the middle
    of a message can only break its own pipe (a shared queue's lock would stay taken and
    wedge every other worker)."""
    os.setpgrp()  # the parent kills the worker together with any verifier it started
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["USNPRUNE_THREADS"] = str(threads)  # this worker's share of the cores
    from .store import writer_name
    from .verify import RunSpec, run_chunk

    spec = RunSpec(**spec_dict)
    writer = writer_name(f"local-{spec.run_id}-w{wid}")
    results.send(("ready", wid, None))
    while True:
        try:
            chunk = tasks.recv()
        except EOFError:  # the parent is gone
            return
        if chunk is None:
            return
        insts = [Instance.from_dict(d) for d in chunk]
        try:
            run_chunk(spec, Path(run_dir), insts, writer, on_row=lambda row: results.send(("row", wid, row)))
        except Exception as e:  # e.g. the backend cannot be loaded: tell the parent, stop
            results.send(("fatal", wid, f"{type(e).__name__}: {e}"))
            return
        results.send(("ready", wid, None))


@dataclasses.dataclass
class _Worker:
    proc: mp.Process
    tasks: object  # the parent's sending end of the worker's task pipe
    results: object  # the parent's receiving end of the worker's result pipe
    chunk: list[dict] = dataclasses.field(default_factory=list)
    last_seen: float = 0.0
    busy: bool = False


def run_local(spec, run_dir: Path, instances: list[Instance], workers: int, chunk_size: int | None, log) -> None:
    from .store import ResultStore, row_key, writer_name
    from .verify import load_manifest, make_row

    backend = load_backend(spec.backend, **spec.options)
    size = chunk_size or getattr(backend, "default_chunk_size", None)
    pending = [[i.to_dict() for i in c] for c in chunks_of(instances, size)]
    by_key = {i.key: i for i in instances}
    ctx = mp.get_context("spawn")
    gpus = visible_gpus()
    n = min(workers, max(1, len(pending)))
    pool: dict[int, _Worker] = {}
    spec_dict = dataclasses.asdict(spec)
    store = ResultStore(run_dir)
    parent_writer = writer_name(f"local-{spec.run_id}-parent")
    manifest = load_manifest(spec.bench)
    progress = Progress(len(instances), f"verify x{n}")
    next_wid = [0]
    threads = max(1, usable_cores() // n)

    def start_worker() -> None:
        wid = next_wid[0]
        next_wid[0] += 1
        task_r, task_w = ctx.Pipe(duplex=False)
        res_r, res_w = ctx.Pipe(duplex=False)
        gpu = gpus[wid % len(gpus)] if gpus else None
        p = ctx.Process(target=_worker_main, args=(wid, spec_dict, str(run_dir), task_r, res_w, gpu, threads),
                        daemon=True)
        p.start()
        task_r.close()  # the worker's ends live in the worker now
        res_w.close()
        pool[wid] = _Worker(p, task_w, res_r, last_seen=time.monotonic())

    def messages(timeout: float):
        """Messages from live workers' pipes (a pipe at EOF or torn: its worker is dead,
        which the liveness check below handles)."""
        ready = mp_connection.wait([w.results for w in pool.values()], timeout)
        out = []
        for conn in ready:
            try:
                while conn.poll():
                    out.append(conn.recv())
            except (EOFError, OSError, pickle.UnpicklingError, ValueError):
                pass
        return out

    def lost_instance(w: _Worker, status: str, message: str) -> None:
        """A killed/dead worker: a row for its instance in flight, the rest requeued.

        The store, not the messages (the last ones may be lost with the worker), says what
        is finished; workers take their chunk in order, so the first unfinished instance is
        the one in flight. Each death settles it, so a worker that keeps dying cannot loop."""
        finished = store.finished_keys()
        rest = [d for d in w.chunk if row_key(d) not in finished]
        if not rest:
            return
        verdict = Verdict(status, time.monotonic() - w.last_seen if status == "timeout" else 0.0, None, message)
        row = make_row(spec, backend.name, backend.version(), by_key[row_key(rest[0])], verdict, None, manifest)
        store.append(row, parent_writer)
        progress.row(row)
        if rest[1:]:
            pending.insert(0, rest[1:])

    def retire(wid: int, kill: bool = False) -> None:
        w = pool.pop(wid)
        if kill:
            _kill(w.proc)
        else:
            try:
                w.tasks.send(None)
            except OSError:
                pass
            w.proc.join(timeout=10)
        w.tasks.close()
        w.results.close()

    for _ in range(n):
        start_worker()
    fatal = None
    try:
        while pool:
            msgs = messages(0.5)
            now = time.monotonic()
            for kind, wid, payload in msgs:
                if wid not in pool:
                    continue
                w = pool[wid]
                w.last_seen = now
                if kind == "row":
                    progress.row(payload)
                elif kind == "ready":
                    w.busy, w.chunk = False, []
                    if pending and fatal is None:
                        w.chunk = pending.pop(0)
                        w.busy = True
                        try:
                            w.tasks.send(w.chunk)
                        except OSError:
                            pass  # it died: the liveness check below settles the chunk
                    else:
                        retire(wid)
                elif kind == "fatal":
                    fatal = payload
                    retire(wid)
            for wid, w in list(pool.items()):
                limit = max((d["timeout"] for d in w.chunk), default=0.0) + GRACE_S
                if w.busy and now - w.last_seen > limit:
                    retire(wid, kill=True)
                    lost_instance(w, "timeout", f"hard limit: no answer after {now - w.last_seen:.0f} s; worker killed")
                    start_worker()
                elif not w.proc.is_alive():
                    code = w.proc.exitcode
                    retire(wid, kill=True)
                    if w.busy:
                        lost_instance(w, "error", f"worker died (exit code {code}) while verifying")
                        start_worker()
    finally:
        for wid in list(pool):
            retire(wid, kill=True)
        progress.close()
    if fatal:
        raise ConfigError(f"verifier workers could not start: {fatal}")


def _kill(proc: mp.Process) -> None:
    if proc.pid is None or not proc.is_alive():
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own group (setpgrp)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.kill()
    proc.join(timeout=5)
