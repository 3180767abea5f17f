"""What is wrong with a VNNLIB file, and where.

Every problem the reader finds is a :class:`VnnlibError` carrying the source name, the
1-based line and column of the offending token, and one line saying what is wrong, so a
user sees ``props/kp3.vnnlib:12:9: undeclared variable Y_20`` and nothing else.
"""

from __future__ import annotations

from usnprune.errors import UsnpruneError


class VnnlibError(UsnpruneError):
    """A VNNLIB file is unreadable, malformed, or outside the supported dialect."""

    def __init__(self, what: str, source: str = "<string>", line: int | None = None, column: int | None = None):
        self.what = what
        self.source = source
        self.line = line
        self.column = column
        where = source if line is None else f"{source}:{line}:{column if column is not None else 0}"
        super().__init__(f"{where}: {what}")


__all__ = ["VnnlibError"]
