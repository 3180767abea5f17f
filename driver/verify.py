"""``usnprune verify``: a benchmark folder in, a run folder with one row per instance out.

Run folder::

    RUN/run.json          what was run (backend, profile options, benchmark, timeout)
    RUN/results/*.jsonl   the results store (driver/store.py): a row per finished instance
    RUN/instances.csv     the table of rows, one per instance (rewritten at the end)
    RUN/logs/             per-worker / per-task logs

Trust: a backend's ``falsified`` is believed only after :func:`verifier_specs.replay.replay`
runs its counterexample through onnxruntime against the VNNLIB (else ``error``). Every
instance is also sampled on a grid of the box through onnxruntime: ``sample_violated``
records whether sampling alone breaks it (the empirical ceiling), and a ``certified``
verdict that a sample refutes is turned into an ``error`` row with a SOUNDNESS alarm.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from pruner import __version__
from pruner.errors import ConfigError, UsnpruneError
from verifier_specs.base import STATUSES, Instance, Verdict, load_backend

from .store import ResultStore, row_key

RUN_FILE = "run.json"
SAMPLE_GRID = 21  # points per axis of the sanity sampling grid
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
    toolkit_version: str = __version__

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(tmp, run_dir / RUN_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> "RunSpec":
        try:
            return cls(**json.loads((run_dir / RUN_FILE).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{run_dir}: unreadable {RUN_FILE} ({e})") from None


def prepare_run(bench: str | Path, out: str | Path, backend: str, options: dict, timeout: float | None,
                resume: bool) -> RunSpec:
    """Create or reopen the run folder; refuses to mix runs."""
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
                   datetime.datetime.now().isoformat(timespec="seconds"))
    spec.save(run_dir)
    return spec


# ---- checking one verdict -----------------------------------------------------------


class Checker:
    """Replays counterexamples and samples the box; caches per ONNX file."""

    def __init__(self, grid: int = SAMPLE_GRID) -> None:
        self.grid = grid
        self._samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _sampled(self, inst: Instance, prop) -> tuple[np.ndarray, np.ndarray]:
        from verifier_specs.replay import evaluate, get_session

        lo = np.min([d.lower for d in prop.disjuncts], axis=0)
        hi = np.max([d.upper for d in prop.disjuncts], axis=0)
        key = f"{inst.onnx_path}|{lo.tobytes().hex()}|{hi.tobytes().hex()}"
        if key not in self._samples:
            axes = [np.linspace(a, b, self.grid) for a, b in zip(lo, hi)]
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lo))
            rng = np.random.default_rng(0)
            pts = np.concatenate([pts, rng.uniform(lo, hi, size=(64, len(lo)))])
            self._samples = {key: (pts, evaluate(get_session(str(inst.onnx_path)), pts))}  # one file at a time
        return self._samples[key]

    def check(self, inst: Instance, verdict: Verdict) -> tuple[Verdict, bool | None]:
        """The verdict to record, and whether sampling alone violates the property."""
        from export.vnnlib import parse_file
        from verifier_specs.replay import replay

        try:
            prop = parse_file(inst.vnnlib_path)
            pts, ys = self._sampled(inst, prop)
        except Exception:  # unreadable files are already the backend's error rows
            return verdict, None
        violated = np.zeros(len(pts), dtype=bool)
        for d in prop.disjuncts:
            violated |= d.contains(pts) & d.holds(ys)
        sample_violated = bool(violated.any())
        if verdict.status == "falsified":
            if verdict.counterexample is None:
                return dataclasses.replace(verdict, status="error",
                                           message=f"falsified without a counterexample; {verdict.message}"), sample_violated
            r = replay(str(inst.onnx_path), prop, np.asarray(verdict.counterexample, dtype=np.float64))
            if not r.ok:
                return dataclasses.replace(verdict, status="error",
                                           message=f"counterexample does not replay: {r.message}"), sample_violated
            return dataclasses.replace(verdict, counterexample=tuple(float(v) for v in r.x)), sample_violated
        if verdict.status == "certified" and sample_violated:
            x = pts[np.flatnonzero(violated)[0]]
            return dataclasses.replace(
                verdict, status="error", counterexample=tuple(float(v) for v in x),
                message=f"SOUNDNESS ALARM: certified, but the sample {tuple(np.round(x, 9))} violates the property "
                        f"(onnxruntime); {verdict.message}"), sample_violated
        return verdict, sample_violated


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


# ---- the worker (shared by every executor) ------------------------------------------


def run_chunk(spec: RunSpec, run_dir: Path, instances: list[Instance], writer: str,
              on_row: Callable[[dict], None] | None = None) -> int:
    """Verify ``instances`` with the run's backend, appending each row as it finishes.

    A backend that raises mid-chunk gets an ``error`` row for the first instance it did not
    answer (the one it was on) and is run again on the rest; the chunk never ends the run.
    """
    import traceback

    store = ResultStore(run_dir)
    manifest = load_manifest(spec.bench)
    checker = Checker()
    done: set[str] = set()
    backend = load_backend(spec.backend, **spec.options)
    name, version = backend.name, backend.version()

    def record(inst: Instance, verdict: Verdict) -> None:
        try:
            verdict, violated = checker.check(inst, verdict)
        except Exception as e:  # the check itself must never lose the row
            verdict, violated = dataclasses.replace(verdict, status="error", message=f"result check failed: {e}"), None
        row = make_row(spec, name, version, inst, verdict, violated, manifest)
        store.append(row, writer)
        done.add(inst.key)
        if on_row:
            on_row(row)

    pending = list(instances)
    while pending:
        try:
            backend.run(pending, record)
            break
        except Exception as e:
            tb = traceback.format_exc(limit=3)
            pending = [i for i in pending if i.key not in done]
            if not pending:
                break
            # every pass settles at least this one instance, so the loop ends
            record(pending[0], Verdict("error", 0.0, None, f"backend crashed: {type(e).__name__}: {e} | {tb[-600:]}"))
            pending = pending[1:]
    return len(done)


# ---- the command --------------------------------------------------------------------


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


def verify(bench: str | Path, out: str | Path, backend: str = "builtin", workers: int = 1,
           timeout: float | None = None, resume: bool = False, executor: str = "local",
           options: dict | None = None, chunk_size: int | None = None, executor_options: dict | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Verify every instance of ``bench`` that has no finished row in ``out``."""
    from . import executors

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be > 0, got {timeout}")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"the chunk size (--chunk-size, verify.chunk_size) must be >= 1, got {chunk_size}")
    instances = load_instances(bench, timeout)
    probe = load_backend(backend, **(options or {}))  # unknown backend/profile: fail before creating anything
    probe.check_available()
    run_dir = Path(out)
    executors.preflight(executor, run_dir, executor_options or {}, log)  # e.g. no Slurm: before the run folder exists
    spec = prepare_run(bench, run_dir, backend, options or {}, timeout, resume)
    finished = ResultStore(run_dir).finished_keys()
    todo = [i for i in instances if i.key not in finished]
    log(f"verify {bench} with {probe.name} ({probe.version()}): {len(instances)} instances, "
        f"{len(instances) - len(todo)} already done, {len(todo)} to run")
    t0 = time.perf_counter()
    if todo:
        executors.execute(executor, spec, run_dir, todo, workers=workers, chunk_size=chunk_size,
                          options=executor_options or {}, log=log)
    rows = ResultStore(run_dir).rows()
    write_table(run_dir, instances, rows)
    keys = {i.key for i in instances}
    rows = {k: r for k, r in rows.items() if k in keys}  # this benchmark's rows only
    counts = {s: 0 for s in STATUSES}
    for r in rows.values():
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    missing = len(instances) - len(rows)
    alarms = sum(1 for r in rows.values() if str(r.get("message", "")).startswith("SOUNDNESS ALARM"))
    log(f"{len(rows)}/{len(instances)} instances have results in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + (f"; {missing} missing (run again with --resume)" if missing else "")
        + (f"; {alarms} SOUNDNESS ALARMS" if alarms else ""))
    return {"counts": counts, "missing": missing, "alarms": alarms, "run_dir": str(run_dir)}


def compare_runs(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Agreement of two runs' verdicts on the instances both decided (certified/falsified)."""
    decided = ("certified", "falsified")
    both = [k for k in a if k in b and a[k]["verdict"] in decided and b[k]["verdict"] in decided]
    disagree = [k for k in both if a[k]["verdict"] != b[k]["verdict"]]
    return {"common": len(set(a) & set(b)), "both_decided": len(both), "agree": len(both) - len(disagree),
            "disagree": disagree}


def cross_check(bench: str | Path, out: str | Path, backends: list[str], timeout: float | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Run each cross-check backend into ``RUN/crosscheck/<backend>`` (resumable) and compare
    with the main run. A disagreement on an instance both decide is reported loudly."""
    main_rows = ResultStore(out).rows()
    result = {}
    for name in backends:
        sub = Path(out) / "crosscheck" / Path(name).stem
        verify(bench, sub, backend=name, timeout=timeout, resume=True, executor="serial", log=log)
        cmp = compare_runs(main_rows, ResultStore(sub).rows())
        result[name] = cmp
        log(f"cross-check {name}: {cmp['both_decided']} instances decided by both, {cmp['agree']} agree"
            + (f", {len(cmp['disagree'])} DISAGREE: {cmp['disagree'][:5]}" if cmp["disagree"] else ""))
    (Path(out) / "crosscheck.json").write_text(json.dumps(result, indent=2))
    return result
