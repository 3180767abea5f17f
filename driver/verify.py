"""``usnprune verify``: a benchmark folder in, a run folder with one row per instance out.

The command layer of verification: it checks the arguments, resolves the backend once,
fingerprints the benchmark and checks its inputs (a fresh run refuses an empty or
unbounded VNNLIB box, a NaN/infinite threshold, an ONNX model with a NaN/infinite weight,
naming the file), locks and creates or reopens the run folder (driver/runfolder.py), hands
the instances without a final row to an executor (driver/dispatch.py), and summarises.
Whether a verdict stands is decided by the trust layer
(:mod:`usnprune.verifier_specs.trust`) inside every worker.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from usnprune.config import from_dict, require
from usnprune.errors import ConfigError
from usnprune.export.vnnlib import parse_file
from usnprune.files import atomic_write_text
from usnprune.verifier_specs.base import STATUSES, Instance, load_backend
from usnprune.verifier_specs.trust import check_onnx, check_property

from . import dispatch
from .runfolder import LOCK_FILE, RUN_FILE, RunLock, RunSpec, fingerprint, load_instances, prepare_run, write_table
from .slurm import parse_options
from .store import CAUSE_INFRASTRUCTURE, ResultStore


@dataclasses.dataclass
class VerifyConfig:
    """How ``usnprune verify`` runs (and an experiment's ``verify:`` section, per backend)."""

    backend: str = "builtin"  # a profile name (verifier_specs/profiles) or a profile YAML
    workers: int = 1
    timeout: float | None = None  # seconds per instance; default: instances.csv
    executor: str = "local"  # serial | local | slurm
    chunk_size: int | None = None  # instances per worker task / array task; default: the backend's
    options: dict = dataclasses.field(default_factory=dict)  # backend option overrides
    executor_options: dict = dataclasses.field(default_factory=dict)  # slurm: partition, time_min, ...

    def check(self, where: str = "verify") -> None:
        require(self.workers >= 1, f"{where}.workers", f"must be >= 1, got {self.workers}")
        require(self.timeout is None or self.timeout > 0, f"{where}.timeout", f"must be > 0, got {self.timeout}")
        require(self.chunk_size is None or self.chunk_size >= 1, f"{where}.chunk_size",
                f"must be >= 1, got {self.chunk_size}")
        require(self.executor in dispatch.EXECUTORS, f"{where}.executor",
                f"must be one of {', '.join(dispatch.EXECUTORS)}, got {self.executor!r}")
        if self.executor == "slurm":
            parse_options(self.executor_options, f"{where}.executor_options")
        else:
            require(not self.executor_options, f"{where}.executor_options",
                    f"{', '.join(sorted(self.executor_options))}: options of the slurm executor, not of "
                    f"{self.executor} (add --executor slurm)")


def verify(bench: str | Path, out: str | Path, resume: bool = False, log: Callable[[str], None] = print,
           **settings) -> dict:
    """Verify every instance of ``bench`` that has no finished row in ``out``; ``settings``
    are :class:`VerifyConfig` keys."""
    cfg = from_dict(VerifyConfig, settings, where="verify")
    return run_verify(bench, out, cfg, resume, log)


def check_inputs(instances: list[Instance]) -> None:
    """Refuse a benchmark whose files cannot be verified meaningfully (trust layer), naming
    the first bad file. A missing or unparsable file is refused too: every instance of a
    fresh run must be one a verifier can answer."""
    seen: set[str] = set()
    for inst in instances:
        for kind, rel, check in (("ONNX", inst.onnx, _check_onnx), ("VNNLIB", inst.vnnlib, _check_vnnlib)):
            if rel in seen:
                continue
            seen.add(rel)
            path = inst.root / rel
            if not path.is_file():
                raise ConfigError(f"{inst.root / 'instances.csv'}: {rel}: no such {kind} file")
            check(path, rel)


def _check_onnx(path, rel: str) -> None:
    check_onnx(str(path))


def _check_vnnlib(path, rel: str) -> None:
    check_property(parse_file(path), str(path))


def run_verify(bench: str | Path, out: str | Path, cfg: VerifyConfig, resume: bool = False,
               log: Callable[[str], None] = print) -> dict:
    backend, timeout, executor = cfg.backend, cfg.timeout, cfg.executor
    options, executor_options = cfg.options, cfg.executor_options
    instances = load_instances(bench, timeout)
    log(f"verify {bench}: {len(instances)} instances; loading the {backend} backend")  # loading can take seconds
    probe = load_backend(backend, **options)  # unknown backend/profile: fail before creating anything
    instances = load_instances(bench, timeout, probe.vnnlib_versions)  # the version folder this backend reads
    probe.check_available()
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: exists and is not a folder")
    prints = fingerprint(bench, instances)
    earlier = _earlier_fingerprint(run_dir)
    if earlier != prints:  # a fresh run, or a changed benchmark that prepare_run will name
        check_inputs(instances)
    if run_dir.is_dir() and not (run_dir / RUN_FILE).exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ConfigError(f"--out {run_dir}: folder exists and is not a usnprune run; choose another --out")
    dispatch.preflight(executor, run_dir, executor_options, log)  # e.g. no Slurm: before the run folder exists
    made = not run_dir.exists()
    lock_made = not (run_dir / LOCK_FILE).exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {run_dir}: cannot create the run folder ({e.strerror or e})") from None
    try:
        with RunLock(run_dir):
            return _run_locked(bench, run_dir, cfg, resume, log, instances, probe, prints)
    except BaseException:
        if not (run_dir / RUN_FILE).exists():  # refused before anything was written: leave no trace
            if lock_made:
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
            if made and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def _earlier_fingerprint(run_dir: Path) -> dict | None:
    try:
        return RunSpec.load(run_dir).fingerprint if (run_dir / RUN_FILE).is_file() else None
    except ConfigError:
        return None


def _run_locked(bench, run_dir: Path, cfg: VerifyConfig, resume: bool, log, instances, probe, prints) -> dict:
    spec = prepare_run(bench, run_dir, cfg.backend, cfg.options, cfg.timeout, resume, probe.resolved(), prints)
    store = ResultStore(run_dir)
    finished = store.finished_keys()
    todo = [i for i in instances if i.key not in finished]
    retried = sum(1 for i in todo if i.key in store.rows())
    log(f"verify with {probe.name} ({probe.version()}): {len(instances) - len(todo)} already done, "
        f"{len(todo)} to run" + (f" ({retried} after an infrastructure error)" if retried else ""))
    t0 = time.perf_counter()
    if todo:
        dispatch.execute(cfg.executor, spec, run_dir, todo, workers=cfg.workers, chunk_size=cfg.chunk_size,
                         options=cfg.executor_options, log=log)
    rows = store.rows()
    write_table(run_dir, instances, rows)
    keys = {i.key for i in instances}
    rows = {k: r for k, r in rows.items() if k in keys}  # this benchmark's rows only
    counts = {s: 0 for s in STATUSES}
    for r in rows.values():
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    missing = len(instances) - len(rows)
    infra = sum(1 for r in rows.values() if r["verdict"] == "error" and r.get("error_cause") == CAUSE_INFRASTRUCTURE)
    alarms = sum(1 for r in rows.values() if str(r.get("message", "")).startswith("SOUNDNESS ALARM"))
    log(f"{len(rows)}/{len(instances)} instances have results in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + (f"; {missing} missing (run again with --resume)" if missing else "")
        + (f"; {infra} errors of the infrastructure (--resume runs them again)" if infra else "")
        + (f"; {alarms} SOUNDNESS ALARMS" if alarms else ""))
    return {"counts": counts, "missing": missing, "alarms": alarms, "infrastructure_errors": infra,
            "run_dir": str(run_dir)}


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
    atomic_write_text(Path(out) / "crosscheck.json", json.dumps(result, indent=2))
    return result
