"""The results store of a run folder: one JSON line per finished instance.

Every writer process appends to its own file ``RUN/results/<writer>.jsonl`` (the local
workers, each Slurm array task), one whole line per ``os.write`` on an ``O_APPEND``
descriptor under an exclusive ``flock``, then ``fsync``. A process killed mid-write (even
``kill -9``) can leave at most one torn last line, which readers skip and the next append
starts after; a finished row is never rewritten, so nothing finished is lost or corrupted.
Readers merge all files; when an instance was finished twice (a resumed run racing an old
task, or an infrastructure error run again by ``--resume``) the later row wins.

An ``error`` row says what caused it (``error_cause``): ``instance`` -- the backend's
answer about that instance, or one of its files -- is final; ``infrastructure`` -- a worker
that died, a backend that crashed, a process that was killed -- is not: such an instance
does not count as finished, and ``--resume`` runs it again.

A row that cannot be written (a full disk, a folder made read-only) raises
:class:`StoreError`, a one-line user error: it is never turned into an error row.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from usnprune.verifier_specs.base import instance_key

from usnprune.errors import UsnpruneError

RESULTS_DIR = "results"
CAUSE_INSTANCE = "instance"
CAUSE_INFRASTRUCTURE = "infrastructure"


class StoreError(UsnpruneError):
    """A result row could not be written (the rows already written are kept)."""


def _norm(rel: str) -> str:
    return "/".join(p for p in str(rel).replace("\\", "/").split("/") if p not in ("", "."))


def row_key(row: dict) -> str:
    """The instance key of a row (as :attr:`Instance.key`; ``./a`` and ``a`` are one file)."""
    return instance_key(_norm(row["onnx"]), _norm(row["vnnlib"]))


def is_final(row: dict) -> bool:
    """Whether a row settles its instance (not an error the infrastructure caused)."""
    return not (row.get("verdict") == "error" and row.get("error_cause") == CAUSE_INFRASTRUCTURE)


def writer_name(prefix: str = "w") -> str:
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}"


class ResultStore:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / RESULTS_DIR

    def append(self, row: dict, writer: str | None = None) -> None:
        """Append one finished instance atomically (see the module docstring)."""
        row = dict(row, finished_at=row.get("finished_at", time.time()))
        line = json.dumps(row, sort_keys=True, default=_jsonable).encode() + b"\n"
        path = self.dir / f"{writer or writer_name()}.jsonl"
        try:
            self._append(path, line)
        except OSError as e:
            raise StoreError(f"{path}: cannot write a result ({e.strerror or e}); the rows written so far are "
                             f"kept: free the space or fix the folder, then run again with --resume") from None

    def _append(self, path: Path, line: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size:  # start after a torn line left by a killed writer
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _lines(self) -> Iterator[dict]:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.jsonl")):
            with open(path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        continue  # torn by a killed writer
                    try:
                        row = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and "onnx" in row and "vnnlib" in row:
                        yield row

    def rows(self) -> dict[str, dict]:
        """The latest row per instance key ``onnx,vnnlib``."""
        out: dict[str, dict] = {}
        for row in self._lines():
            key = row_key(row)
            if key not in out or row.get("finished_at", 0) >= out[key].get("finished_at", 0):
                out[key] = row
        return out

    def finished_keys(self) -> set[str]:
        """Instances settled for good: a row that is not an infrastructure error."""
        return {k for k, r in self.rows().items() if is_final(r)}


def _jsonable(v):
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:
        pass
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")
