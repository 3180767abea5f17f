"""The one small interface every verifier backend implements.

A backend turns (onnx, vnnlib, timeout) into a :class:`Verdict`. Statuses (DESIGN.md):

* ``certified`` -- unsat: no (c, b) in the box moves the keypoint out of its tolerance box;
* ``falsified`` -- sat, with the counterexample input; the driver replays it through
  onnxruntime before it believes it (``verifier_specs.replay``);
* ``timeout``   -- the time limit was reached;
* ``unknown``   -- the verifier gave up (e.g. incomplete bounds were too loose);
* ``error``     -- anything else, with the reason in ``message``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from usnprune.errors import ConfigError, UsnpruneError

STATUSES = ("certified", "falsified", "timeout", "unknown", "error")
PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclasses.dataclass
class Instance:
    """One row of a benchmark folder's instances.csv."""

    root: Path  # the benchmark folder
    onnx: str  # path relative to root, exactly as in instances.csv
    vnnlib: str
    timeout: float
    index: int = 0  # row number in instances.csv
    vnnlib_version: str = ""  # the VNN-LIB version of the query ("1.0", "2.0"); "" when unknown

    @property
    def onnx_path(self) -> Path:
        return self.root / self.onnx

    @property
    def vnnlib_path(self) -> Path:
        return self.root / self.vnnlib

    @property
    def key(self) -> str:
        """Identifies the instance within its folder (the results store keys on it)."""
        return instance_key(self.onnx, self.vnnlib)

    def to_dict(self) -> dict:
        """Plain data for another process (a worker, a Slurm array task)."""
        return {"root": str(self.root), "onnx": self.onnx, "vnnlib": self.vnnlib, "timeout": self.timeout,
                "index": self.index, "vnnlib_version": self.vnnlib_version}

    @classmethod
    def from_dict(cls, d: dict) -> "Instance":
        return cls(Path(d["root"]), d["onnx"], d["vnnlib"], d["timeout"], d["index"], d.get("vnnlib_version", ""))

    def missing(self) -> str | None:
        """The error message for an ONNX or VNNLIB file that is not there, else None."""
        for kind, p in (("ONNX", self.onnx_path), ("VNNLIB", self.vnnlib_path)):
            if not p.is_file():
                return f"{p}: no such {kind} file"
        return None

    def query(self) -> tuple[Any, str | None]:
        """``(property, None)``, or ``(None, message)`` for a missing file or an unreadable query:
        what every backend that reads the query itself checks first."""
        if missing := self.missing():
            return None, missing
        from usnprune.export.vnnlib import VnnlibError, parse_file

        try:
            return parse_file(self.vnnlib_path), None
        except VnnlibError as e:
            return None, str(e)


def instance_key(onnx: str, vnnlib: str) -> str:
    """``onnx,vnnlib`` as in instances.csv: the key of an instance, and of its result rows."""
    return f"{onnx},{vnnlib}"


@dataclasses.dataclass
class Verdict:
    status: str
    time: float  # wall-clock seconds spent on this instance
    counterexample: tuple[float, ...] | None = None  # the input X (c, b) for falsified
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")


def timed(t0: float) -> Callable[..., Verdict]:
    """A factory of verdicts whose time is the wall clock since ``t0`` (``time.monotonic()``)."""

    def done(status: str, message: str = "", x=None) -> Verdict:
        cex = tuple(float(v) for v in x) if x is not None else None
        return Verdict(status, time.monotonic() - t0, cex, message)

    return done


class Backend(abc.ABC):
    """A verifier. Subclasses set ``name`` and implement ``verify``.

    ``profile`` is the parsed YAML profile (minus ``backend:``); ``options`` are command-line
    overrides. Backends that pay a start-up cost per process (alpha-beta-CROWN) override
    ``run`` to verify a whole chunk in one process.
    """

    name: str = "?"
    # The VNN-LIB versions of the queries it reads: the driver runs a benchmark's newest
    # version folder among these (VNN-COMP tools read 1.0; backends reading through
    # usnprune.export.vnnlib read both).
    vnnlib_versions: tuple[str, ...] = ("1.0",)

    def __init__(self, profile: dict | None = None, **options: Any) -> None:
        self.profile = dict(profile or {})
        self.profile.update({k: v for k, v in options.items() if v is not None})

    module: str = "?"  # the verifier_specs module named by the profile's ``backend:`` key

    def resolved(self) -> dict:
        """The profile as this backend uses it (options applied): recorded in run.json and
        handed to every worker, so a run reads its profile once."""
        return {"backend": self.module, **self.profile}

    def version(self) -> str:
        return "unknown"

    def check_available(self) -> None:
        """Raise a UsnpruneError naming what is missing when the verifier cannot run here."""

    @abc.abstractmethod
    def verify(self, instance: Instance) -> Verdict:
        """Verify one instance within ``instance.timeout`` seconds. Never raises for a bad
        instance: problems become ``error`` verdicts."""

    def run(self, instances: Iterable[Instance], on_result: Callable[[Instance, Verdict], None]) -> None:
        """Verify instances one after the other, reporting each as soon as it is done."""
        for inst in instances:
            on_result(inst, self.verify(inst))


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile(name_or_path: str) -> dict:
    """The profile mapping (with its ``backend:`` module name and ``profile_name``) of a
    profile name (``builtin``, ``abcrown``, ...) or a profile YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{p}: no such verifier profile")
    else:
        p = PROFILE_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            raise ConfigError(f"unknown backend {name_or_path!r} (known: {', '.join(profile_names())})")
    try:
        profile = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the verifier profile: {e}") from None
    if not isinstance(profile, dict) or "backend" not in profile:
        raise ConfigError(f"{p}: a verifier profile must be a mapping with a 'backend:' key")
    profile.setdefault("profile_name", p.stem)
    return profile


def backend_from_profile(profile: dict, **options: Any) -> Backend:
    """The backend a resolved profile describes (``Backend.resolved()`` gives one back)."""
    rest = dict(profile)
    module_name = str(rest.pop("backend"))
    try:
        module = importlib.import_module(f"usnprune.verifier_specs.{module_name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("usnprune.verifier_specs"):
            raise ConfigError(f"profile {rest.get('profile_name', '?')}: no verifier module "
                              f"usnprune.verifier_specs.{module_name}") from None
        raise
    cls = getattr(module, "BACKEND", None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"profile {rest.get('profile_name', '?')}: usnprune.verifier_specs.{module_name} is not a "
                          f"verifier backend (it has no BACKEND class)")
    backend = cls(rest, **options)
    backend.module = module_name
    return backend


def load_backend(name_or_path: str, **options: Any) -> Backend:
    """A backend from a profile name or a profile YAML path, with option overrides."""
    return backend_from_profile(resolve_profile(name_or_path), **options)


def package_version(dist: str) -> str:
    """``'<dist> <version>'`` of an installed distribution, for Backend.version()."""
    try:
        from importlib.metadata import version

        return f"{dist} {version(dist)}"
    except Exception:  # not installed in this interpreter
        return f"{dist} (unknown version)"


def require_module(module: str, hint: str) -> None:
    """Raise a one-line UsnpruneError when ``module`` cannot be imported here."""
    if importlib.util.find_spec(module) is None:
        raise UsnpruneError(f"{module} is not installed ({hint})")
