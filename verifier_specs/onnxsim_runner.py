"""Cross-check backend: onnxsim's VNN-COMP runner (``python -m onnxsim.vnnlib run``).

It runs ``python -m onnxsim.vnnlib run ONNX VNNLIB RESULTS TIMEOUT --engine E --budget N``
as a subprocess in a scratch folder, with a hard limit of ``timeout + slack`` seconds
(killed by process group), and reads the results file: its first word is ``unsat``,
``sat``, ``unknown``, ``timeout`` or ``error``; a ``sat`` file continues with ``(X_i v)``
lines, which become the counterexample.

onnxsim reads plain-text VNNLIB only, so ``.vnnlib.gz`` files are decompressed into the
scratch folder first. Its branch and bound splits ReLUs before inputs and its CROWN builds
dense matrices, so on 32x32 CNNs it mostly times out; it decides small networks (see
docs/verifiers.md), which is what the cross-check tests use.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import sys
import tempfile
import time
from pathlib import Path

from usnprune.config import from_dict, require
from usnprune.process import run_limited, tail
from usnprune.verifier_specs.base import Backend, Instance, Verdict, package_version, require_module, timed

ENGINES = ("ibp", "zonotope", "crown", "alpha", "prima", "bab", "bab-beta")
WORDS = {"unsat": "certified", "sat": "falsified", "unknown": "unknown", "timeout": "timeout", "error": "error"}
_X = re.compile(r"\(\s*X_(\d+)\s+([-+0-9.eE]+|nan|inf|-inf)\s*\)")


@dataclasses.dataclass
class OnnxsimOptions:
    engine: str = "bab"
    budget: int = 200
    slack: float = 10.0
    python: str = ""  # interpreter with onnxsim installed; empty: this one
    profile_name: str = "onnxsim"

    def check(self, where: str = "onnxsim") -> None:
        require(self.engine in ENGINES, f"{where}.engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        require(self.budget >= 1, f"{where}.budget", f"must be >= 1, got {self.budget}")
        require(0 <= self.slack <= 3600, f"{where}.slack", f"must be in [0, 3600] seconds, got {self.slack}")


def parse_results(text: str) -> tuple[str, tuple[float, ...] | None]:
    """``(status, counterexample)`` from a VNN-COMP results file."""
    words = text.split()
    if not words:
        return "error", None
    word = words[0].lower()
    status = WORDS.get(word)
    if status is None:
        return "error", None
    if status != "falsified":
        return status, None
    xs = {int(i): float(v) for i, v in _X.findall(text)}
    if not xs or sorted(xs) != list(range(len(xs))):
        return "error", None
    return status, tuple(xs[i] for i in range(len(xs)))


class OnnxsimRunner(Backend):
    name = "onnxsim"

    def __init__(self, profile: dict | None = None, **options) -> None:
        super().__init__(profile, **options)
        self.options = from_dict(OnnxsimOptions, self.profile, where=f"profile {self.profile.get('profile_name', 'onnxsim')}")

    def version(self) -> str:
        return package_version("onnxsim")

    def check_available(self) -> None:
        if not self.options.python:  # a separate interpreter is checked when it runs
            require_module("onnxsim", "pip install onnxsim")

    def verify(self, instance: Instance) -> Verdict:
        done = timed(time.monotonic())
        if missing := instance.missing():
            return done("error", missing)
        with tempfile.TemporaryDirectory(prefix="usnprune-onnxsim-") as tmp:
            vnnlib = instance.vnnlib_path
            raw = vnnlib.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                try:
                    raw = gzip.decompress(raw)
                except (OSError, EOFError) as e:
                    return done("error", f"{vnnlib}: cannot decompress: {e}")
                vnnlib = Path(tmp) / "property.vnnlib"
                vnnlib.write_bytes(raw)
            results = Path(tmp) / "results.txt"
            cmd = [self.options.python or sys.executable, "-m", "onnxsim.vnnlib", "run",
                   str(instance.onnx_path.resolve()), str(Path(vnnlib).resolve()), str(results),
                   repr(float(instance.timeout)), "--engine", self.options.engine, "--budget", str(self.options.budget)]
            proc = run_limited(cmd, float(instance.timeout) + self.options.slack, cwd=tmp)
            if proc.killed:
                return done("timeout", f"killed after the hard limit of {instance.timeout + self.options.slack:g} s")
            if not results.is_file():
                return done("error", f"onnxsim wrote no results file (exit {proc.returncode}): {tail(proc.stderr)}")
            status, x = parse_results(results.read_text())
            note = tail(proc.stderr)
            if status == "error" and not note:
                note = f"unreadable results file: {results.read_text()[:80]!r}"
            return done(status, note, x)


BACKEND = OnnxsimRunner
__all__ = ["BACKEND", "OnnxsimOptions", "OnnxsimRunner", "parse_results"]
