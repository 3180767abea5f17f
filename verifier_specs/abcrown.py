"""alpha-beta-CROWN, the external verifier, run as a subprocess in its own environment.

usnprune never imports alpha-beta-CROWN and never installs it: the user points at a
checkout (``home``) and the Python of its environment (``python``) through the profile,
``--option``, or ``USNPRUNE_ABCROWN_HOME`` / ``USNPRUNE_ABCROWN_PYTHON`` (docs/abcrown.md).

How a chunk of instances is run (the facts behind each choice are in docs/abcrown.md):

* The profile's ``abcrown_config`` mapping becomes the YAML file the tool reads; the driver
  adds only what it must own (files, time limits, counterexample saving).
* Every run works on a scratch copy of the ONNX and VNNLIB files in a fresh temporary
  folder, which is also the working directory: the tool writes ``<vnnlib>.compiled`` beside
  every property and ``out.txt`` / ``test_cex.txt`` into its cwd, and cannot read
  ``.vnnlib.gz`` (decompressed into the copy).
* Instances-file mode (``--csv_name`` + ``--root_path``) for chunks of more than one
  instance, so start-up (~6 s) is paid once per process. ``Result: <status> in <t> seconds``
  lines are parsed as they stream and each instance is reported at once.
* Its counterexample file keeps only the last ``sat``, so it is read (and removed) the
  moment an ``unsafe-*`` result line appears, and accepted only when it matches the
  adversarial example the tool printed for that very instance (and, where the project's
  replay is importable, when it replays). Otherwise that instance is verified again alone
  in single-instance mode, whose results file carries its own counterexample.
* A hard wall-clock limit per instance (the tool's own timeout excludes start-up and does
  not interrupt the sub-box batch in progress): the tool runs in its own session and
  process group, which is killed with ``os.killpg`` on overrun, never by name; a new
  process continues with the remaining instances. On Linux the tool also gets SIGKILL
  when the worker that started it dies (so an executor killing a worker takes it along).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import json
import math
import os
import pickle
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from pruner.config import from_dict, require
from pruner.errors import ConfigError, UsnpruneError

from .base import Backend, Instance, Verdict

ENV_HOME = "USNPRUNE_ABCROWN_HOME"
ENV_PYTHON = "USNPRUNE_ABCROWN_PYTHON"
ENTRY = Path("complete_verifier") / "abcrown.py"
SETTINGS_HINT = (f"set the profile key 'home' (or {ENV_HOME}) to the alpha-beta-CROWN checkout and "
                 f"'python' (or {ENV_PYTHON}) to the Python of its environment")

# abcrown_config keys the driver owns: where files are, and the time limit per instance.
DRIVER_OWNED = {
    ("general", "csv_name"): "the driver writes the instances file of each chunk",
    ("general", "root_path"): "the driver runs on a scratch copy of the benchmark",
    ("general", "results_file"): "the driver reads the results file from its scratch folder",
    ("model", "onnx_path"): "the driver passes each instance's ONNX file",
    ("specification", "vnnlib_path"): "the driver passes each instance's VNNLIB file",
    ("attack", "cex_path"): "the driver reads counterexamples from its scratch folder",
    ("data", "start"): "the driver chooses the instances of each process",
    ("data", "end"): "the driver chooses the instances of each process",
    ("data", "select_instance"): "the driver chooses the instances of each process",
    ("bab", "timeout"): "the time limit comes from each instance's timeout (instances.csv or --timeout)",
    ("bab", "override_timeout"): "the time limit comes from each instance's timeout (instances.csv or --timeout)",
    ("bab", "timeout_scale"): "the time limit comes from each instance's timeout (instances.csv or --timeout)",
}


# What abcrown.py imports at start, third-party modules first so a failure names the package.
PROBE_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "onnx2pytorch", "gurobipy", "auto_LiRPA",
                 "arguments", "beta_CROWN_solver", "lp_mip_solver", "attack", "loading", "read_vnnlib")


class AbcrownError(UsnpruneError):
    """alpha-beta-CROWN is not configured, or its installation cannot run."""


# ---- settings ---------------------------------------------------------------------


@dataclasses.dataclass
class AbcrownSettings:
    """The driver keys of an abcrown profile (see verifier_specs/profiles/abcrown.yaml)."""

    home: str | None = None  # the alpha-beta-CROWN checkout (else $USNPRUNE_ABCROWN_HOME)
    python: str | None = None  # the Python of its environment (else $USNPRUNE_ABCROWN_PYTHON)
    abcrown_config: dict = dataclasses.field(default_factory=dict)  # -> the YAML config it reads
    batch: bool = True  # instances-file mode for chunks of more than one instance
    chunk_size: int = 50  # instances per executor chunk (one process each, in batch mode)
    hard_limit_slack: float = 15.0  # seconds beyond an instance's timeout before the kill
    startup_slack: float = 10.0  # extra seconds for the first instance of each process
    accept_late: bool = False  # keep a certified/falsified answer given after the timeout
    omp_num_threads: int = 1  # OMP_NUM_THREADS of the tool, as its own scripts set it
    env: dict = dataclasses.field(default_factory=dict)  # extra environment variables
    extra_args: list[str] = dataclasses.field(default_factory=list)  # appended to its command line
    scratch_dir: str | None = None  # parent of the temporary working folders (default: system temp)
    keep_scratch: bool = False  # keep the working folders (debugging); their path is in the messages
    tail_lines: int = 40  # output lines kept in error messages
    profile_name: str = "abcrown"

    def check(self, where: str) -> None:
        require(self.chunk_size >= 1, f"{where}.chunk_size", f"must be >= 1, got {self.chunk_size}")
        require(self.hard_limit_slack >= 0, f"{where}.hard_limit_slack", f"must be >= 0 s, got {self.hard_limit_slack}")
        require(self.startup_slack >= 0, f"{where}.startup_slack", f"must be >= 0 s, got {self.startup_slack}")
        require(self.omp_num_threads >= 1, f"{where}.omp_num_threads", f"must be >= 1, got {self.omp_num_threads}")
        require(self.tail_lines >= 1, f"{where}.tail_lines", f"must be >= 1, got {self.tail_lines}")
        for section, value in self.abcrown_config.items():
            require(isinstance(value, dict), f"{where}.abcrown_config.{section}",
                    f"must be a mapping of alpha-beta-CROWN options, got {value!r}")
        for (section, key), why in DRIVER_OWNED.items():
            require(key not in (self.abcrown_config.get(section) or {}), f"{where}.abcrown_config.{section}.{key}",
                    f"is set by the driver ({why}); remove it from the profile")
        for k, v in self.env.items():
            require(isinstance(v, (str, int, float)), f"{where}.env.{k}", f"must be a string, got {v!r}")


def _set_dotted(mapping: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = mapping
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = cur[k] = {}
        cur = nxt
    cur[keys[-1]] = value


def build_config(settings: AbcrownSettings) -> dict:
    """The mapping written as the tool's YAML config: the profile's ``abcrown_config`` plus
    what counterexample recovery needs (the adversarial example saved and printed)."""
    cfg = json.loads(json.dumps(settings.abcrown_config))  # a deep, plain copy
    general = cfg.setdefault("general", {})
    general["save_adv_example"] = True
    general["show_adv_example"] = True  # printed per instance: proves whose cex the file holds
    return cfg


def config_text(settings: AbcrownSettings) -> str:
    return ("# written by usnprune from the profile's abcrown_config (docs/abcrown.md)\n"
            + yaml.safe_dump(build_config(settings), sort_keys=False))


# ---- parsing what the tool writes ---------------------------------------------------

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


# ---- the process --------------------------------------------------------------------


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec function making the child receive SIGKILL when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def setup() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup


_PREEXEC = _pdeathsig()


class Process:
    """The tool as a subprocess in its own session and process group; output streamed to a
    queue of lines, kept whole in a log file and as a tail in memory."""

    EOF = object()

    def __init__(self, cmd: list[str], cwd: Path, env: dict, log_path: Path, tail_lines: int = 40) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.lines: queue.Queue = queue.Queue()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_PREEXEC, bufsize=1, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "a", errors="replace") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n")[:300])
                self.lines.put(line)
        self.lines.put(self.EOF)

    def next_line(self, timeout: float):
        """The next line, ``EOF`` at the end, or None when nothing came within ``timeout``."""
        try:
            return self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def kill(self) -> None:
        """SIGKILL to the whole process group (the tool and anything it started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
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
        if self.proc.poll() is None:  # an exception or Ctrl-C in the driver: the tool, in its
            self.kill()               # own session, would not get the terminal's SIGINT


# ---- the backend --------------------------------------------------------------------


@dataclasses.dataclass
class _Staged:
    """An instance with its scratch copies (paths relative to the scratch root)."""

    inst: Instance
    onnx: str
    vnnlib: str
    position: int  # in the chunk: results are reported through on_result in any order


class AbcrownBackend(Backend):
    name = "abcrown"
    _probes: dict[tuple[str, str, str], str | None] = {}  # (home, python, env) -> problem or None, per process

    def __init__(self, profile: dict | None = None, **options: Any) -> None:
        dotted = {k: options.pop(k) for k in list(options) if k.startswith("abcrown_config.")}
        super().__init__(profile, **options)
        self.profile.setdefault("abcrown_config", {})
        if not isinstance(self.profile["abcrown_config"], dict):
            raise ConfigError(f"abcrown profile: abcrown_config must be a mapping, got {self.profile['abcrown_config']!r}")
        self.profile["abcrown_config"] = json.loads(json.dumps(self.profile["abcrown_config"]))
        for k, v in dotted.items():
            if v is not None:
                _set_dotted(self.profile["abcrown_config"], k[len("abcrown_config."):], v)
        where = f"abcrown profile {self.profile.get('profile_name', '')}".strip()
        self.settings = from_dict(AbcrownSettings, self.profile, where)

    # -- where the tool is

    @property
    def default_chunk_size(self) -> int:
        return self.settings.chunk_size

    def locate(self) -> tuple[Path, str]:
        """(home, python) from the settings or the environment; raises AbcrownError naming both."""
        home = self.settings.home or os.environ.get(ENV_HOME)
        python = self.settings.python or os.environ.get(ENV_PYTHON)
        if not home or not python:
            missing = " and ".join(n for n, v in (("home", home), ("python", python)) if not v)
            raise AbcrownError(f"alpha-beta-CROWN is not configured ({missing} not set): {SETTINGS_HINT}")
        home_p = Path(home).expanduser()
        if not (home_p / ENTRY).is_file():
            raise AbcrownError(f"alpha-beta-CROWN home {home_p} has no {ENTRY}: {SETTINGS_HINT}")
        py = os.path.expanduser(python)
        resolved = shutil.which(py) if os.sep not in py else py
        if not resolved or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
            raise AbcrownError(f"alpha-beta-CROWN python {python} is not an executable file: {SETTINGS_HINT}")
        return home_p.resolve(), resolved

    def check_available(self) -> None:
        """The checkout and the Python exist, and that Python imports what the tool imports
        at start (``PROBE_MODULES``); checked once per process and installation."""
        home, python = self.locate()
        key = (str(home), python, json.dumps(self.settings.env, sort_keys=True, default=str))
        if key not in self._probes:
            self._probes[key] = self._probe(home, python)
        if self._probes[key]:
            raise AbcrownError(self._probes[key])

    def _probe(self, home: Path, python: str) -> str | None:
        code = (
            "import importlib, json, sys\n"
            "sys.path.insert(0, '.')\n"
            f"for name in {PROBE_MODULES!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except BaseException as e:\n"
            "        print('USNPRUNE-PROBE ' + json.dumps([name, type(e).__name__ + ': ' + str(e).splitlines()[0] if str(e) else type(e).__name__]))\n"
            "        sys.exit(0)\n"
            "print('USNPRUNE-PROBE ' + json.dumps(None))\n"
        )
        env = self._env()
        try:
            r = subprocess.run([python, "-c", code], cwd=home / "complete_verifier", env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, errors="replace", timeout=300)
        except subprocess.TimeoutExpired:
            return f"alpha-beta-CROWN python {python} did not finish importing torch within 300 s: {SETTINGS_HINT}"
        except OSError as e:
            return f"alpha-beta-CROWN python {python} cannot be started ({e.strerror or e}): {SETTINGS_HINT}"
        found = [ln for ln in r.stdout.splitlines() if ln.startswith("USNPRUNE-PROBE ")]
        if not found:
            last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
            return (f"alpha-beta-CROWN python {python} is not a working Python (exit code {r.returncode}: {last}): "
                    f"{SETTINGS_HINT}")
        failure = json.loads(found[-1][len("USNPRUNE-PROBE "):])
        if failure is None:
            return None
        module, error = failure
        what = module if module in PROBE_MODULES[:7] else f"alpha-beta-CROWN's module {module}"
        hint = ""
        if "torchvision::nms" in error:
            hint = (" (its torchvision was built for another torch: an environment problem of the alpha-beta-CROWN "
                    "installation; install a torchvision that matches its torch)")
        return (f"alpha-beta-CROWN python {python} cannot import {what}: {error}{hint} -- an environment problem of "
                f"the verifier installation at home={home}; {SETTINGS_HINT}")

    def version(self) -> str:
        if getattr(self, "_version", None) is None:
            self._version = self._describe()
        return self._version

    def _describe(self) -> str:
        try:
            home, _ = self.locate()
        except AbcrownError:
            return "alpha-beta-CROWN"
        parts = []
        init = home / "complete_verifier" / "__init__.py"
        try:
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", init.read_text())
            if m:
                parts.append(m[1])
        except OSError:
            pass
        try:
            r = subprocess.run(["git", "-C", str(home), "describe", "--always", "--tags", "--dirty"],
                               capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and r.stdout.strip():
                parts.append(r.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "alpha-beta-CROWN" + (f" {' '.join(parts)}" if parts else "")

    # -- command lines

    def command(self, config: Path, results: Path, cex: Path, *, csv_name: str | None = None,
                root: Path | None = None, onnx: str | None = None, vnnlib: str | None = None,
                timeout: float | None = None) -> list[str]:
        """The tool's command line, in instances-file mode (``csv_name`` + ``root``) or for
        one instance (``onnx`` + ``vnnlib`` + ``timeout``)."""
        home, python = self.locate()
        cmd = [python, str(home / ENTRY), "--config", str(config)]
        if csv_name is not None:
            if root is None:
                raise ValueError("instances-file mode needs the root folder")
            cmd += ["--csv_name", csv_name, "--root_path", str(root)]
        else:
            if onnx is None or vnnlib is None or timeout is None:
                raise ValueError("single-instance mode needs onnx, vnnlib and timeout")
            cmd += ["--onnx_path", onnx, "--vnnlib_path", vnnlib, "--timeout", repr(float(timeout))]
        cmd += ["--results_file", str(results), "--cex_path", str(cex)]
        return cmd + list(self.settings.extra_args)

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # its own environment
        env["OMP_NUM_THREADS"] = str(self.settings.omp_num_threads)
        env["PYTHONUNBUFFERED"] = "1"  # result lines must arrive as they are printed
        env.update({str(k): str(v) for k, v in self.settings.env.items()})
        return env

    # -- verifying

    def verify(self, instance: Instance) -> Verdict:
        out: list[Verdict] = []
        self.run([instance], lambda _inst, v: out.append(v))
        return out[0]

    def run(self, instances: Iterable[Instance], on_result: Callable[[Instance, Verdict], None]) -> None:
        insts = list(instances)
        if not insts:
            return
        self.locate()  # unconfigured: the driver turns this into error rows for the chunk
        with _Scratch(self.settings) as ws:
            staged = []
            for i, inst in enumerate(insts):
                try:
                    staged.append(ws.stage(inst, i))
                except (OSError, EOFError, gzip.BadGzipFile) as e:
                    on_result(inst, Verdict("error", 0.0, None, f"cannot copy the instance files: {e}"))
            ws.write_config(config_text(self.settings))
            if self.settings.batch and len(staged) > 1:
                self._run_batch(ws, staged, on_result)
            else:
                for s in staged:
                    on_result(s.inst, self._run_single(ws, s))

    def _limit(self, inst: Instance, first: bool) -> float:
        return inst.timeout + self.settings.hard_limit_slack + (self.settings.startup_slack if first else 0.0)

    def _where(self, ws: "_Scratch") -> str:
        return f"; working folder kept at {ws.path}" if self.settings.keep_scratch else ""

    def _error_from(self, proc: Process, code: int, what: str, ws: "_Scratch") -> str:
        return (f"alpha-beta-CROWN {what} (exit code {code}){self._where(ws)}; last lines of its output:\n"
                + proc.tail_text())

    def _run_batch(self, ws: "_Scratch", items: list[_Staged], on_result) -> None:
        remaining = list(items)
        rerun: list[tuple[_Staged, str]] = []
        run_no = 0
        while remaining:
            run_no += 1
            csv_name = ws.write_instances(remaining, run_no)
            ws.clear_outputs()
            cmd = self.command(ws.config, ws.results, ws.cex, csv_name=csv_name, root=ws.root)
            with Process(cmd, ws.cwd, self._env(), ws.log, self.settings.tail_lines) as proc:
                k = self._one_batch_process(ws, proc, remaining, on_result, rerun)
            remaining = remaining[k:]
        for item, status in rerun:
            v = self._run_single(ws, item)
            v.message = f"instances-file run said {status} but its counterexample was not recovered; " \
                        f"verified again alone: {v.message}"
            on_result(item.inst, v)

    def _one_batch_process(self, ws: "_Scratch", proc: Process, remaining: list[_Staged], on_result,
                           rerun: list) -> int:
        """Follow one instances-file process; returns how many of ``remaining`` are settled."""
        parser = TranscriptParser()
        k = 0  # position in ``remaining`` of the instance being verified
        t_ref = proc.started  # when the current instance's clock started
        startup = None
        killed = False
        while k < len(remaining):
            limit = self._limit(remaining[k].inst, first=(k == 0))
            line = proc.next_line(t_ref + limit - time.monotonic())
            if line is Process.EOF:
                break
            if line is None:  # hard limit
                if time.monotonic() - t_ref < limit:
                    continue
                proc.kill()
                killed = True
                elapsed = time.monotonic() - t_ref
                on_result(remaining[k].inst, Verdict(
                    "timeout", elapsed, None,
                    f"hard limit: no answer {elapsed:.1f} s after the instance started (timeout "
                    f"{remaining[k].inst.timeout:g} s + slack {limit - remaining[k].inst.timeout:g} s); "
                    f"alpha-beta-CROWN killed (process group){self._where(ws)}"))
                k += 1
                break
            if startup is None and HEADER_LINE.match(line.rstrip("\n")):
                startup = time.monotonic() - proc.started
            done = parser.feed(line)
            if done is None:
                continue
            item = remaining[k]
            if done.idx is not None and done.idx != k:
                # every instances file starts at idx 0, so a Result for another idx means the
                # transcript is out of step: trust no verdict of this process from here on
                proc.kill()
                killed = True
                on_result(item.inst, Verdict(
                    "error", time.monotonic() - t_ref, None,
                    f"alpha-beta-CROWN's output is out of step (a result for idx {done.idx} while "
                    f"expecting idx {k}); the process was stopped and the rest run again{self._where(ws)}"))
                k += 1
                break
            self._settle(ws, item, done, startup if k == 0 else None, on_result, rerun)
            k += 1
            t_ref = time.monotonic()
        if not killed:
            if k >= len(remaining):  # all answered: let it print its summary, within bounds
                end = time.monotonic() + self.settings.hard_limit_slack + 30.0
                while (line := proc.next_line(end - time.monotonic())) is not Process.EOF:
                    if line is None:
                        proc.kill()  # its answers are all in; a hang on the way out loses nothing
                        break
            code = proc.wait()
            if k < len(remaining):
                k = self._after_early_exit(ws, proc, code, parser, remaining, k, t_ref, on_result, rerun)
        return k

    def _after_early_exit(self, ws, proc: Process, code: int, parser: TranscriptParser, remaining: list[_Staged],
                          k: int, t_ref: float, on_result, rerun) -> int:
        """The process ended with instances left: answers it saved but did not print are
        taken from its results pickle; the instance in flight gets an ``error`` with the tail
        of the output; with nothing started at all, every remaining instance does."""
        try:
            saved = load_results_pickle(ws.results.read_bytes()) if ws.results.is_file() else []
        except Exception:
            saved = []
        while k < len(saved) and k < len(remaining):  # answered, but the line was lost
            status, seconds = saved[k]
            self._settle(ws, remaining[k], InstanceOutput(k, status, seconds), None, on_result, rerun)
            k += 1
        if k >= len(remaining):
            return k
        what = "exited" if code == 0 else "failed"
        if k == 0 and not parser.started:  # it never reached an instance: the same for all
            msg = self._error_from(proc, code, f"{what} before verifying any instance", ws)
            for item in remaining:
                on_result(item.inst, Verdict("error", 0.0, None, msg))
            return len(remaining)
        on_result(remaining[k].inst, Verdict("error", time.monotonic() - t_ref, None,
                                             self._error_from(proc, code, f"{what} on this instance", ws)))
        return k + 1

    def _settle(self, ws: "_Scratch", item: _Staged, done: InstanceOutput, startup: float | None, on_result,
                rerun: list) -> None:
        """Report a finished instance, or queue it for a single run when it is falsified but
        its counterexample cannot be recovered from this run."""
        verdict = self._batch_verdict(ws, item, done, startup)
        if verdict is None:
            rerun.append((item, done.status or "?"))
        else:
            on_result(item.inst, verdict)

    def _batch_verdict(self, ws: "_Scratch", item: _Staged, done: InstanceOutput,
                       startup: float | None) -> Verdict | None:
        """The verdict for a finished instance of an instances-file run; None when it is
        falsified but its counterexample cannot be recovered from this run."""
        status, message = classify(done.status or "", done.seconds, item.inst.timeout, done.timed_out,
                                   self.settings.accept_late)
        if startup is not None:
            message += f"; process start-up {startup:.1f} s"
        cex = None
        if status == "falsified":
            cex = self._take_counterexample(ws, item, done.adv_example)
            if cex is None:
                return None
        elif ws.cex.exists():
            ws.cex.unlink()
        return Verdict(status, float(done.seconds or 0.0), cex, message)

    def _take_counterexample(self, ws: "_Scratch", item: _Staged, adv: list[float] | None) -> tuple[float, ...] | None:
        """This instance's counterexample from the shared file, if the file provably holds it."""
        try:
            text = ws.cex.read_text()
        except OSError:
            return None
        finally:
            if ws.cex.exists():
                ws.cex.unlink()  # a later instance must never find this one's point
        x = parse_counterexample(text)
        if x is None or adv is None or len(adv) != len(x):
            return None
        if any(not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(x, adv)):
            return None  # the file was written by another instance
        return x if _replays(item.inst, x) else None

    def _run_single(self, ws: "_Scratch", item: _Staged) -> Verdict:
        ws.clear_outputs()
        cmd = self.command(ws.config, ws.results, ws.cex, onnx=str(ws.root / item.onnx),
                           vnnlib=str(ws.root / item.vnnlib), timeout=item.inst.timeout)
        with Process(cmd, ws.cwd, self._env(), ws.log, self.settings.tail_lines) as proc:
            return self._one_single_process(ws, proc, item)

    def _one_single_process(self, ws: "_Scratch", proc: Process, item: _Staged) -> Verdict:
        parser = TranscriptParser()
        limit = self._limit(item.inst, first=True)
        done = None
        while True:
            line = proc.next_line(proc.started + limit - time.monotonic())
            if line is Process.EOF:
                break
            if line is None:
                if time.monotonic() - proc.started < limit:
                    continue
                proc.kill()
                elapsed = time.monotonic() - proc.started
                return Verdict("timeout", elapsed, None,
                               f"hard limit: no answer after {elapsed:.1f} s (timeout {item.inst.timeout:g} s + slack "
                               f"{limit - item.inst.timeout:g} s, start-up included); alpha-beta-CROWN killed "
                               f"(process group){self._where(ws)}")
            done = parser.feed(line) or done
        code = proc.wait()
        wall = time.monotonic() - proc.started
        if code != 0:
            return Verdict("error", wall, None, self._error_from(proc, code, "failed", ws))
        try:
            word, x = parse_results_file(ws.results.read_text())
        except OSError:
            word, x = "", None
        if not word:
            return Verdict("error", wall, None, self._error_from(proc, code, "wrote no results file", ws))
        seconds = done.seconds if done is not None and done.seconds is not None else wall
        status, message = classify(word, seconds, item.inst.timeout, bool(done and done.timed_out) or parser.current.timed_out,
                                   self.settings.accept_late)
        message += f" (single-instance run, {wall:.1f} s with start-up)"
        if status == "falsified":
            if x is None:
                try:
                    x = parse_counterexample(ws.cex.read_text())
                except OSError:
                    x = None
            if x is None:
                return Verdict("error", seconds, None,
                               f"alpha-beta-CROWN answered sat without a counterexample{self._where(ws)}")
        return Verdict(status, float(seconds), x, message)


def _replays(inst: Instance, x: tuple[float, ...]) -> bool:
    """Whether ``x`` replays through onnxruntime against the instance's property, when the
    project's replay is available (the driver replays every counterexample again)."""
    try:
        from export.vnnlib import parse_file
        from verifier_specs.replay import replay
    except ImportError:
        return True
    try:
        return bool(replay(str(inst.onnx_path), parse_file(inst.vnnlib_path), x).ok)
    except Exception:
        return True  # unreadable files: the driver's own check reports them


class _Scratch:
    """A fresh temporary folder per chunk: the config, a scratch copy of the instance files
    under ``root/``, the instances files, results, counterexample and log, and the tool's
    working directory ``cwd/``. Removed afterwards unless ``keep_scratch``."""

    def __init__(self, settings: AbcrownSettings) -> None:
        self.settings = settings

    def __enter__(self) -> "_Scratch":
        parent = self.settings.scratch_dir
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="usnprune-abcrown-", dir=parent))
        self.root = self.path / "root"
        self.cwd = self.path / "cwd"
        for p in (self.root / "onnx", self.root / "vnnlib", self.cwd):
            p.mkdir(parents=True)
        self.config = self.path / "config.yaml"
        self.results = self.path / "results"
        self.cex = self.path / "cex.txt"
        self.log = self.path / "output.log"
        self._onnx: dict[Path, str] = {}
        return self

    def __exit__(self, *exc) -> None:
        if not self.settings.keep_scratch:
            shutil.rmtree(self.path, ignore_errors=True)  # our own temporary folder only

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def stage(self, inst: Instance, position: int) -> _Staged:
        """Copy the ONNX (once per file; ``.onnx.gz`` as it is, the tool reads it) and the
        VNNLIB (``.gz`` decompressed: the tool cannot read it). Names are numbered, so no
        path from instances.csv (commas, ``..``) reaches the tool's instances file."""
        src = inst.onnx_path.resolve()
        if src not in self._onnx:
            name = f"onnx/m{len(self._onnx):04d}_{_safe(src.name)}"
            shutil.copyfile(src, self.root / name)
            self._onnx[src] = name
        vsrc = inst.vnnlib_path
        base = vsrc.name[:-3] if vsrc.name.endswith(".gz") else vsrc.name
        vname = f"vnnlib/p{position:05d}_{_safe(base)}"
        if vsrc.name.endswith(".gz"):
            with gzip.open(vsrc, "rb") as f, open(self.root / vname, "wb") as g:
                shutil.copyfileobj(f, g)
        else:
            shutil.copyfile(vsrc, self.root / vname)
        return _Staged(inst, self._onnx[src], vname, position)

    def write_instances(self, items: list[_Staged], run_no: int) -> str:
        name = f"instances-{run_no}.csv"
        with open(self.root / name, "w", newline="") as f:
            w = csv.writer(f)
            for s in items:
                w.writerow([s.onnx, s.vnnlib, repr(float(s.inst.timeout))])
        return name

    def clear_outputs(self) -> None:
        """A stale results or counterexample file must never be read as this run's."""
        for p in (self.results, self.cex):
            if p.exists():
                p.unlink()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


BACKEND = AbcrownBackend
