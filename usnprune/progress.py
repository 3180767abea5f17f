"""Progress bars that suit where they are written.

On a terminal: a tqdm bar, redrawn in place. On anything else (a log file, a pipe, CI): a
plain line when the step starts, then at most one line every ``interval`` seconds and one at
the end — tqdm would write every redraw, separated by carriage returns, into the file (a
demo log of 283 KB was mostly that). ``USNPRUNE_NO_PROGRESS=1`` turns both off.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from .system import progress_enabled

LOG_INTERVAL = 30.0  # seconds between two lines in a log file


class LineProgress:
    """The tqdm calls we use (update, set_postfix, close, context manager), as log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, file: IO[str], interval: float = LOG_INTERVAL) -> None:
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, interval
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False
        self._emit()

    def _emit(self) -> None:
        elapsed = time.monotonic() - self.start
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and 0 < self.n < self.total:
            eta = f", ~{_duration(elapsed * (self.total - self.n) / self.n)} left"
        post = f" [{self.postfix}]" if self.postfix else ""
        self.file.write(f"{self.desc}: {self.n}{of} {self.unit}{pct}, {_duration(elapsed)} elapsed{eta}{post}\n")
        self.file.flush()
        self.last, self.shown = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._emit()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.shown != self.n:  # the last line already says where it ended
                self._emit()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off(LineProgress):
    def __init__(self) -> None:
        self.closed = True
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        pass


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def bar(total: int | None, desc: str, unit: str = "it", leave: bool = False, file: IO[str] | None = None,
        enabled: bool | None = None):
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere, nothing when disabled."""
    stream = file if file is not None else sys.stderr
    if not (progress_enabled() if enabled is None else enabled):
        return _Off()
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream)
    return LineProgress(total, desc, unit, stream)
