"""The run folder: what a verification was, and the table of its results.

Run folder::

    RUN/run.json          what was run: the benchmark, the backend as named and its resolved
                          profile, option overrides, the timeout override, and the
                          fingerprint of the benchmark (SHA-256 of instances.csv,
                          benchmark.json, manifest.csv and every ONNX and VNNLIB file)
    RUN/.lock             held (flock) by the one process working on the run folder
    RUN/results/*.jsonl   the results store (driver/store.py): a row per finished instance
    RUN/instances.csv     the table of rows, one per instance (rewritten at the end)
    RUN/logs/             per-worker / per-task logs

This is the bottom layer of verification: it reads a benchmark folder's instances.csv and
manifest.csv, creates or reopens a run folder, and turns a verdict into a result row.

A benchmark folder is laid out as VNN-COMP 2026 does (``1.0/`` and ``2.0/``, each with its
instances.csv, onnx/ and vnnlib/; either alone), or flat as before (instances.csv at the
top). Of the version folders, the newest one the backend reads runs; every row records the
VNN-LIB version of its query.

A run is bound to what it verified: ``--resume`` refuses when anything in the fingerprint
or the resolved backend profile differs from run.json, naming what changed, so a row can
never describe a file other than the one it was computed on.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import fcntl
import json
import os
import socket
import uuid
from pathlib import Path

from usnprune import __version__
from usnprune.errors import ConfigError, UsnpruneError
from usnprune.export.benchmark import benchmark_family
from usnprune.export.vnnlib import VERSIONS, file_version
from usnprune.files import PathError, atomic_write, atomic_write_text, hash_file, safe_relative
from usnprune.verifier_specs.base import Instance, Verdict

from .store import CAUSE_INFRASTRUCTURE, CAUSE_INSTANCE, ResultStore, row_key

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
COLUMNS = [
    "run_id", "backend", "backend_version", "onnx", "vnnlib", "vnnlib_version", "category", "network", "method", "sparsity",
    "seed", "parameters", "image", "keypoint", "keypoint_name", "delta", "eps_c", "eps_b", "family", "reference", "verdict",
    "time", "check_time", "cex_c", "cex_b", "cex", "sample_violated", "error_cause", "message",
]
FINGERPRINTED = ("instances.csv", "benchmark.json", "manifest.csv")  # beside every ONNX and VNNLIB file


class BenchmarkError(UsnpruneError):
    """The benchmark folder is missing or malformed."""



# ---- the benchmark ------------------------------------------------------------------


def benchmark_root(bench: str | Path, versions: tuple[str, ...] = VERSIONS) -> tuple[Path, str | None]:
    """The folder whose instances.csv runs, and the VNN-LIB version of its queries (None:
    a flat folder, read per file). Of the version folders present, the newest in
    ``versions`` (what the backend reads) is chosen."""
    root = Path(bench)
    if not root.is_dir():
        raise BenchmarkError(f"{root}: no such benchmark folder")
    present = [v for v in VERSIONS if (root / v / "instances.csv").is_file()]
    if present:
        usable = [v for v in present if v in versions]
        if not usable:
            raise BenchmarkError(f"{root}: holds VNN-LIB {' and '.join(present)} queries, and this backend reads "
                                 f"only {' and '.join(versions)}")
        return root / usable[-1], usable[-1]
    if not (root / "instances.csv").is_file():
        raise BenchmarkError(f"{root}: no instances.csv, 1.0/instances.csv or 2.0/instances.csv "
                             "(not a VNN-COMP benchmark folder)")
    return root, None


def load_instances(bench: str | Path, timeout: float | None = None,
                   versions: tuple[str, ...] = VERSIONS) -> list[Instance]:
    """Rows of the benchmark's instances.csv (``onnx,vnnlib,timeout``, no header), in the
    version folder :func:`benchmark_root` chooses for a backend reading ``versions``."""
    root, version = benchmark_root(bench, versions)
    path = root / "instances.csv"
    out = []
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except (csv.Error, OSError) as e:
        raise BenchmarkError(f"{path}: cannot read ({e})") from None
    for i, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise BenchmarkError(f"{path}:{i}: expected onnx,vnnlib,timeout, got {len(row)} fields")
        try:
            t = float(row[2])
        except ValueError:
            raise BenchmarkError(f"{path}:{i}: timeout {row[2]!r} is not a number") from None
        if not (t > 0 and t < float("inf")):
            raise BenchmarkError(f"{path}:{i}: timeout must be a finite number > 0, got {row[2]}")
        try:  # ./onnx/x and onnx/x are one file, one instance; ../x is not in the folder
            onnx_rel, vnnlib_rel = (safe_relative(c, f"{path}:{i}:") for c in row[:2])
        except PathError as e:
            raise BenchmarkError(str(e)) from None
        inst = Instance(root.resolve(), onnx_rel, vnnlib_rel, timeout or t, len(out))
        if inst.key in seen:
            raise BenchmarkError(f"{path}:{i}: {inst.onnx},{inst.vnnlib} is listed twice (first on line {seen[inst.key]})")
        seen[inst.key] = i
        inst.vnnlib_version = version or file_version(inst.vnnlib_path)
        out.append(inst)
    if not out:
        raise BenchmarkError(f"{path}: no instances")
    return out


def benchmark_file(bench: str | Path, rel: str) -> Path:
    """Where a path of instances.csv lies in a benchmark folder of any layout."""
    root = Path(bench)
    for folder in [root] + [root / v for v in reversed(VERSIONS)]:
        if (folder / rel).exists():
            return folder / rel
    return root / rel


def benchmark_top(bench: str | Path, name: str) -> Path:
    """The folder holding the benchmark-wide file ``name`` (manifest.csv, benchmark.json):
    ``bench``, or its parent when ``bench`` is a version folder (``1.0/``, ``2.0/``) given on its own."""
    root = Path(bench)
    return root.parent if not (root / name).is_file() and root.name in VERSIONS else root


def load_manifest(bench: str | Path) -> dict[str, dict]:
    """manifest.csv rows by instance key (empty for folders usnprune did not write). A
    version folder (``1.0/``, ``2.0/``) given on its own reads its parent's manifest, whose
    paths hold in both."""
    path = benchmark_top(bench, "manifest.csv") / "manifest.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {row_key(r): r for r in csv.DictReader(f) if r.get("onnx") and r.get("vnnlib")}
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise BenchmarkError(f"{path}: unreadable manifest ({e})") from None


def fingerprint(bench: str | Path, instances: list[Instance]) -> dict[str, str]:
    """SHA-256 of every file the rows depend on: instances.csv, benchmark.json and
    manifest.csv (when present), every ONNX and VNNLIB file (``missing`` when absent)."""
    root = Path(bench)
    names = [n for n in FINGERPRINTED if (root / n).is_file()]
    for inst in instances:
        prefix = fingerprint_name(root, inst, "")
        names += [prefix + "instances.csv"] if prefix else []
        names += [fingerprint_name(root, inst, inst.onnx), fingerprint_name(root, inst, inst.vnnlib)]
    out: dict[str, str] = {}
    for name in names:
        if name not in out:
            try:
                out[name] = hash_file(root / name)
            except FileNotFoundError:
                out[name] = "missing"
            except OSError as e:
                raise BenchmarkError(f"{root / name}: cannot read ({e.strerror or e})") from None
    return out


def fingerprint_name(bench: str | Path, inst: Instance, rel: str) -> str:
    """The name of an instance's file in a fingerprint: from the benchmark's top, so a
    version folder's files are ``2.0/onnx/...`` (the worker looks them up by this name too)."""
    sub = os.path.relpath(inst.root, Path(bench).resolve())
    return rel if sub == "." else f"{sub}/{rel}"


def fingerprint_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """What differs between two fingerprints, one phrase per file."""
    out = [f"{n} changed" for n in old if n in new and old[n] != new[n]]
    out += [f"{n} is new" for n in new if n not in old]
    out += [f"{n} is gone" for n in old if n not in new]
    return out


# ---- the run spec -------------------------------------------------------------------


@dataclasses.dataclass
class RunSpec:
    bench: str
    backend: str  # profile name or profile path
    options: dict  # backend options (command-line overrides)
    timeout: float | None  # per-instance override
    run_id: str
    created: str
    profile: dict = dataclasses.field(default_factory=dict)  # the backend's resolved profile (options applied)
    family: dict | None = None  # the benchmark's lighting family and k, when usnprune wrote it
    toolkit_version: str = __version__
    fingerprint: dict = dataclasses.field(default_factory=dict)  # file -> SHA-256 (see fingerprint())

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / RUN_FILE, json.dumps(dataclasses.asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, run_dir: Path) -> "RunSpec":
        try:
            data = json.loads((run_dir / RUN_FILE).read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{run_dir}: unreadable {RUN_FILE} ({e})") from None


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` for as long as one process works on a run
    folder: a second ``verify`` (a fresh run beside a ``--resume``) is refused, naming the
    holder. The kernel drops the lock when its holder dies, kill -9 included."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"{self.path.parent}: cannot lock the run folder ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.path.parent}: another usnprune verify ({holder}) is working on this run folder; "
                              f"wait for it to end or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def prepare_run(bench: str | Path, out: str | Path, backend: str, options: dict, timeout: float | None,
                resume: bool, profile: dict, prints: dict[str, str] | None = None) -> RunSpec:
    """Create or reopen the run folder (the caller holds its :class:`RunLock`); refuses to
    mix runs. ``profile`` is the backend's resolved profile, recorded so that every worker
    builds the same backend; ``prints`` the benchmark's :func:`fingerprint`."""
    run_dir = Path(out)
    bench_abs = str(Path(bench).resolve())
    prints = dict(prints or {})
    if (run_dir / RUN_FILE).is_file():
        spec = RunSpec.load(run_dir)
        if not resume:
            raise ConfigError(f"{run_dir}: a run exists there; pass --resume to continue it or choose another --out")
        if spec.bench != bench_abs or spec.backend != backend:
            raise ConfigError(f"{run_dir}: that run verified {spec.bench} with {spec.backend}; "
                              f"it cannot be resumed with {bench_abs} and {backend}")
        if spec.timeout != timeout or spec.options != dict(options):
            raise ConfigError(f"{run_dir}: that run used timeout {spec.timeout} and options {spec.options}; "
                              f"resume it with the same (got timeout {timeout} and options {dict(options)})")
        if spec.profile != _plain(profile):
            keys = sorted(k for k in set(spec.profile) | set(_plain(profile))
                          if spec.profile.get(k) != _plain(profile).get(k))
            raise ConfigError(f"{run_dir}: the {backend} profile changed since that run started ({', '.join(keys)}); "
                              f"resume with the profile it used, or choose another --out")
        now = benchmark_family(benchmark_top(bench, "benchmark.json"))
        if spec.family is not None and now is not None and spec.family != now:
            raise ConfigError(f"{run_dir}: that run verified {bench_abs} with the lighting family "
                              f"{spec.family['family']} (k={spec.family['k']}); the benchmark now has {now['family']} "
                              f"(k={now['k']}): choose another --out")
        if not spec.fingerprint:
            raise ConfigError(f"{run_dir}: that run has no fingerprint of its benchmark (made by usnprune "
                              f"{spec.toolkit_version}); it cannot be resumed safely: choose another --out")
        changes = fingerprint_changes(spec.fingerprint, prints)
        if changes:
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise ConfigError(f"{run_dir}: the benchmark changed since that run started: {'; '.join(changes[:3])}{more}; "
                              f"its rows would describe other files: verify into a new --out")
        return spec
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: folder exists and is not a usnprune run; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot create the run folder ({e.strerror or e})") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"{run_dir}: the run folder is not writable")
    spec = RunSpec(bench_abs, backend, dict(options), timeout, uuid.uuid4().hex[:8],
                   datetime.datetime.now().isoformat(timespec="seconds"), _plain(profile), fingerprint=prints,
                   family=benchmark_family(benchmark_top(bench, "benchmark.json")))
    spec.save(run_dir)
    return spec


def _plain(obj: dict) -> dict:
    """``obj`` as it reads back from run.json."""
    return json.loads(json.dumps(obj, default=str))


def make_row(spec: RunSpec, backend_name: str, backend_version: str, inst: Instance, verdict: Verdict,
             sample_violated: bool | None, manifest: dict[str, dict], cause: str | None = None,
             check_time: float | None = None) -> dict:
    """The result row of ``inst``. ``cause`` of an ``error``: ``instance`` (the backend's own
    answer, or a file of the instance: not retried) or ``infrastructure`` (a dead worker, a
    crashed backend, a killed process: ``--resume`` runs it again); default ``instance``."""
    m = manifest.get(inst.key, {})
    cex = list(verdict.counterexample) if verdict.counterexample is not None else None
    pair = cex if cex is not None and len(cex) == 2 else (None, None)  # (c, b): the keypoint case
    if verdict.status == "error":
        cause = cause or CAUSE_INSTANCE
        if cause not in (CAUSE_INSTANCE, CAUSE_INFRASTRUCTURE):
            raise ValueError(f"unknown error cause {cause!r}")
    else:
        cause = ""
    return {
        "run_id": spec.run_id, "backend": backend_name, "backend_version": backend_version,
        "onnx": inst.onnx, "vnnlib": inst.vnnlib, "vnnlib_version": inst.vnnlib_version, "category": m.get("category", Path(inst.onnx).parent.name),
        "network": m.get("network", Path(inst.onnx).parent.name), "method": m.get("method", ""),
        "sparsity": m.get("sparsity", ""), "seed": m.get("seed", ""), "parameters": m.get("parameters", ""),
        "image": m.get("image_id", ""), "keypoint": m.get("keypoint", ""), "keypoint_name": m.get("keypoint_name", ""),
        "delta": m.get("delta", ""), "eps_c": m.get("eps_c", ""), "eps_b": m.get("eps_b", ""),
        "family": m.get("family", ""), "reference": m.get("reference", ""), "verdict": verdict.status,
        "time": round(float(verdict.time), 4),
        "check_time": None if check_time is None else round(float(check_time), 4),
        "cex_c": pair[0], "cex_b": pair[1], "cex": cex, "sample_violated": sample_violated,
        "error_cause": cause, "message": verdict.message[-2000:],
    }


def table(run_dir: Path, instances: list[Instance] | None = None, rows: dict[str, dict] | None = None):
    """The run's rows as a DataFrame in benchmark order (``cex`` as a JSON list)."""
    import pandas as pd

    rows = ResultStore(run_dir).rows() if rows is None else rows
    if instances is not None:
        order = {i.key: i.index for i in instances}
        recs = sorted(rows.values(), key=lambda r: order.get(row_key(r), 1 << 30))
    else:
        recs = sorted(rows.values(), key=lambda r: (r["onnx"], r["vnnlib"]))
    recs = [dict(r, cex=json.dumps(r["cex"]) if isinstance(r.get("cex"), list) else r.get("cex")) for r in recs]
    df = pd.DataFrame(recs, columns=COLUMNS) if recs else pd.DataFrame(columns=COLUMNS)
    return df[COLUMNS]


def write_table(run_dir: Path, instances: list[Instance] | None = None, rows: dict[str, dict] | None = None) -> Path:
    """RUN/instances.csv from the store (or its ``rows``, already read): :func:`table`,
    rewritten atomically."""
    df = table(run_dir, instances, rows)
    return atomic_write(run_dir / "instances.csv", lambda tmp: df.to_csv(tmp, index=False))
