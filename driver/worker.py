"""The worker every executor runs: verify a chunk of instances, appending each row as it
finishes. The serial executor runs it in process, the local executor in each worker
process, the Slurm executor in each array task.

Before an instance is verified, its ONNX and VNNLIB files are hashed and compared with the
run's fingerprint (run.json): a file changed since the run started gets an ``error`` row
naming it instead of a verdict about other content.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import Callable

from usnprune.verifier_specs.base import Instance, Verdict, backend_from_profile
from usnprune.verifier_specs.trust import Checker

from usnprune.files import hash_file

from .runfolder import RunSpec, fingerprint_name, load_manifest, make_row
from .store import CAUSE_INFRASTRUCTURE, ResultStore, StoreError


class Abandoned(BaseException):
    """Raised by an ``on_row`` callback whose reader is gone (the parent of a local worker
    died): the chunk stops at once, and nothing is recorded for what was not finished.
    A BaseException, so that no ``except Exception`` on the way turns it into an error row."""


class _StoreFailed(BaseException):
    """Carries a StoreError out of the backend's loop untouched."""


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

    A backend that raises mid-chunk gets an ``error`` row (cause ``infrastructure``, so
    ``--resume`` tries again) for the first instance it did not answer (the one it was on) and
    is run again on the rest; the chunk never ends the run. A row that cannot be stored
    (:class:`StoreError`) and an :class:`Abandoned` callback end the chunk without a row.
    """
    store = ResultStore(run_dir)
    manifest = load_manifest(spec.bench)
    checker = Checker()
    done: set[str] = set()
    backend = backend_from_profile(spec.profile)
    name, version = backend.name, backend.version()
    hashes: dict[str, str] = {}

    def changed(inst: Instance) -> str | None:
        for rel in (inst.onnx, inst.vnnlib):
            name = fingerprint_name(spec.bench, inst, rel)  # 2.0/onnx/... in a version folder
            want = spec.fingerprint.get(name)
            if want is None or want == "missing":
                continue  # an older run.json, or a file that was already missing (the backend reports it)
            if name not in hashes:
                try:
                    hashes[name] = hash_file(inst.root / rel)
                except OSError:
                    hashes[name] = "missing"
            if hashes[name] != want:
                return f"{name} changed since the run started (its SHA-256 differs from run.json); not verified"
        return None

    def store_row(inst: Instance, verdict: Verdict, violated, cause: str | None = None, check_time=None) -> None:
        row = make_row(spec, name, version, inst, verdict, violated, manifest, cause, check_time)
        try:
            store.append(row, writer)
        except StoreError as e:  # through the backend as a BaseException: nothing may catch it
            raise _StoreFailed(e) from None
        done.add(inst.key)
        if on_row:
            on_row(row)

    def record(inst: Instance, verdict: Verdict) -> None:
        cause = None
        try:
            verdict, violated = checker.check(inst, verdict)
        except Exception as e:  # the check itself must never lose the row
            verdict, violated = dataclasses.replace(verdict, status="error", message=f"result check failed: {e}"), None
            cause = CAUSE_INFRASTRUCTURE
        store_row(inst, verdict, violated, cause, checker.last_seconds)

    try:
        pending = []
        for inst in instances:
            why = changed(inst)
            if why:
                store_row(inst, Verdict("error", 0.0, None, why), None)
            else:
                pending.append(inst)
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
                store_row(pending[0], Verdict("error", 0.0, None,
                                              f"backend crashed: {type(e).__name__}: {e} | {tb[-600:]}"),
                          None, CAUSE_INFRASTRUCTURE)
                pending = pending[1:]
    except _StoreFailed as e:
        raise e.args[0] from None
    return len(done)
