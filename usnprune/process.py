"""The one way usnprune runs another program: a hard wall-clock limit, a process-group kill.

Every child gets its own session (so its own process group): on overrun, or when the
caller gives up, the whole group is killed with SIGKILL by its id -- never by name -- so
helpers it spawned die with it. On Linux the child also gets SIGKILL when the process that
started it dies (``PR_SET_PDEATHSIG``; strictly, when the *thread* that started it ends, so
start children from a thread that lives as long as they should), so an executor killing a
worker takes the worker's verifier along; :func:`die_with_parent` does the same for a
process started otherwise (the local executor's workers).

* :func:`run_limited` -- run to completion (or the limit), capture stdout and stderr;
* :class:`Process` -- follow a long-running tool line by line as it prints, with a tail of
  its output kept for error messages (alpha-beta-CROWN, solvers of the VNN-LIB standard).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def die_with_parent(parent_pid: int | None) -> bool:
    """Make this process receive SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``);
    if the parent ``parent_pid`` is already gone (it died before this call), exit at once.
    Returns whether the kernel will do it (False elsewhere: then callers rely on their pipes)."""
    ok = _PRCTL is not None and _PRCTL(1, signal.SIGKILL, 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # orphaned between the fork and the prctl: the signal will never come
    return ok


def call_dying_with_parent(parent_pid: int, target: str, *args) -> None:
    """Entry point of a spawned child: :func:`die_with_parent` first, then import and call
    ``target`` ("module:function"). A spawned child imports its target's module before it
    runs a line of it; a heavy module (a verifier's, importing PyTorch) takes seconds on a
    loaded machine, and a parent killed in that window would leave the child alive until the
    import ends. This module is light, so the window shrinks to Python's own start-up."""
    die_with_parent(parent_pid)
    import importlib

    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(*args)


def _preexec() -> Callable[[], None] | None:
    """A preexec function making the child die with the process that starts it (Linux);
    run in the child between fork and exec."""
    if _PRCTL is None:
        return None
    parent = os.getpid()
    return lambda: die_with_parent(parent)





def spawn(cmd: list[str], *, cwd=None, env: dict | None = None, merge_stderr: bool = False) -> subprocess.Popen:
    """Start ``cmd`` in its own session, text pipes for its output, no stdin."""
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, start_new_session=True,
        preexec_fn=_preexec(), text=True, errors="replace", bufsize=1)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the child's whole process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(text: str | None, n: int = 300) -> str:
    """The last non-empty line of a program's output, for one-line error messages."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


@dataclasses.dataclass
class Completed:
    returncode: int | None  # None when killed at the hard limit
    stdout: str
    stderr: str
    seconds: float
    killed: bool


def run_limited(cmd: list[str], limit: float, cwd=None, env: dict | None = None) -> Completed:
    """Run ``cmd`` to completion; kill its process group after ``limit`` seconds.

    A program that is not there is ``FileNotFoundError``, as with ``subprocess.run``."""
    t0 = time.monotonic()
    proc = spawn(cmd, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=limit)
        return Completed(proc.returncode, out, err, time.monotonic() - t0, False)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return Completed(None, out, err, time.monotonic() - t0, True)
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise


class Process:
    """A tool followed as it prints: stdout and stderr merged, streamed to a queue of
    lines, kept whole in a log file (when given) and as a tail in memory. Used as a context
    manager, the group is killed on the way out if it still runs (an exception or Ctrl-C
    in the caller: the tool, in its own session, would not get the terminal's SIGINT)."""

    EOF = object()

    def __init__(self, cmd: list[str], cwd=None, env: dict | None = None, log_path: Path | None = None,
                 tail_lines: int = 40) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.lines: queue.Queue = queue.Queue()
        self.started = time.monotonic()
        self.proc = spawn(cmd, cwd=cwd, env=env, merge_stderr=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        log = open(self.log_path, "a", errors="replace") if self.log_path else None
        try:
            for line in self.proc.stdout:
                if log:
                    log.write(line)
                    log.flush()
                self.tail.append(line.rstrip("\n")[:300])
                self.lines.put(line)
        finally:
            if log:
                log.close()
            self.lines.put(self.EOF)

    def next_line(self, timeout: float):
        """The next line, ``EOF`` at the end, or None when nothing came within ``timeout``."""
        try:
            return self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def kill(self) -> None:
        kill_group(self.proc)
        self.wait()

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code

    def tail_text(self) -> str:
        return "\n".join(self.tail)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill()


__all__ = ["Completed", "Process", "kill_group", "run_limited", "spawn", "tail"]
