"""The run folder: what a verification was, and the table of its results.

Run folder::

    RUN/run.json          what was run: the benchmark, the backend as named and its resolved
                          profile, option overrides, the timeout override
    RUN/results/*.jsonl   the results store (driver/store.py): a row per finished instance
    RUN/instances.csv     the table of rows, one per instance (rewritten at the end)
    RUN/logs/             per-worker / per-task logs

This is the bottom layer of verification: it reads a benchmark folder's instances.csv and
manifest.csv, creates or reopens a run folder, and turns a verdict into a result row.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import uuid
from pathlib import Path

from usnprune import __version__
from usnprune.errors import ConfigError, UsnpruneError
from usnprune.files import atomic_write_text
from usnprune.verifier_specs.base import Instance, Verdict

from .store import ResultStore, row_key

RUN_FILE = "run.json"
COLUMNS = [
    "run_id", "backend", "backend_version", "onnx", "vnnlib", "category", "network", "method", "sparsity", "seed",
    "parameters", "image", "keypoint", "keypoint_name", "delta", "eps_c", "eps_b", "reference", "verdict", "time",
    "cex_c", "cex_b", "sample_violated", "message",
]


class BenchmarkError(UsnpruneError):
    """The benchmark folder is missing or malformed."""



# ---- the benchmark ------------------------------------------------------------------


def load_instances(bench: str | Path, timeout: float | None = None) -> list[Instance]:
    """Rows of ``bench/instances.csv`` (``onnx,vnnlib,timeout``, no header)."""
    root = Path(bench)
    if not root.is_dir():
        raise BenchmarkError(f"{root}: no such benchmark folder")
    path = root / "instances.csv"
    if not path.is_file():
        raise BenchmarkError(f"{root}: no instances.csv (not a VNN-COMP benchmark folder)")
    out = []
    seen: dict[str, int] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise BenchmarkError(f"{path}:{i}: expected onnx,vnnlib,timeout, got {len(row)} fields")
            try:
                t = float(row[2])
            except ValueError:
                raise BenchmarkError(f"{path}:{i}: timeout {row[2]!r} is not a number") from None
            if not t > 0:
                raise BenchmarkError(f"{path}:{i}: timeout must be > 0, got {row[2]}")
            inst = Instance(root.resolve(), row[0].strip(), row[1].strip(), timeout or t, len(out))
            if inst.key in seen:
                raise BenchmarkError(f"{path}:{i}: {inst.onnx},{inst.vnnlib} is listed twice (first on line {seen[inst.key]})")
            seen[inst.key] = i
            out.append(inst)
    if not out:
        raise BenchmarkError(f"{path}: no instances")
    return out


def load_manifest(bench: str | Path) -> dict[str, dict]:
    """manifest.csv rows by instance key (empty for folders usnprune did not write)."""
    path = Path(bench) / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row_key(r): r for r in csv.DictReader(f)}



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
    toolkit_version: str = __version__

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / RUN_FILE, json.dumps(dataclasses.asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, run_dir: Path) -> "RunSpec":
        try:
            return cls(**json.loads((run_dir / RUN_FILE).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{run_dir}: unreadable {RUN_FILE} ({e})") from None


def prepare_run(bench: str | Path, out: str | Path, backend: str, options: dict, timeout: float | None,
                resume: bool, profile: dict) -> RunSpec:
    """Create or reopen the run folder; refuses to mix runs. ``profile`` is the backend's
    resolved profile, recorded so that every worker builds the same backend."""
    run_dir = Path(out)
    bench_abs = str(Path(bench).resolve())
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
            raise ConfigError(f"{run_dir}: the {backend} profile changed since that run started; "
                              f"resume with the profile it used, or choose another --out")
        return spec
    if run_dir.exists() and run_dir.is_dir() and any(run_dir.iterdir()) and not resume:
        raise ConfigError(f"{run_dir}: folder exists and is not a usnprune run; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot create the run folder ({e.strerror or e})") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"{run_dir}: the run folder is not writable")
    spec = RunSpec(bench_abs, backend, dict(options), timeout, uuid.uuid4().hex[:8],
                   datetime.datetime.now().isoformat(timespec="seconds"), _plain(profile))
    spec.save(run_dir)
    return spec


def _plain(obj: dict) -> dict:
    """``obj`` as it reads back from run.json."""
    return json.loads(json.dumps(obj, default=str))


def make_row(spec: RunSpec, backend_name: str, backend_version: str, inst: Instance, verdict: Verdict,
             sample_violated: bool | None, manifest: dict[str, dict]) -> dict:
    m = manifest.get(inst.key, {})
    cex = verdict.counterexample or (None, None)
    return {
        "run_id": spec.run_id, "backend": backend_name, "backend_version": backend_version,
        "onnx": inst.onnx, "vnnlib": inst.vnnlib, "category": m.get("category", Path(inst.onnx).parent.name),
        "network": m.get("network", Path(inst.onnx).parent.name), "method": m.get("method", ""),
        "sparsity": m.get("sparsity", ""), "seed": m.get("seed", ""), "parameters": m.get("parameters", ""),
        "image": m.get("image_id", ""), "keypoint": m.get("keypoint", ""), "keypoint_name": m.get("keypoint_name", ""),
        "delta": m.get("delta", ""), "eps_c": m.get("eps_c", ""), "eps_b": m.get("eps_b", ""),
        "reference": m.get("reference", ""), "verdict": verdict.status, "time": round(float(verdict.time), 4),
        "cex_c": cex[0], "cex_b": cex[1] if len(cex) > 1 else None, "sample_violated": sample_violated,
        "message": verdict.message[-2000:],
    }



def write_table(run_dir: Path, instances: list[Instance] | None = None, rows: dict[str, dict] | None = None) -> Path:
    """RUN/instances.csv from the store (or its ``rows``, already read), in benchmark order
    (atomic rewrite)."""
    import pandas as pd

    rows = ResultStore(run_dir).rows() if rows is None else rows
    if instances is not None:
        order = {i.key: i.index for i in instances}
        recs = sorted(rows.values(), key=lambda r: order.get(row_key(r), 1 << 30))
    else:
        recs = sorted(rows.values(), key=lambda r: (r["onnx"], r["vnnlib"]))
    df = pd.DataFrame(recs, columns=COLUMNS) if recs else pd.DataFrame(columns=COLUMNS)
    path = run_dir / "instances.csv"
    tmp = run_dir / "instances.csv.tmp"
    df[COLUMNS].to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


