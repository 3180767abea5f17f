"""The ``vnnlib`` backend: any solver that answers the VNN-LIB 2.0 command line (chapter 5).

For each instance it runs, as its own process group with a hard limit of
``ceil(timeout) + slack`` seconds (killed by group id, never by name; usnprune/process.py)::

    <command> verify QUERY --network <declared name>=<ONNX> --timeout <ceil(timeout)>

where ``command`` comes from the profile (``profiles/vnnlib.yaml``; by default
``usnprune-solver``, usnprune's own). A ``.vnnlib.gz`` query is decompressed into a scratch
folder first: the standard does not ask solvers to read gzip. The answer is read strictly,
since a solver that misbehaves must never produce a verdict:

* killed at the hard limit -> ``timeout``; ``timed-out`` -> ``timeout``; ``unknown`` -> ``unknown``;
* ``unsat`` -> ``certified``; ``sat`` -> ``falsified`` with the input values of its
  assignment (5.3.1), which the trust layer then replays through onnxruntime
  (``verifier_specs/trust.py``): an assignment that is not a counterexample is an ``error``;
* ``error``, naming what went wrong and carrying the tail of stderr: death by a signal, a
  non-zero exit status (whatever stdout says: the standard defines no exit codes, and a
  status that disagrees with an answer leaves the answer untrustworthy), a first line of
  stdout that is not one of the four results, a ``sat`` whose assignment does not match the
  query's declarations, a command that cannot be started.

stderr is otherwise ignored (5.1 puts logs there). The backend sends VNN-LIB 2 queries
only -- the standard's command line is defined for them -- so ``usnprune verify`` runs a
benchmark's ``2.0/`` folder with it.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from usnprune.config import from_dict, require
from usnprune.errors import UsnpruneError
from usnprune.export.vnnlib import Property
from usnprune.process import Completed, run_limited, tail
from usnprune.verifier_specs.base import Backend, Instance, Verdict, timed

from .solver import assignment, spec

VERDICTS = {spec.UNSAT: "certified", spec.SAT: "falsified", spec.UNKNOWN: "unknown", spec.TIMED_OUT: "timeout"}


@dataclasses.dataclass
class VnnlibSolverOptions:
    command: str | list[str] = "usnprune-solver"  # the solver's argv before `verify`; a string is split like a shell's
    slack: float = 10.0  # seconds beyond --timeout before the process group is killed
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra environment variables for the solver
    profile_name: str = "vnnlib"

    def check(self, where: str = "vnnlib") -> None:
        require(bool(self.argv()), f"{where}.command", "give the solver's command")
        require(0 <= self.slack <= 3600, f"{where}.slack", f"must be in [0, 3600] seconds, got {self.slack}")

    def argv(self) -> list[str]:
        """The command, its program found on PATH or else beside this Python (the console
        scripts of usnprune's own environment, e.g. usnprune-solver, with the venv not activated)."""
        argv = shlex.split(self.command) if isinstance(self.command, str) else [str(c) for c in self.command]
        if argv and os.sep not in argv[0] and shutil.which(argv[0]) is None:
            sibling = Path(sys.executable).parent / argv[0]
            if sibling.is_file() and os.access(sibling, os.X_OK):
                argv[0] = str(sibling)
        return argv


def interpret(proc: Completed, prop: Property, limit: float) -> tuple[str, str, tuple[float, ...] | None]:
    """``(status, message, counterexample)`` from a finished ``verify`` run (module docstring)."""
    err = tail(proc.stderr)
    if proc.killed:
        return "timeout", f"killed at the hard limit of {limit:g} s", None
    lines = (proc.stdout or "").splitlines()
    first = lines[0].strip() if lines else ""
    shown = repr(first[:80]) if lines else "nothing on stdout"
    if proc.returncode is not None and proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return "error", f"the solver died of {name} (first line of stdout: {shown}); stderr: {err}", None
    if proc.returncode != 0:
        return "error", (f"the solver exited with status {proc.returncode} after printing {shown}; a non-zero status "
                         f"makes any answer untrustworthy; stderr: {err}"), None
    if first not in VERDICTS:
        return "error", (f"unparseable result line {shown} (expected one of {', '.join(spec.RESULTS)}); "
                         f"stderr: {err}"), None
    if first != spec.SAT:
        return VERDICTS[first], "", None
    try:
        values = assignment.parse(lines[1:], prop.declared)
    except assignment.AssignmentError as e:
        return "error", f"sat, but the assignment is unreadable: {e}", None
    x = assignment.inputs_of(prop.declared, values)
    return "falsified", "sat: the solver's assignment (replayed through onnxruntime)", tuple(float(v) for v in x)


class VnnlibSolverBackend(Backend):
    name = "vnnlib"
    vnnlib_versions = ("2.0",)

    def __init__(self, profile: dict | None = None, **options) -> None:
        super().__init__(profile, **options)
        self.options = from_dict(VnnlibSolverOptions, self.profile,
                                 where=f"profile {self.profile.get('profile_name', 'vnnlib')}")
        self._version: str | None = None

    def _env(self) -> dict[str, str]:
        return {**os.environ, **{str(k): str(v) for k, v in self.options.env.items()}}

    def check_available(self) -> None:
        exe = self.options.argv()[0]
        if shutil.which(exe, path=self._env().get("PATH")) is None and not os.access(exe, os.X_OK):
            raise UsnpruneError(f"{exe}: the solver command of profile {self.options.profile_name} is not found "
                                "(set `command:` in the profile, or --option command=...)")

    def version(self) -> str:
        """``--name`` and ``--version`` (5.2), asked once."""
        if self._version is None:
            said = []
            for option in spec.GLOBAL_OPTIONS:
                try:
                    p = run_limited(self.options.argv() + [option], 30.0, env=self._env())
                    line = (p.stdout or "").strip().splitlines()
                    said.append(line[0].strip() if p.returncode == 0 and line else "?")
                except OSError:
                    said.append("?")
            self._version = " ".join(said)
        return self._version

    def verify(self, instance: Instance) -> Verdict:
        done = timed(time.monotonic())
        prop, error = instance.query()
        if error:
            return done("error", error)
        if prop.version.split(".")[0] != "2":
            return done("error", f"{instance.vnnlib_path}: a VNN-LIB {prop.version} query; the {self.name} backend "
                                 "sends VNN-LIB 2 queries (verify the benchmark's 2.0/ folder)")
        seconds = max(1, math.ceil(float(instance.timeout)))  # 5.3: an integer number of seconds
        limit = seconds + self.options.slack
        with tempfile.TemporaryDirectory(prefix="usnprune-vnnlib-") as tmp:
            query = instance.vnnlib_path.resolve()
            raw = query.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                query = Path(tmp) / query.name.removesuffix(".gz")
                query.write_bytes(gzip.decompress(raw))
            cmd = self.options.argv() + [spec.VERIFY, str(query), spec.NETWORK,
                                         f"{prop.declared.name}={instance.onnx_path.resolve()}",
                                         spec.TIMEOUT, str(seconds)]
            try:
                proc = run_limited(cmd, limit, cwd=tmp, env=self._env())
            except OSError as e:
                return done("error", f"cannot start the solver {cmd[0]!r}: {e.strerror or e}")
        status, message, x = interpret(proc, prop, limit)
        return done(status, message, x)


BACKEND = VnnlibSolverBackend
__all__ = ["BACKEND", "VnnlibSolverBackend", "VnnlibSolverOptions", "interpret"]
