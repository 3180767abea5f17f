"""Where a stage reads its samples: a dataset folder, or standard COCO files as they come.

A configuration's ``data`` is either a folder laid out as ``annotations/keypoints_<split>.json``
+ ``images/<split>/`` (what the synthetic generator writes; a plain string in YAML), or a
:class:`DataSource` naming COCO files per split -- e.g. COCO 2017's
``person_keypoints_train2017.json`` with ``train2017/`` and ``person_keypoints_val2017.json``
with ``val2017/`` -- any file names, with the keypoint category to read::

    data: {train: {annotations: coco/annotations/person_keypoints_train2017.json, image_dir: coco/train2017},
           test: {annotations: coco/annotations/person_keypoints_val2017.json, image_dir: coco/val2017},
           category: person}

On the command line ``--annotations FILE.json --image-dir DIR`` (and ``--test-annotations``,
``--test-image-dir`` for train and prune) build the same value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from usnprune.config import require
from usnprune.errors import ConfigError

from .coco import KeypointDataset, load_coco, load_split


@dataclasses.dataclass
class CocoFiles:
    """One split as standard COCO files: the annotation JSON and the folder that ``file_name``
    is relative to."""

    annotations: str
    image_dir: str


@dataclasses.dataclass
class DataSource:
    folder: str | None = None  # a dataset folder (annotations/keypoints_<split>.json + images/<split>/)
    train: CocoFiles | None = None  # or COCO files per split
    test: CocoFiles | None = None  # optional for train and prune: without it they evaluate on train
    category: str | int | None = None  # the keypoint category (name or id) when a file has several
    crop: Literal["auto", "none", "bbox"] = "auto"  # docs/dataset.md

    def check(self, where: str = "data") -> None:
        files = self.train is not None or self.test is not None
        require((self.folder is not None) != files, where, "give either folder, or train/test COCO files")

    def files(self, split: str) -> CocoFiles | None:
        if self.folder is not None:
            root = Path(self.folder)
            return CocoFiles(str(root / "annotations" / f"keypoints_{split}.json"), str(root / "images" / split))
        return {"train": self.train, "test": self.test}.get(split)

    def describe(self) -> str:
        if self.folder is not None:
            return self.folder
        return ", ".join(f"{s}: {f.annotations}" for s, f in (("train", self.train), ("test", self.test)) if f)


def as_source(data: str | DataSource, where: str = "data") -> DataSource:
    """A DataSource from a config's ``data`` (a folder path is the folder layout)."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, (str, Path)):
        return DataSource(folder=str(data))
    raise ConfigError(f"{where}: expected a dataset folder or a mapping of COCO files, got {data!r}")


def load(data: str | DataSource, split: str, size: int, channels: str | int = "auto", **kwargs) -> KeypointDataset:
    """The samples of ``split`` (``train``, ``test``, or any split of a folder) at ``size``."""
    src = as_source(data)
    if src.folder is not None:
        return load_split(src.folder, split, size, src.crop, category=src.category, channels=channels, **kwargs)
    files = src.files(split)
    if files is None:
        raise ConfigError(f"data: no {split} files given (give data.{split}: {{annotations, image_dir}})")
    return load_coco(files.annotations, files.image_dir, size, src.crop, category=src.category,
                     channels=channels, **kwargs)


def has_split(data: str | DataSource, split: str) -> bool:
    src = as_source(data)
    return src.folder is not None or src.files(split) is not None


def load_eval(data: str | DataSource, size: int, channels: str | int, log=print) -> tuple[KeypointDataset, str]:
    """The test split for evaluation, or -- for COCO files given without one -- the training
    samples, said so (``log``) and returned with the split's name."""
    if has_split(data, "test"):
        return load(data, "test", size, channels), "test"
    log("  no test files given: evaluating on the training samples")
    return load(data, "train", size, channels), "train"
