"""What this process may use of the machine."""

from __future__ import annotations

import os

THREADS_ENV = "USNPRUNE_THREADS"  # an executor's share of the cores, set per worker


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_share() -> int:
    """Threads for numeric work: ``USNPRUNE_THREADS`` when an executor set it for this
    worker, else every usable core."""
    env = os.environ.get(THREADS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cores()


def progress_enabled() -> bool:
    """Progress bars are on unless ``USNPRUNE_NO_PROGRESS=1``."""
    return os.environ.get("USNPRUNE_NO_PROGRESS") != "1"
