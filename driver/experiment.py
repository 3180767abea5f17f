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

import dataclasses
import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from usnprune.config import ConfigError, load_yaml, to_dict
from usnprune.pruner.perturbation import Box, family
from usnprune.files import atomic_write_text

from .stages import PIPELINE, Context
from .study import STUDY

STAGES = {s.name: s for s in PIPELINE + STUDY}  # in pipeline order
TOP_KEYS = ("out", "seed", "seeds", "family", "description")


# ---- the runner ---------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_experiment(path: str | Path) -> tuple[Path, list[int], dict[str, tuple[Any, Any]], dict[str, Any]]:
    """(out, seeds, stage -> (section, config template), stage -> plain data for the stamps)."""
    raw = load_yaml(path)
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS) - set(STAGES))
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(allowed: {', '.join([*TOP_KEYS, *STAGES])})")
    if "out" not in raw:
        raise ConfigError(f"{where}: missing required key out (the experiment's output folder)")
    if "data" not in raw:
        raise ConfigError(f"{where}: missing required key data (synth:, path: or coco:)")
    if "seed" in raw and "seeds" in raw:
        raise ConfigError(f"{where}: give either seed or seeds, not both")
    seeds = raw.get("seeds", [raw.get("seed", 0)])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
        raise ConfigError(f"{where}.seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}.seeds: seeds repeat: {seeds}")
    synth = (raw.get("data") or {}).get("synth") if isinstance(raw.get("data"), dict) else None
    if isinstance(raw.get("train"), dict) and isinstance(synth, dict) and "size" in synth:
        raw["train"].setdefault("input_size", synth["size"])  # the network's input is the data's size
    fam = raw.get("family")
    if fam is not None:
        if family(fam, f"{where}.family").channels == 3 and isinstance(synth, dict):
            synth.setdefault("channels", 3)  # an RGB family: generate RGB images unless told otherwise
    sections: dict[str, tuple[Any, Any]] = {}
    plain: dict[str, Any] = {}
    for name, stage in STAGES.items():
        if name in raw:
            sections[name] = stage.load(raw[name], f"{where}.{name}")
            if fam is not None:
                for part in sections[name]:
                    _set_family(part, raw[name], fam)
            plain[name] = [to_dict(sections[name][0]), to_dict(sections[name][1])]
    return Path(raw["out"]), seeds, sections, plain


def _set_family(obj: Any, raw: Any, fam: str) -> None:
    """The experiment's top-level ``family`` into every lighting box of a stage's config that
    does not name its own (eps_c and eps_b stay as configured or defaulted)."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value, sub = getattr(obj, f.name), raw.get(f.name) if isinstance(raw, dict) else None
        if isinstance(value, Box):
            if not (isinstance(sub, dict) and "family" in sub):
                setattr(obj, f.name, dataclasses.replace(value, family=fam))
        elif dataclasses.is_dataclass(value):
            _set_family(value, sub, fam)


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
    for name, stage in STAGES.items():
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
        atomic_write_text(started, json.dumps({"hash": chain}))
        log(f"[{name}] running")
        t0 = time.perf_counter()
        stage.run(ctx, *sections[name])
        atomic_write_text(stamp, json.dumps({
            "hash": chain, "config": plain[name], "seconds": round(time.perf_counter() - t0, 2),
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }, indent=2))
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
    log(f"experiment finished in {time.perf_counter() - t_all:.1f} s; outputs in {out.resolve()}")
    return out
