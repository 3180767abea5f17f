"""Whole-pipeline runs from one YAML file: ``usnprune run EXPERIMENT.yaml``.

An experiment names an output folder and one section per stage, in pipeline order:
``data -> train -> eval -> prune -> export -> verify -> report``. Sections that are absent
are skipped. Each stage writes into ``<out>/<stage>/`` and, last, a stamp
``<out>/<stage>/stage.json`` holding a hash of its configuration chained with the hashes
of the stages before it. A stage whose stamp matches is skipped, so re-running a finished
or interrupted experiment continues where it stopped; a stage whose configuration (or an
upstream stage's) changed is refused unless ``--force``, which redoes exactly the stale
stages (and, through the chained hashes, everything after them), so results from two
configurations are never mixed. Stages whose stamp matches are never redone; delete a
stage's folder to redo it with the same configuration.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from pruner.config import ConfigError, from_dict, load_yaml, to_dict

from .stages import STAGE_TABLE, STAGES, Context, check_train_section


# ---- the runner ---------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_experiment(path: str | Path) -> tuple[Path, int, dict[str, Any], dict[str, Any]]:
    raw = load_yaml(path)
    where = str(path)
    allowed = {"out", "seed", "seeds", "description", *STAGES}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(allowed: {', '.join(['out', 'seed', 'seeds', 'description', *STAGES])})")
    if "out" not in raw:
        raise ConfigError(f"{where}: missing required key out (the experiment's output folder)")
    if "data" not in raw:
        raise ConfigError(f"{where}: missing required key data (synth: or path:)")
    if "seed" in raw and "seeds" in raw:
        raise ConfigError(f"{where}: give either seed or seeds, not both")
    seeds = raw.get("seeds", [raw.get("seed", 0)])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
        raise ConfigError(f"{where}.seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}.seeds: seeds repeat: {seeds}")
    sections: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for name in STAGES:
        if name not in raw:
            continue
        typ, _ = STAGE_TABLE[name]
        value = raw[name] if raw[name] is not None else {}
        if typ is None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a mapping")
            if name == "train":
                check_train_section(value, f"{where}.train")
            sections[name] = value
        else:
            sections[name] = from_dict(typ, value, where=f"{where}.{name}")
        plain[name] = to_dict(sections[name])
    return Path(raw["out"]), seeds, sections, plain


def run_experiment(path: str | Path, force: bool = False, only: list[str] | None = None,
                   log: Callable[[str], None] = print) -> Path:
    out, seeds, sections, plain = load_experiment(path)
    if only:
        bad = [s for s in only if s not in sections]
        if bad:
            raise ConfigError(f"--only: {', '.join(bad)} not in the experiment (it has {', '.join(sections)})")
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, sections=sections, seeds=seeds, log=log)
    chain = _hash({"seeds": seeds})
    t_all = time.perf_counter()
    for name in STAGES:
        if name not in sections:
            continue
        chain = _hash([chain, name, plain[name]])
        stamp = ctx.stage_dir(name) / "stage.json"
        if only and name not in only:
            continue
        started = ctx.stage_dir(name) / "stage.started.json"
        stale = False
        if stamp.is_file():
            if json.loads(stamp.read_text()).get("hash") == chain:
                log(f"[{name}] up to date ({stamp})")
                continue
            stale = True
        elif started.is_file() and json.loads(started.read_text()).get("hash") != chain:
            stale = True
        if stale and not force:
            raise ConfigError(
                f"stage {name!r} in {out} was run with a different configuration (or different upstream "
                f"stages); pass --force to redo it, or choose another 'out'"
            )
        # a stale stage is redone whole; a stage that never finished continues item by item
        ctx.force = stale
        if stamp.is_file():
            stamp.unlink()
        started.parent.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"hash": chain}))
        log(f"[{name}] running")
        t0 = time.perf_counter()
        typ, runner = STAGE_TABLE[name]
        runner(ctx, sections[name])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "hash": chain, "config": plain[name], "seconds": round(time.perf_counter() - t0, 2),
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }, indent=2))
        os.replace(tmp, stamp)
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
    log(f"experiment finished in {time.perf_counter() - t_all:.1f} s; outputs in {out.resolve()}")
    return out
