"""A progress display of finished instances with a count per verdict (stderr): a bar on a
terminal, a line every 30 s in a log file (usnprune/progress.py)."""

from __future__ import annotations

from collections import Counter

from usnprune.progress import bar


class Progress:
    def __init__(self, total: int, desc: str) -> None:
        self.counts: Counter = Counter()
        self.bar = bar(total, desc, unit="instances", leave=True)

    def row(self, row: dict) -> None:
        self.counts[row["verdict"]] += 1
        self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
