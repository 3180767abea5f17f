"""The scratch folder a chunk runs in: alpha-beta-CROWN writes beside the files it reads
and into its working directory, so it never runs on the benchmark folder itself."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import re
import shutil
import tempfile
from pathlib import Path

from ..base import Instance
from .settings import AbcrownSettings


@dataclasses.dataclass
class _Staged:
    """An instance with its scratch copies (paths relative to the scratch root)."""

    inst: Instance
    onnx: str
    vnnlib: str
    position: int  # in the chunk: results are reported through on_result in any order



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
