"""VNN-COMP benchmark folders: (checkpoints, images, box, tolerance) -> a folder anyone can run.

Layout (docs/formats.md), VNN-COMP 2026's: one folder per VNN-LIB version written::

    BENCH/
      1.0/ and 2.0/                    (``vnnlib_version``: 1, 2 or both)
        onnx/<category>/img<id>.onnx   one model per (network, pool image); hard links to
                                       one copy across the two folders where the file system allows
        vnnlib/<category>/img<id>_kp<k>_<name>_d<delta>.vnnlib[.gz]
        instances.csv                  onnx,vnnlib,timeout (relative paths, no header)
      manifest.csv                     instance -> network, image, keypoint, delta, box, reference, ...
                                       (paths relative to a version folder: the same in both)
      benchmark.json                   what generate_properties.py needs, and the files usnprune wrote
      properties.npz                   pool images' ground truth, flags and clean predictions
      generate_properties.py           python generate_properties.py <seed>  (numpy + onnx only)
      README.md

The folder is built in a temporary sibling and renamed into place, so an interrupted export
never leaves a folder that looks complete. An existing folder is only written into with
``force``; then only files an earlier export wrote (listed in its benchmark.json, each entry
checked to be a relative path that resolves inside the folder) are replaced or removed,
and a file of ours that would land on one it did not write (a user's README.md) is refused.
Category names are plain names (letters, digits, ``._+-``), never paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import onnx

from usnprune import __version__
from usnprune.config import require, to_dict
from usnprune.errors import UsnpruneError
from usnprune.files import PathError, inside, safe_relative
from usnprune.progress import bar as progress_bar
from usnprune.pruner import perturbation
from usnprune.pruner.data.source import DataSource
from usnprune.pruner.models import network_name

from . import onnx_model
from .templates import generate_properties as gp

BENCHMARK_FILE = "benchmark.json"
VNNLIB_VERSIONS = {"1": ["1.0"], "2": ["2.0"], "both": ["1.0", "2.0"]}  # --vnnlib-version -> folders
FIXED_FILES = ("1.0/instances.csv", "2.0/instances.csv", "manifest.csv", BENCHMARK_FILE, "properties.npz",
               "generate_properties.py", "README.md")
CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a folder name under onnx/ and vnnlib/, never a path


class BenchmarkError(UsnpruneError):
    """The benchmark folder cannot be written as asked."""


@dataclasses.dataclass
class ExportConfig:
    checkpoints: list[str]  # usnprune checkpoints (may be empty when onnx names models)
    data: str | DataSource  # dataset folder, or COCO files per split (the split below is read)
    out: str
    categories: list[str] | None = None  # names, one per checkpoint then per onnx model (default: from the file)
    perturbation: perturbation.Box = dataclasses.field(default_factory=perturbation.Box)  # the box and its family
    deltas: list[float] = dataclasses.field(default_factory=lambda: [0.5])  # px; 0.5 separates networks at eps 0.1
    images: int = 20  # images verified (chosen from the pool by the seed)
    pool: int | None = None  # images exported (default: 2 x images, at most the test split)
    timeout: float = 60.0
    seed: int = 0
    # gt: certified accuracy; prediction: certified stability; both: one property of each per
    # keypoint, so one verification yields the headline (accuracy) and stability beside it
    reference: Literal["gt", "prediction", "both"] = "both"
    gzip: bool = False
    skip_violated: bool = False  # leave out instances already violated at the identity
    split: str = "test"
    vnnlib_version: str = "both"  # 1, 2 or both: which VNN-LIB versions (folders 1.0/, 2.0/) to write
    force: bool = False
    onnx: list[str] = dataclasses.field(default_factory=list)  # users' ONNX keypoint regressors (export/onnx_in.py)
    onnx_normalized: bool = False  # their outputs are in [0, 1] of width and height, not pixels
    builtin_check: bool = True  # refuse an ONNX model the builtin verifier cannot read

    def check(self, where: str = "export") -> None:
        require(len(self.deltas) >= 1, f"{where}.deltas", "give at least one delta")
        for d in self.deltas:
            require(d > 0, f"{where}.delta", f"must be > 0, got {d}")
        require(self.images >= 1, f"{where}.images", f"must be >= 1, got {self.images}")
        require(self.pool is None or self.pool >= self.images, f"{where}.pool", "must be >= images")
        require(self.timeout > 0, f"{where}.timeout", f"must be > 0, got {self.timeout}")
        require(len(self.checkpoints) + len(self.onnx) >= 1, f"{where}.checkpoints",
                "give at least one checkpoint or ONNX model")
        require(str(self.vnnlib_version) in VNNLIB_VERSIONS, f"{where}.vnnlib_version",
                f"must be one of {', '.join(VNNLIB_VERSIONS)}, got {self.vnnlib_version!r}")
        if self.categories is not None:
            require(len(self.categories) == len(self.checkpoints) + len(self.onnx), f"{where}.categories",
                    "give one category name per checkpoint and ONNX model")
            require(len(set(self.categories)) == len(self.categories), f"{where}.categories", "names repeat")
            for name in self.categories:
                check_category(name, f"{where}.categories")


def check_category(name: str, where: str = "category") -> None:
    """A category is one folder name under onnx/ and vnnlib/: letters, digits, ``._+-``."""
    require(bool(CATEGORY.fullmatch(str(name))) and ".." not in str(name), where,
            f"{name!r} is not a category name (letters, digits and ._+- only, not starting with one of ._+-)")


def benchmark_family(bench: str | Path) -> dict | None:
    """``{"family": name, "k": k}`` of a benchmark folder usnprune wrote (from its
    benchmark.json; folders written before families existed are ``brightness_contrast``),
    or None for a folder without a readable benchmark.json."""
    try:
        meta = json.loads((Path(bench) / BENCHMARK_FILE).read_text())
        return {"family": str(meta.get("family", perturbation.DEFAULT_FAMILY)), "k": len(meta["input_lower"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def category_name(meta: dict, fallback: str) -> str:
    """The network name of a checkpoint from its meta (``fallback`` when it carries none)."""
    method = meta.get("method")
    if method in (None, "dense") and "seed" not in meta:
        return fallback
    return network_name(method, meta.get("sparsity", 0.0), meta.get("seed", 0))


class _Checkpoint:
    """A usnprune checkpoint as a benchmark network (the same interface as
    :class:`.onnx_in.OnnxNetwork`)."""

    def __init__(self, path: str, name: str | None, fallback: str) -> None:
        from usnprune.pruner.models import load_checkpoint

        self.path = str(path)
        self.model, self.meta = load_checkpoint(path)
        self.name = name or category_name(self.meta, fallback)
        arch = self.model.arch
        self.size, self.keypoints, self.channels = arch.input_size, arch.num_keypoints, arch.in_channels
        self.plain = self.model.to_plain()

    def check_keypoints(self, k: int, data: str) -> None:
        if k != self.keypoints:
            raise BenchmarkError(f"{data}: {k} keypoints, the network {self.path} has {self.keypoints}")

    def first(self, image, box, doc: str = ""):
        return onnx_model.export_instance_model(image, self.plain, box, doc=doc)

    def again(self, template, image, box):
        m = onnx_model.with_image(template, image, box.family)
        return m, onnx_model.check_parity(m, self.plain, image, box)

    def category(self) -> dict:
        from usnprune.pruner.models import count_parameters, file_hash

        meta = self.meta
        return {"name": self.name, "network": self.name, "checkpoint": self.path, "checkpoint_hash": file_hash(self.path),
                "method": meta.get("method", "dense"), "sparsity": meta.get("sparsity", 0.0),
                "seed": meta.get("seed", ""), "parameters": count_parameters(self.model)}


def _networks(cfg: ExportConfig) -> list:
    """Every network, loaded and checked before anything is written."""
    from .onnx_in import OnnxNetwork

    names = list(cfg.categories or [None] * (len(cfg.checkpoints) + len(cfg.onnx)))
    nets: list = [_Checkpoint(ck, names[i], Path(ck).parent.name or f"net{i}") for i, ck in enumerate(cfg.checkpoints)]
    nets += [OnnxNetwork(p, names[len(cfg.checkpoints) + i], cfg.onnx_normalized, cfg.builtin_check)
             for i, p in enumerate(cfg.onnx)]
    return nets


def _prepare_target(out: Path, force: bool) -> list[str]:
    """Check the output folder; returns the files an earlier export wrote (to be replaced),
    each entry of its benchmark.json checked to lie inside the folder."""
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"--out {out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    marker = out / BENCHMARK_FILE
    ours: list[str] = []
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text()).get("files", [])
        except (ValueError, OSError, AttributeError, UnicodeDecodeError):
            raise BenchmarkError(f"--out {out}: its {BENCHMARK_FILE} is unreadable; usnprune cannot tell which files "
                                 f"it wrote there: choose another --out") from None
        for rel in listed if isinstance(listed, list) else ["(not a list)"]:
            try:
                inside(out, rel, f"{marker}: lists")
                ours.append(safe_relative(rel))
            except PathError as e:
                raise BenchmarkError(f"{e}; refusing to replace anything in {out}") from None
    if not force:
        what = "an earlier benchmark" if marker.is_file() else "other content"
        raise BenchmarkError(f"--out {out}: folder exists with {what}; pass --force to write into it "
                             f"(only files usnprune wrote are replaced)")
    _refuse_foreign(out, FIXED_FILES, ours)
    return ours


def _refuse_foreign(out: Path, files, ours: list[str]) -> None:
    """Refuse when a file of ours would land on one the earlier export did not write."""
    listed = set(ours)
    for rel in files:
        p = inside(out, rel, f"--out {out}:")
        if (p.exists() or p.is_symlink()) and safe_relative(rel) not in listed:
            raise BenchmarkError(f"--out {out}: {rel} exists and usnprune did not write it (not in {BENCHMARK_FILE}); "
                                 f"it is not replaced even with --force: move it away or choose another --out")


def _writable_parent(out: Path) -> Path:
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".usnprune-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise BenchmarkError(f"{out}: cannot write there ({e.strerror or e})") from None
    return parent


def export_benchmark(cfg: ExportConfig, log: Callable[[str], None] = print) -> dict:
    """Write the benchmark folder; returns counts and timings."""
    from usnprune.pruner.data.source import load

    cfg.check()
    out = Path(cfg.out)
    replace = _prepare_target(out, cfg.force)
    parent = _writable_parent(out)
    box = cfg.perturbation
    nets = _networks(cfg)  # every network first: a bad one fails before anything is written
    names = [n.name for n in nets]
    for name in names:
        check_category(name, "--category")
    if len(set(names)) != len(names):
        raise BenchmarkError(f"two networks would share a category name ({', '.join(names)}); pass categories")
    size, channels = nets[0].size, nets[0].channels
    for net in nets:
        if (net.size, net.channels) != (size, channels):
            raise BenchmarkError(f"{net.path}: input size or channels ({net.channels} x {net.size} x {net.size}) "
                                 f"differ from {nets[0].path} ({channels} x {size} x {size})")
    box.fam.check_channels(channels, "export.perturbation.family")
    ds = load(cfg.data, cfg.split, size, channels)
    k = len(ds.keypoint_names)
    described = cfg.data if isinstance(cfg.data, str) else cfg.data.describe()
    for net in nets:
        net.check_keypoints(k, described)
    labelled = np.flatnonzero((np.asarray(ds.flags) >= 1).any(axis=1))
    # one sample per image: a COCO image with several persons gives one (bbox-cropped) sample
    # each, but instance models and property files are named by image id, so two samples of
    # one image would overwrite each other's model. The first labelled annotation stands for
    # its image (docs/dataset.md); images with one sample (all synthetic data) are unaffected.
    _, first = np.unique(np.asarray(ds.image_ids)[labelled], return_index=True)
    labelled = labelled[np.sort(first)]
    if len(labelled) == 0:
        raise BenchmarkError(f"{cfg.data}: no {cfg.split} image has a labelled keypoint")
    for flag, want in (("--images", cfg.images), ("--pool", cfg.pool)):
        if want is not None and want > len(labelled):
            raise BenchmarkError(f"{flag} {want}: the {cfg.split} split of {cfg.data} has only {len(labelled)} "
                                 f"images with a labelled keypoint")
    n_pool = min(len(labelled), cfg.pool or 2 * cfg.images)
    rng = np.random.default_rng(cfg.seed)
    pool = np.sort(rng.choice(labelled, size=n_pool, replace=False))
    image_ids = np.asarray(ds.image_ids)[pool]

    versions = VNNLIB_VERSIONS[str(cfg.vnnlib_version)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    t0 = time.perf_counter()
    try:
        preds, categories, parity = {}, [], []
        bar = progress_bar(len(nets) * n_pool, "export onnx", unit="model")
        for net in nets:
            name = net.name
            onnx_files, pred = {}, np.zeros((n_pool, k, 2))
            template = None
            for j, idx in enumerate(pool):
                image = np.asarray(ds.images[idx], dtype=np.float32)
                if template is None:
                    m, err = net.first(image, box, doc=f"usnprune {name}")
                    template = m
                else:  # same simplified graph, this image's front weights; parity re-checked
                    m, err = net.again(template, image, box)
                parity.append(err)
                rel = f"onnx/{name}/img{int(image_ids[j])}.onnx"
                _save_model(m, [tmp / v / rel for v in versions])
                onnx_files[str(int(image_ids[j]))] = rel
                pred[j] = onnx_model.run(onnx_model.session(m), box.identity())[0].reshape(k, 2)
                bar.update(1)
            preds[name] = pred
            categories.append({**net.category(), "onnx": onnx_files})
        bar.close()
        np.savez(tmp / "properties.npz", image_ids=image_ids, ground_truth=np.asarray(ds.keypoints)[pool].astype(np.float64),
                 flags=np.asarray(ds.flags)[pool], **{f"pred_{n}": p for n, p in preds.items()})
        meta_out = {
            "format": "usnprune-benchmark", "toolkit_version": __version__, "seed": cfg.seed,
            "family": box.family, "input_names": box.names,
            "eps_c": box.eps_c, "eps_b": box.eps_b, "input_lower": list(box.lower), "input_upper": list(box.upper),
            "deltas": list(cfg.deltas), "images": cfg.images, "timeout": cfg.timeout, "reference": cfg.reference,
            "gzip": cfg.gzip, "skip_violated": cfg.skip_violated, "min_flag": 1,
            "data": cfg.data if isinstance(cfg.data, str) else to_dict(cfg.data),
            "split": cfg.split, "keypoint_names": list(ds.keypoint_names), "categories": categories,
            "vnnlib_versions": versions,
        }
        (tmp / BENCHMARK_FILE).write_text(json.dumps(meta_out, indent=1))
        shutil.copyfile(gp.__file__, tmp / "generate_properties.py")
        stats = gp.generate(str(tmp), cfg.seed)
        (tmp / "README.md").write_text(_readme(meta_out, stats))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != BENCHMARK_FILE)
        meta_out["files"] = files + [BENCHMARK_FILE]
        (tmp / BENCHMARK_FILE).write_text(json.dumps(meta_out, indent=1))
        _install(tmp, out, replace, files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only
        raise
    seconds = time.perf_counter() - t0
    stats.update({"networks": len(nets), "pool_images": int(n_pool), "onnx_models": len(nets) * int(n_pool),
                  "seconds": round(seconds, 2), "max_parity_error_px": float(max(parity)),
                  "bytes": sum((out / f).stat().st_size for f in files)})
    log(f"wrote {out}: {stats['instances']} instances over {len(nets)} networks x {n_pool} pool images "
        f"({stats['skipped_not_labelled']} unlabelled keypoints skipped, {stats['skipped_violated']} violated at identity skipped) "
        f"in {seconds:.1f} s; max ONNX/{'/'.join(['PyTorch'] * bool(cfg.checkpoints) + ['original ONNX'] * bool(cfg.onnx))} difference "
        f"{stats['max_parity_error_px']:.2e} px")
    return stats


def _save_model(model: onnx.ModelProto, paths: list[Path]) -> None:
    """Write one ONNX file at every path: the first written, the others hard links to it
    (copies where the file system has none), so both version folders cost one model."""
    for k, p in enumerate(paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        if k == 0:
            onnx.save(model, p)
            continue
        if p.exists() or p.is_symlink():  # written for an earlier pool sample with this image id: as the first path
            p.unlink()
        try:
            os.link(paths[0], p)
        except OSError:
            shutil.copyfile(paths[0], p)


def _install(tmp: Path, out: Path, replace: list[str], files: list[str]) -> None:
    """Move the finished folder into place: a rename when ``out`` is new or empty; else
    check that no new file lands on one the earlier export did not write, remove what it
    wrote (the instance lists and the marker first, so a kill leaves no folder that looks
    complete), move the new files in, the instance lists and the marker last. Every path is
    checked to lie inside ``out``."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return
    _refuse_foreign(out, files + [BENCHMARK_FILE], replace)
    lists = [r for r in files if Path(r).name == "instances.csv"]
    first = [BENCHMARK_FILE] + [r for r in replace if Path(r).name == "instances.csv"]
    for rel in first + [r for r in replace if r not in first]:
        p = inside(out, rel, f"--out {out}:")
        if p.is_file() or p.is_symlink():
            p.unlink()
    for rel in [r for r in files if r not in lists] + lists:
        dst = inside(out, rel, f"--out {out}:")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, dst)
    os.replace(tmp / BENCHMARK_FILE, inside(out, BENCHMARK_FILE))
    shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only


_REFERENCE_TEXT = {
    "gt": "the ground truth (`_gt` files: certified accuracy)",
    "prediction": "the network's clean prediction (`_pred` files: certified stability)",
    "both": "the ground truth (`_gt` files: certified accuracy) and, in a second property per keypoint, "
            "the network's clean prediction (`_pred` files: certified stability)",
}


def _readme(meta: dict, stats: dict) -> str:
    cats = "\n".join(f"| {c['name']} | {c['method']} | {c['sparsity']} | {c['parameters']:,} | `{c['checkpoint_hash']}` |"
                     for c in meta["categories"])
    fam = perturbation.family(meta["family"])
    names = meta["input_names"]
    box = ", ".join(f"`{n} in [{lo:g}, {hi:g}]`" for n, lo, hi in zip(names, meta["input_lower"], meta["input_upper"]))
    return f"""# usnprune keypoint benchmark

Keypoint networks under lighting changes, in the VNN-COMP format, one folder per VNN-LIB
version ({', '.join(f'`{v}/`' for v in meta['vnnlib_versions'])}, each with instances.csv, onnx/ and
vnnlib/; the same instance has the same relative paths in each). The lighting family is
`{fam.name}`: {fam.doc}. Each ONNX model takes `X` = ({', '.join(names)}), shape
`[batch, {fam.k}]`, holds one image as a constant, computes the lit image exactly (two Gemm
branches from X and `Relu(z) - Relu(z - 1)` for the clip to [0, 1]), runs the network, and
outputs `Y` = (u0, v0, u1, v1, ...) pixel coordinates of {len(meta['keypoint_names'])} keypoints.

Each VNNLIB property: {box}; unsafe (sat) when one keypoint leaves
the L-inf box of half-width delta ({', '.join(f'{d:g}' for d in meta['deltas'])} px) around its
reference: {_REFERENCE_TEXT[meta['reference']]}. `unsat` = certified.

- instances: {stats['instances']} (timeout {meta['timeout']:g} s each, {stats['total_timeout_s'] / 3600:.2f} h in total)
- images per network: {meta['images']} chosen by the seed from a pool of {len(next(iter(meta['categories']))['onnx'])}
- keypoints skipped as not labelled: {stats['skipped_not_labelled']}; left out as violated at the identity: {stats['skipped_violated']}

Regenerate the properties (numpy and onnx only): `python generate_properties.py <seed>`
(written with seed {meta['seed']}). `manifest.csv` maps each property to its network, image,
keypoint, delta, box and reference (`instance` is its row in instances.csv).

| category | method | sparsity | parameters | checkpoint |
| --- | --- | --- | --- | --- |
{cats}

Made by usnprune {meta['toolkit_version']}.
"""
