"""The executors on this machine.

* ``serial`` -- in this process, one instance after the other;
* ``local``  -- ``workers`` processes on this machine. Each worker runs the same
  :func:`driver.verify.run_chunk` as every other executor and appends to the run's results
  store itself. The parent hands out chunks one at a time, shows progress, and enforces a
  hard wall-clock limit: a worker silent for longer than the instance timeout plus a grace
  period is killed with its process group, its instance in flight gets a ``timeout`` row,
  and the rest of its chunk goes back to the queue. A worker that dies (crash, out of
  memory, kill -9) leaves an ``error`` row for its instance in flight with cause
  ``infrastructure`` (``--resume`` runs it again), never the end of the run.
  Workers die with the parent: the kernel sends each SIGKILL when the parent process ends
  (``PR_SET_PDEATHSIG``, kill -9 included), and a worker whose parent is gone stops at its
  next message without writing anything (a failed send is never an ``error`` row). So a
  killed ``verify`` leaves no worker behind, and the instances in flight simply have no row.
  Each worker talks to the parent over its own pair of pipes: a worker killed while
  sending cannot wedge the others (with one shared multiprocessing queue, a SIGKILL during
  a put left its lock taken and hung the run in 2 of 3 tries). When GPUs are visible,
  worker k sees only GPU ``k mod n`` (one verifier per GPU).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import time
from pathlib import Path

from usnprune.verifier_specs.base import Instance, Verdict, backend_from_profile

from usnprune.errors import UsnpruneError
from usnprune.process import call_dying_with_parent, die_with_parent
from usnprune.system import THREADS_ENV, usable_cores

from .progress import Progress
from .runfolder import RunSpec, load_manifest, make_row
from .store import CAUSE_INFRASTRUCTURE, ResultStore, row_key, writer_name
from .worker import Abandoned, chunks_of, run_chunk

GRACE_S = 30.0  # beyond an instance's timeout before the parent kills a silent worker



def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []



def run_serial(spec, run_dir: Path, instances: list[Instance], log) -> None:
    progress = Progress(len(instances), "verify")
    try:
        run_chunk(spec, run_dir, instances, writer_name("serial"), on_row=progress.row)
    finally:
        progress.close()


# ---- local processes ----------------------------------------------------------------


def _worker_main(wid: int, spec_dict: dict, run_dir: str, tasks, results, gpu: str | None, threads: int,
                 parent: int | None = None) -> None:
    """Worker process: take chunks until told to stop; report row/ready/fatal messages.

    ``tasks`` and ``results`` are this worker's own pipe ends: a worker killed in the middle
    of a message can only break its own pipe (a shared queue's lock would stay taken and
    wedge every other worker)."""
    die_with_parent(parent)  # a killed verify takes its workers along (module docstring)
    os.setpgrp()  # the parent kills the worker together with any verifier it started
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ[THREADS_ENV] = str(threads)  # this worker's share of the cores
    spec = RunSpec(**spec_dict)
    writer = writer_name(f"local-{spec.run_id}-w{wid}")

    def send(message) -> None:
        try:
            results.send(message)
        except (OSError, EOFError, ValueError):  # the parent is gone: stop, record nothing more
            raise Abandoned() from None

    try:
        send(("ready", wid, None))
        while True:
            try:
                chunk = tasks.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if chunk is None:
                return
            insts = [Instance.from_dict(d) for d in chunk]
            try:
                run_chunk(spec, Path(run_dir), insts, writer, on_row=lambda row: send(("row", wid, row)))
            except UsnpruneError as e:  # a full disk, a backend that cannot load: tell the parent, stop
                send(("fatal", wid, str(e)))
                return
            except Exception as e:
                send(("fatal", wid, f"{type(e).__name__}: {e}"))
                return
            send(("ready", wid, None))
    except Abandoned:
        return


@dataclasses.dataclass
class _Worker:
    proc: mp.Process
    tasks: object  # the parent's sending end of the worker's task pipe
    results: object  # the parent's receiving end of the worker's result pipe
    chunk: list[dict] = dataclasses.field(default_factory=list)
    last_seen: float = 0.0
    busy: bool = False


def run_local(spec, run_dir: Path, instances: list[Instance], workers: int, chunk_size: int | None, log) -> None:
    backend = backend_from_profile(spec.profile)
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
    started = time.time()  # rows from before (an earlier run of a resumed folder) are not this run's

    def start_worker() -> None:
        wid = next_wid[0]
        next_wid[0] += 1
        task_r, task_w = ctx.Pipe(duplex=False)
        res_r, res_w = ctx.Pipe(duplex=False)
        gpu = gpus[wid % len(gpus)] if gpus else None
        # through the light trampoline: the worker dies with this process even while it is
        # still importing its verifier (call_dying_with_parent)
        p = ctx.Process(target=call_dying_with_parent,
                        args=(os.getpid(), f"{__name__}:_worker_main", wid, spec_dict, str(run_dir), task_r, res_w,
                              gpu, threads, os.getpid()), daemon=True)
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
        is finished in this run; workers take their chunk in order, so the first instance
        without a row of this run is the one in flight. Each death settles it (an error
        row of cause ``infrastructure``: --resume tries it again), so a worker that keeps
        dying cannot loop."""
        finished = {k for k, r in store.rows().items() if r.get("finished_at", 0) >= started}
        rest = [d for d in w.chunk if row_key(d) not in finished]
        if not rest:
            return
        verdict = Verdict(status, time.monotonic() - w.last_seen if status == "timeout" else 0.0, None, message)
        row = make_row(spec, backend.name, backend.version(), by_key[row_key(rest[0])], verdict, None, manifest,
                       CAUSE_INFRASTRUCTURE if status == "error" else None)
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
        raise UsnpruneError(f"a verifier worker stopped: {fatal}")


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
