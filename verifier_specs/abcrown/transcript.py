"""Reading what alpha-beta-CROWN prints and writes: its transcript (streamed line by line),
its single-instance results file, its counterexample file and its instances-file results
pickle; and what each of its statuses means as a usnprune verdict."""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import re

RESULT_LINE = re.compile(r"^Result: (?P<status>[A-Za-z_-]+(?: \(timed out\))?) in (?P<seconds>[-+0-9.eE]+) seconds\s*$")
SINGLE_RESULT_LINE = re.compile(r"^Result: (?P<status>sat|unsat|timeout|unknown)\s*$")
TIME_LINE = re.compile(r"^Time: (?P<seconds>[-+0-9.eE]+)\s*$")
HEADER_LINE = re.compile(r"^\s*%+ idx: (?P<idx>\d+), vnnlib ID: (?P<id>\d+) %+\s*$")
TIMEOUT_LINE = re.compile(r"^Time out!+\s*$")
ADV_LINE = re.compile(r"^Adv example:\s*$")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)")
CEX_ENTRY = re.compile(r"\(\s*X_(?P<i>\d+)\s+(?P<v>[^\s()]+)\s*\)")


@dataclasses.dataclass
class InstanceOutput:
    """What the tool printed about one instance."""

    idx: int | None = None  # its idx in the header line (position in the instances file)
    status: str | None = None  # the raw status of its Result line
    seconds: float | None = None  # its own time for the instance (Result line or Time: line)
    timed_out: bool = False  # a "Time out!" line was printed for it
    adv_example: list[float] | None = None  # the adversarial example it printed (show_adv_example)


class TranscriptParser:
    """Reads the tool's output line by line (as it streams) in either mode.

    ``feed(line)`` returns a finished :class:`InstanceOutput` when ``line`` completes an
    instance (its ``Result:`` line in instances-file mode; ``Time:`` after ``Result:`` in
    single-instance mode), else None. ``current`` is the instance being printed.
    """

    def __init__(self) -> None:
        self.current = InstanceOutput()
        self.started = False  # a header line was seen for ``current``
        self._adv: list[str] | None = None  # lines of an adversarial example being read

    def feed(self, line: str) -> InstanceOutput | None:
        line = line.rstrip("\r\n")
        if self._adv is not None:
            # The example is ``print(tensor)``: ``tensor([...])``, or with ``device=...`` /
            # ``dtype=...`` after the list on GPUs. It ends at its first ``]``; a blank line or
            # any line the parser knows ends it too and is then read as itself, so a
            # malformed example can never swallow an instance's Result line.
            if not line.strip() or any(p.match(line) for p in (RESULT_LINE, HEADER_LINE, ADV_LINE, TIME_LINE)):
                self._end_adv()
            else:
                self._adv.append(line)
                if "]" in line or len(self._adv) > 200:
                    self._end_adv()
                return None
        if ADV_LINE.match(line):
            self._adv = []
            return None
        m = HEADER_LINE.match(line)
        if m:
            self.current = InstanceOutput(idx=int(m["idx"]))
            self.started = True
            return None
        if TIMEOUT_LINE.match(line):
            self.current.timed_out = True
            return None
        m = RESULT_LINE.match(line)
        if m:
            done = self.current
            done.status, done.seconds = m["status"], float(m["seconds"])
            self.current, self.started = InstanceOutput(), False
            return done
        m = SINGLE_RESULT_LINE.match(line)
        if m:
            self.current.status = m["status"]
            return None
        m = TIME_LINE.match(line)
        if m and self.current.status is not None:
            done = self.current
            done.seconds = float(m["seconds"])
            self.current, self.started = InstanceOutput(), False
            return done
        return None

    def _end_adv(self) -> None:
        text = " ".join(self._adv or [])
        body = text[text.find("(") + 1:] if "(" in text else text
        self.current.adv_example = [float(v) for v in NUMBER.findall(body.split("]")[0])] or None
        self._adv = None


def parse_transcript(text: str) -> list[InstanceOutput]:
    """Every finished instance in a whole transcript (tests, post-mortems)."""
    parser = TranscriptParser()
    out = []
    for line in text.splitlines():
        done = parser.feed(line)
        if done is not None:
            out.append(done)
    return out


def parse_counterexample(text: str) -> tuple[float, ...] | None:
    """The input ``(X_0, X_1, ...)`` of a counterexample file or a ``sat`` results file."""
    values = {int(m["i"]): float(m["v"]) for m in CEX_ENTRY.finditer(text)}
    if not values or sorted(values) != list(range(len(values))):
        return None
    return tuple(values[i] for i in range(len(values)))


def parse_results_file(text: str) -> tuple[str, tuple[float, ...] | None]:
    """Single-instance results file: ``unsat`` | ``sat`` (+ counterexample) | ``timeout``."""
    stripped = text.strip()
    if not stripped:
        return "", None
    word = stripped.split()[0]
    return word, parse_counterexample(stripped) if word == "sat" else None


class _ResultsUnpickler(pickle.Unpickler):
    """The instances-file results pickle: dicts, lists, numbers, a defaultdict, and torch
    tensors (its ``bab_ret`` bounds), which come back as None. Nothing else is built, so
    reading it runs no code and needs no torch."""

    SAFE = {("collections", "defaultdict"): collections.defaultdict, ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "list"): list, ("builtins", "dict"): dict, ("builtins", "set"): set, ("builtins", "tuple"): tuple}

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        if module == "torch" or module.startswith(("torch.", "numpy")):
            return _opaque
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the results pickle")

    def persistent_load(self, pid):
        return None


def _opaque(*args, **kwargs) -> None:
    return None


def load_results_pickle(data: bytes) -> list[tuple[str, float]]:
    """``results`` of the instances-file results pickle: ``[(status, seconds)]`` in order."""
    obj = _ResultsUnpickler(io.BytesIO(data)).load()
    return [(str(s), float(t)) for s, t in obj.get("results", [])]


# safe-mip / safe-incomplete-refine: proven by its MIP or refined incomplete stage
CERTIFIED = {"safe", "safe-incomplete", "safe-incomplete-refine", "safe-mip", "unsat"}


def classify(status: str, seconds: float | None, timeout: float, timed_out: bool,
             accept_late: bool = False) -> tuple[str, str]:
    """Our verdict status and a message for one of the tool's statuses.

    safe / safe-incomplete / unsat -> certified; unsafe-pgd / unsafe-bab / sat -> falsified;
    unknown / timeout -> timeout when it ran out of time (a "Time out!" line or its time
    reached the limit), else unknown. A status carrying " (timed out)" answered after the
    time limit: a timeout unless ``accept_late``.
    """
    late = status.endswith(" (timed out)")
    base = status[: -len(" (timed out)")] if late else status
    t = f"{seconds:.2f} s" if seconds is not None else "?"
    if base in CERTIFIED:
        verdict = "certified"
    elif base == "sat" or base.startswith("unsafe"):
        verdict = "falsified"
    elif base.startswith("unknown") or base == "timeout":
        ran_out = timed_out or (seconds is not None and seconds >= timeout)
        return ("timeout", f"alpha-beta-CROWN: {status} (time limit {timeout:g} s reached, {t})") if ran_out \
            else ("unknown", f"alpha-beta-CROWN: {status} (gave up after {t})")
    else:
        return "error", f"alpha-beta-CROWN printed an unrecognised status {status!r}"
    if late and not accept_late:
        return "timeout", f"alpha-beta-CROWN: {status}: answered {base} after the {timeout:g} s time limit ({t})"
    return verdict, f"alpha-beta-CROWN: {status}"
