"""Running a verifier as a subprocess with a hard wall-clock limit.

The child gets its own session (process group); on overrun the whole group is killed with
SIGKILL by its id -- never by name -- so helpers it spawned die with it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time


@dataclasses.dataclass
class Completed:
    returncode: int | None  # None when killed at the hard limit
    stdout: str
    stderr: str
    seconds: float
    killed: bool


def run_limited(cmd: list[str], limit: float, cwd: str | None = None, env: dict | None = None) -> Completed:
    """Run ``cmd``; kill its process group after ``limit`` seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=limit)
        return Completed(proc.returncode, out, err, time.monotonic() - t0, False)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return Completed(None, out, err, time.monotonic() - t0, True)


def tail(text: str, n: int = 300) -> str:
    """The last line(s) of a process's output, for one-line error messages."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


__all__ = ["Completed", "run_limited", "tail"]


def package_version(dist: str) -> str:
    """``'<dist> <version>'`` of an installed distribution, for Backend.version()."""
    try:
        from importlib.metadata import version

        return f"{dist} {version(dist)}"
    except Exception:  # not installed in this interpreter
        return f"{dist} (unknown version)"


def require_module(module: str, hint: str) -> None:
    """Raise a one-line UsnpruneError when ``module`` cannot be imported here."""
    import importlib.util

    from pruner.errors import UsnpruneError

    if importlib.util.find_spec(module) is None:
        raise UsnpruneError(f"{module} is not installed ({hint})")
