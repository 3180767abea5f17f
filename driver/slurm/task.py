"""Inside an array task: the same worker as every other executor, on the task's chunk."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from usnprune.system import THREADS_ENV
from usnprune.verifier_specs.base import Instance

from ..runfolder import RunSpec
from ..store import ResultStore
from ..worker import run_chunk


def run_task(spec_dict: dict, run_dir: str, chunk: list[dict]) -> dict:
    """One array task: verify the chunk's instances that have no row yet (a requeued task
    skips what it finished before), appending to ``RUN/results/slurm-<arrayid>_<k>.jsonl``."""
    # scancel means stop now (submitit ignores SIGTERM). The early-warning signal before
    # the time limit only gets a log line: submitit's handler would raise inside the
    # verifier, and run_chunk would then write error rows for instances nobody verified.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    signal.signal(usr, lambda *_: print("usnprune: the time limit is near; unfinished instances stay without a row "
                                        "(--resume runs them again)", file=sys.stderr, flush=True))
    # torch threads: the CPUs Slurm gave this task (1 unless --cpus-per-task), not the node's
    # cores -- several tasks share a node, and oversubscribed torch threads spin
    os.environ.setdefault(THREADS_ENV, os.environ.get("SLURM_CPUS_PER_TASK", "1"))
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
