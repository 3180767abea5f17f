"""The worker every executor runs: verify a chunk of instances, appending each row as it
finishes. The serial executor runs it in process, the local executor in each worker
process, the Slurm executor in each array task."""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import Callable

from usnprune.verifier_specs.base import Instance, Verdict, backend_from_profile
from usnprune.verifier_specs.trust import Checker

from .runfolder import RunSpec, load_manifest, make_row
from .store import ResultStore


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




def run_chunk(spec: RunSpec, run_dir: Path, instances: list[Instance], writer: str,
              on_row: Callable[[dict], None] | None = None) -> int:
    """Verify ``instances`` with the run's backend, appending each row as it finishes.

    A backend that raises mid-chunk gets an ``error`` row for the first instance it did not
    answer (the one it was on) and is run again on the rest; the chunk never ends the run.
    """
    store = ResultStore(run_dir)
    manifest = load_manifest(spec.bench)
    checker = Checker()
    done: set[str] = set()
    backend = backend_from_profile(spec.profile)
    name, version = backend.name, backend.version()

    def record(inst: Instance, verdict: Verdict) -> None:
        try:
            verdict, violated = checker.check(inst, verdict)
        except Exception as e:  # the check itself must never lose the row
            verdict, violated = dataclasses.replace(verdict, status="error", message=f"result check failed: {e}"), None
        row = make_row(spec, name, version, inst, verdict, violated, manifest)
        store.append(row, writer)
        done.add(inst.key)
        if on_row:
            on_row(row)

    pending = list(instances)
    while pending:
        try:
            backend.run(pending, record)
            break
        except Exception as e:
            tb = traceback.format_exc(limit=3)
            pending = [i for i in pending if i.key not in done]
            if not pending:
                break
            # every pass settles at least this one instance, so the loop ends
            record(pending[0], Verdict("error", 0.0, None, f"backend crashed: {type(e).__name__}: {e} | {tb[-600:]}"))
            pending = pending[1:]
    return len(done)
