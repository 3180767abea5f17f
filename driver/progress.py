"""A progress bar of finished instances with a count per verdict (stderr)."""

from __future__ import annotations

from collections import Counter

from tqdm import tqdm

from usnprune.system import progress_enabled


class Progress:
    def __init__(self, total: int, desc: str) -> None:
        self.counts: Counter = Counter()
        self.bar = tqdm(total=total, desc=desc, unit="inst", dynamic_ncols=True,
                        disable=not progress_enabled())

    def row(self, row: dict) -> None:
        self.counts[row["verdict"]] += 1
        self.bar.update(1)
        self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=False)

    def close(self) -> None:
        self.bar.close()
