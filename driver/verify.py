"""``usnprune verify``: a benchmark folder in, a run folder with one row per instance out.

The command layer of verification: it checks the arguments, resolves the backend once,
creates or reopens the run folder (driver/runfolder.py), hands the instances without a row
to an executor (driver/dispatch.py), and summarises. Whether a verdict stands is decided by
the trust layer (:mod:`usnprune.verifier_specs.trust`) inside every worker.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from usnprune.config import from_dict, require
from usnprune.verifier_specs.base import STATUSES, load_backend

from . import dispatch
from .runfolder import load_instances, prepare_run, write_table
from .slurm import parse_options
from .store import ResultStore


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


def run_verify(bench: str | Path, out: str | Path, cfg: VerifyConfig, resume: bool = False,
               log: Callable[[str], None] = print) -> dict:
    backend, timeout, executor = cfg.backend, cfg.timeout, cfg.executor
    options, executor_options = cfg.options, cfg.executor_options
    instances = load_instances(bench, timeout)
    probe = load_backend(backend, **options)  # unknown backend/profile: fail before creating anything
    probe.check_available()
    run_dir = Path(out)
    dispatch.preflight(executor, run_dir, executor_options, log)  # e.g. no Slurm: before the run folder exists
    spec = prepare_run(bench, run_dir, backend, options, timeout, resume, probe.resolved())
    finished = ResultStore(run_dir).finished_keys()
    todo = [i for i in instances if i.key not in finished]
    log(f"verify {bench} with {probe.name} ({probe.version()}): {len(instances)} instances, "
        f"{len(instances) - len(todo)} already done, {len(todo)} to run")
    t0 = time.perf_counter()
    if todo:
        dispatch.execute(executor, spec, run_dir, todo, workers=cfg.workers, chunk_size=cfg.chunk_size,
                         options=executor_options, log=log)
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
