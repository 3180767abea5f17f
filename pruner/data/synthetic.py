"""A deterministic synthetic keypoint dataset: the aircraft of :mod:`.aircraft` seen from
random views, written as a standard COCO-keypoints folder (docs/dataset.md).

Why synthetic: the study needs a keypoint task that is small (32x32 grayscale), learnable in
minutes on a CPU, reproducible from a seed, and still a real regression problem (pose,
perspective, occlusion, clutter), so that pruning and verification results mean something.

Every image has its own random stream derived from (seed, split, index), so the same seed
gives byte-identical files and image ``i`` does not depend on how many images were asked for.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

from usnprune.config import to_dict
from usnprune.errors import ConfigError, DataError
from usnprune.files import MANIFEST as FILES_MANIFEST
from usnprune.files import OutputFolder, atomic_write_text
from usnprune.progress import bar as progress_bar

from .aircraft import (
    CATEGORY,
    GENERATOR,
    GENERATOR_VERSION,
    KEYPOINT_NAMES,
    KEYPOINTS_3D,
    SKELETON,
    Sample,
    SynthOptions,
    make_options,
    render_sample,
)


@dataclasses.dataclass
class SynthConfig:
    """What ``usnprune data synth`` and an experiment's ``data: {synth: ...}`` generate."""

    n_train: int = 4000
    n_test: int = 400
    seed: int = 0
    size: int = 32  # image side in pixels
    channels: int = 1  # 1: grayscale PNGs; 3: RGB (tinted background and aircraft)

    def check(self, where: str) -> None:
        _check_args(self.n_train, self.n_test, self.seed, self.size, where, self.channels)


__all__ = ["SynthConfig", "KEYPOINT_NAMES", "KEYPOINTS_3D", "MANIFEST", "SKELETON", "SPLITS", "SynthOptions", "generate", "image_rng",
           "make_options", "render_sample"]

SPLITS = ("train", "test")
MANIFEST = "synthetic.json"  # marks a folder as written by generate()


def _check_args(n_train, n_test, seed, size, where: str = "synthetic", channels: int = 1) -> None:
    for name, v, lo in (("n_train", n_train, 1), ("n_test", n_test, 0), ("size", size, 16), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{where}.{name}: expected an integer, got {v!r}")
        if v < lo:
            raise ConfigError(f"{where}.{name}: must be >= {lo}, got {v}")
    if size > 1024:
        raise ConfigError(f"{where}.size: must be <= 1024, got {size}")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"{where}.channels: must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def _earlier_manifest(out: Path) -> dict | None:
    """The manifest of an earlier synthetic dataset in ``out``, or None."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def _dataset_files(counts: dict[str, int]) -> list[str]:
    files = [MANIFEST] + [f"annotations/keypoints_{split}.json" for split in SPLITS]
    return files + [f"images/{split}/{i + 1:06d}.png" for split in SPLITS for i in range(counts[split])]


def _prepare_folder(out: Path, force: bool, counts: dict[str, int]) -> OutputFolder:
    """The dataset folder: an empty or new one; a non-empty one only with ``force``, and
    then only files usnprune wrote are replaced (an earlier synthetic dataset made before
    usnprune kept a file manifest is recognised by its ``synthetic.json``)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    folder = OutputFolder(out, "data synth", force)
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "an earlier synthetic dataset" if _earlier_manifest(out) else "other files"
        raise DataError(f"--out {out}: the folder holds {what}; pass --force to replace what usnprune wrote "
                        "there, or choose an empty folder")
    earlier = _earlier_manifest(out) if out.is_dir() else None
    if force and earlier is not None and not folder.listed():
        old = {s: earlier.get(f"n_{s}") for s in SPLITS}
        if all(isinstance(v, int) for v in old.values()):
            listed = {rel: "data synth" for rel in _dataset_files(old)}
            atomic_write_text(out / FILES_MANIFEST, json.dumps({"tool": "usnprune", "files": listed}, indent=1))
    folder.claim(_dataset_files(counts))
    return folder


def _annotation(index: int, s: Sample) -> dict:
    kps = []
    for (x, y), v in zip(s.keypoints, s.flags):
        # COCO writes unlabelled keypoints as (0, 0, 0)
        kps += [round(float(x), 3), round(float(y), 3), int(v)] if v else [0, 0, 0]
    return {
        "id": index + 1,
        "image_id": index + 1,
        "category_id": CATEGORY["id"],
        "keypoints": kps,
        "num_keypoints": int(np.count_nonzero(s.flags)),
        "bbox": [round(float(b), 3) for b in s.bbox],
        "area": round(float(s.coverage.sum()), 3),
        "iscrowd": 0,
    }


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split``: independent of the dataset's length."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def color_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The colour tints of image ``index`` (RGB datasets): a stream of its own, so the RGB
    image shows the same view as the grayscale one of the same seed."""
    return np.random.default_rng([seed, SPLITS.index(split), index, 1])


def generate(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    size: int = 32,
    *,
    channels: int = 1,
    force: bool = False,
    progress: bool | None = None,
    **options,
) -> Path:
    """Write a synthetic COCO-keypoints dataset to ``out_dir`` and return its path.

    Layout (docs/dataset.md): ``annotations/keypoints_{train,test}.json``,
    ``images/{train,test}/NNNNNN.png`` (8-bit grayscale, or RGB with ``channels=3``; ``file_name`` is relative to
    ``images/<split>/``; image and annotation ids start at 1 and equal the file number), and
    ``synthetic.json`` recording how it was made. ``options`` are :class:`SynthOptions` fields.

    A non-empty ``out_dir`` is refused unless ``force``; then an earlier dataset is replaced
    (its images this one does not write are removed) and a file usnprune did not write is
    never replaced or removed (usnprune.files.OutputFolder). ``progress``: show progress on
    stderr (default: for more than 200 images).
    """
    _check_args(n_train, n_test, seed, size, channels=channels)
    opt = make_options(**options)
    out = Path(out_dir)
    counts = {"train": int(n_train), "test": int(n_test)}
    folder = _prepare_folder(out, force, counts)
    info = {
        "description": "usnprune synthetic aircraft keypoints",
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "channels": int(channels),
        "options": to_dict(opt),
    }
    total = counts["train"] + counts["test"]
    show = total > 200 if progress is None else progress
    # written into a staging folder and moved into place at the end: a full disk or a kill
    # leaves the folder as it was, never a partial dataset (usnprune.files.OutputFolder)
    with folder.staging(_dataset_files(counts), remove_stale=True) as stage, \
            progress_bar(total, "synthetic images", unit="img", enabled=show) as bar:
        stage.path(MANIFEST).write_text(
            json.dumps({**info, "n_train": counts["train"], "n_test": counts["test"]}, indent=2) + "\n")
        for split in SPLITS:
            images, annotations = [], []
            for i in range(counts[split]):
                s = render_sample(image_rng(seed, split, i), size, opt,
                                  color_rng(seed, split, i) if channels == 3 else None)
                name = f"{i + 1:06d}.png"
                Image.fromarray(s.image_u8()).save(stage.path(f"images/{split}/{name}"))
                images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
                annotations.append(_annotation(i, s))
                bar.update()
            coco = {
                "info": {**info, "split": split},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [CATEGORY],
            }
            stage.path(f"annotations/keypoints_{split}.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    for split in SPLITS:  # an empty split still has its folder
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    return out
