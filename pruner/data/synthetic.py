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
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from usnprune.config import to_dict
from usnprune.errors import ConfigError, DataError

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

    def check(self, where: str) -> None:
        _check_args(self.n_train, self.n_test, self.seed, self.size, where)


__all__ = ["SynthConfig", "KEYPOINT_NAMES", "KEYPOINTS_3D", "MANIFEST", "SKELETON", "SPLITS", "SynthOptions", "generate", "image_rng",
           "make_options", "render_sample"]

SPLITS = ("train", "test")
MANIFEST = "synthetic.json"  # marks a folder as written by generate()


def _check_args(n_train, n_test, seed, size, where: str = "synthetic") -> None:
    for name, v, lo in (("n_train", n_train, 1), ("n_test", n_test, 0), ("size", size, 16), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{where}.{name}: expected an integer, got {v!r}")
        if v < lo:
            raise ConfigError(f"{where}.{name}: must be >= {lo}, got {v}")
    if size > 1024:
        raise ConfigError(f"{where}.size: must be <= 1024, got {size}")


def _earlier_manifest(out: Path) -> dict | None:
    """The manifest of an earlier synthetic dataset in ``out``, or None."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def _prepare_folder(out: Path, force: bool) -> dict | None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    earlier = _earlier_manifest(out) if out.is_dir() else None
    if out.is_dir() and earlier is None and not force and any(out.iterdir()):
        raise DataError(
            f"{out}: folder is not empty and holds no earlier synthetic dataset ({MANIFEST}); "
            "choose an empty folder or pass force=True"
        )
    try:
        for split in SPLITS:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations").mkdir(exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the dataset folders: {e.strerror or e}") from None
    return earlier


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


def generate(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    size: int = 32,
    *,
    force: bool = False,
    progress: bool | None = None,
    **options,
) -> Path:
    """Write a synthetic COCO-keypoints dataset to ``out_dir`` and return its path.

    Layout (docs/dataset.md): ``annotations/keypoints_{train,test}.json``,
    ``images/{train,test}/NNNNNN.png`` (8-bit grayscale; ``file_name`` is relative to
    ``images/<split>/``; image and annotation ids start at 1 and equal the file number), and
    ``synthetic.json`` recording how it was made. ``options`` are :class:`SynthOptions` fields.

    A non-empty ``out_dir`` is refused unless it holds an earlier synthetic dataset (which
    is then replaced, removing only images that dataset wrote and this one does not) or
    ``force`` is set (then files are written over and nothing is removed). ``progress``:
    show a tqdm bar on stderr (default: for more than 200 images).
    """
    _check_args(n_train, n_test, seed, size)
    opt = make_options(**options)
    out = Path(out_dir)
    earlier = _prepare_folder(out, force)
    counts = {"train": int(n_train), "test": int(n_test)}
    info = {
        "description": "usnprune synthetic aircraft keypoints",
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "options": to_dict(opt),
    }
    # The manifest goes first, so that an interrupted run is still recognised as ours.
    (out / MANIFEST).write_text(json.dumps({**info, "n_train": counts["train"], "n_test": counts["test"]}, indent=2) + "\n")
    if earlier is not None:
        for split in SPLITS:
            # The old annotations go before any image changes, so an interrupted run never
            # leaves annotations that describe other images.
            (out / "annotations" / f"keypoints_{split}.json").unlink(missing_ok=True)
            old = earlier.get(f"n_{split}")
            for i in range(counts[split], old if isinstance(old, int) else 0):
                (out / "images" / split / f"{i + 1:06d}.png").unlink(missing_ok=True)

    total = counts["train"] + counts["test"]
    show = total > 200 if progress is None else progress
    with tqdm(total=total, desc="synthetic images", unit="img", file=sys.stderr, disable=not show, leave=False) as bar:
        for split in SPLITS:
            images, annotations = [], []
            for i in range(counts[split]):
                s = render_sample(image_rng(seed, split, i), size, opt)
                name = f"{i + 1:06d}.png"
                Image.fromarray(s.image_u8()).save(out / "images" / split / name)
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
            (out / "annotations" / f"keypoints_{split}.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    return out
