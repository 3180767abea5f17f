"""Read any COCO-keypoints dataset into fixed-size grayscale or RGB arrays for the networks.

Every dataset takes this one path, the synthetic one included, so that a user's real data
works exactly like ours. Each non-crowd annotation of the keypoint category with at least
one labelled keypoint becomes one sample: its image is decoded (grayscale or RGB),
optionally cropped to a square around the annotation, and resized to ``size x size``; its
keypoints go through the very same map (docs/dataset.md gives the formulas). pycocotools
indexes the file (images by id, categories by name, annotations by category); the fields it
and this loader need are checked first, so that a missing one is named. Every problem with
the files raises :class:`~pruner.errors.DataError` as one line naming the file; bad
arguments raise :class:`~pruner.errors.ConfigError`.

Decoded arrays are cached in ``.usnprune-cache/`` beside the JSON file, keyed by a hash of
the JSON bytes, the loading options and each used image's size and modification time, so a
changed file is never served stale. A read-only dataset folder just goes uncached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from usnprune.errors import ConfigError, DataError

from .images import decode, is_color, resample, source_box  # noqa: F401  (resample, source_box: public here too)

CROPS = ("auto", "none", "bbox")
CHANNELS = ("auto", 1, 3)
PADS = ("edge", "zero")
CACHE_DIR = ".usnprune-cache"
# Bump whenever the same inputs would load to different arrays.
LOADER_VERSION = 2


@dataclasses.dataclass
class KeypointDataset:
    """Samples of one keypoint category, as network-ready arrays.

    Keypoint coordinates are pixels of the ``S x S`` network input with (0, 0) the top-left
    corner of the top-left pixel (COCO's convention), x right, y down. Keypoints that are
    not labelled (flag 0) have coordinates (0, 0).
    """

    images: np.ndarray  # [N, C, S, S] float32 in [0, 1]; C = 1 (grayscale) or 3 (RGB)
    keypoints: np.ndarray  # [N, K, 2] float32 (x, y)
    flags: np.ndarray  # [N, K] int8, COCO v: 2 visible, 1 labelled but occluded, 0 not labelled
    image_ids: np.ndarray  # [N] int64, COCO image ids
    annotation_ids: np.ndarray  # [N] int64, COCO annotation ids
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]  # 1-based keypoint index pairs, as in COCO
    source: str  # where the samples came from (the annotation file)

    def __post_init__(self) -> None:
        n, k = self.flags.shape
        if (self.images.ndim != 4 or self.images.shape[0] != n or self.keypoints.shape != (n, k, 2)
                or len(self.keypoint_names) != k):
            raise ValueError(
                f"inconsistent KeypointDataset shapes: images {self.images.shape}, keypoints "
                f"{self.keypoints.shape}, flags {self.flags.shape}, {len(self.keypoint_names)} names"
            )

    @property
    def visible(self) -> np.ndarray:
        """``[N, K]`` bool: the keypoint is visible (COCO v == 2)."""
        return self.flags == 2

    @property
    def labelled(self) -> np.ndarray:
        """``[N, K]`` bool: the keypoint has coordinates (COCO v > 0), visible or not."""
        return self.flags > 0

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices) -> KeypointDataset:
        """The samples at ``indices`` (anything numpy can index with: ints, a slice, a mask)."""
        idx = np.arange(len(self))[indices]
        return dataclasses.replace(
            self,
            images=self.images[idx],
            keypoints=self.keypoints[idx],
            flags=self.flags[idx],
            image_ids=self.image_ids[idx],
            annotation_ids=self.annotation_ids[idx],
            keypoint_names=list(self.keypoint_names),
            skeleton=list(self.skeleton),
        )

    def to_torch(self):
        """``(images [N,C,S,S] float32, keypoints [N,K,2] float32, visible [N,K] bool)`` tensors
        (images and keypoints share memory with the arrays)."""
        import torch

        return torch.from_numpy(self.images), torch.from_numpy(self.keypoints), torch.from_numpy(self.visible)


# ---- reading the annotation file ------------------------------------------------------


@dataclasses.dataclass
class _Item:
    """One annotation to load: where its image is and its keypoints in image pixels."""

    image_id: int
    annotation_id: int
    file: Path
    width: int | None  # as the JSON says, when it says
    height: int | None
    xy: np.ndarray  # [K, 2]
    flags: np.ndarray  # [K]
    bbox: tuple[float, float, float, float] | None


def _read_json(path: Path) -> tuple[bytes, dict]:
    if not path.is_file():
        raise DataError(f"{path}: no such annotation file")
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON: not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO file: the top level is a {type(data).__name__}, not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO file: no '{key}' list")
    return raw, data


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(path: Path, data: dict) -> None:
    """Every field pycocotools' index and this loader rely on, named where it is missing."""
    seen: set = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise DataError(f"{path}: images[{i}] has no 'id'")
        if not _integer(im["id"]):
            raise DataError(f"{path}: images[{i}] has an 'id' that is not an integer: {im['id']!r}")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DataError(f"{path}: images[{i}] (id {im['id']}) has no 'file_name'")
        if im["id"] in seen:
            raise DataError(f"{path}: images[{i}]: image id {im['id']} appears twice")
        seen.add(im["id"])
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise DataError(f"{path}: categories[{i}] has no 'id'")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}] is not an object")
        label = f"annotations[{i}]" + (f" (id {ann['id']})" if "id" in ann else "")
        for key in ("id", "image_id", "category_id"):
            if key not in ann:
                raise DataError(f"{path}: {label} has no '{key}'")
        if not _integer(ann["id"]) or not _integer(ann["image_id"]):
            raise DataError(f"{path}: {label} has an 'id' or 'image_id' that is not an integer")


def _index(path: Path, data: dict):
    """pycocotools' index of the file (after :func:`_check_fields`: it would raise a bare
    KeyError on a missing field)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
        index = COCO()
        index.dataset = data
        index.createIndex()
    return index


def _pick_categories(path: Path, index, category: str | int | None) -> tuple[list, dict]:
    """The ids of the keypoint categories to load and the one category describing them."""
    cats = [c for c in index.dataset["categories"] if isinstance(c, dict)]
    if category is not None:
        ids = index.getCatIds(catNms=[category])  # by name
        if not ids:
            want = int(category) if isinstance(category, str) and category.strip().lstrip("-").isdigit() else category
            ids = index.getCatIds(catIds=[want])  # or by id
        if not ids:
            names = ", ".join(repr(c.get("name", c["id"])) for c in cats) or "none"
            raise DataError(f"{path}: no category {category!r} (the file has: {names})")
        chosen = [index.cats[i] for i in ids]
        kp = [c for c in chosen if isinstance(c.get("keypoints"), list) and c["keypoints"]]
        if not kp:
            raise DataError(f"{path}: category {category!r} lists no 'keypoints'")
    else:
        kp = [c for c in cats if isinstance(c.get("keypoints"), list) and c["keypoints"]]
        if not kp:
            raise DataError(f"{path}: not a COCO keypoints file: no category lists 'keypoints'")
    names = {tuple(map(str, c["keypoints"])) for c in kp}
    if len(names) > 1:
        which = ", ".join(f"{c.get('name')!r} ({len(c['keypoints'])} keypoints)" for c in kp)
        raise DataError(f"{path}: several keypoint categories with different keypoints ({which}); "
                        "choose one with category= (--category)")
    return [c["id"] for c in kp], kp[0]


def _items(path: Path, index, image_dir: Path, cat_ids: list, cat: dict) -> tuple[list[_Item], Counter]:
    """Every non-crowd annotation of the categories with a labelled keypoint, in file order;
    and annotations with keypoints per image."""
    k = len(cat["keypoints"])
    items, per_image, with_keypoints = [], Counter(), 0
    anns = index.loadAnns(index.getAnnIds(catIds=cat_ids))
    for ann in anns:
        aid = ann["id"]
        if ann.get("iscrowd", 0) or "keypoints" not in ann:
            continue  # crowd regions hold no single instance's keypoints
        with_keypoints += 1
        kps = ann["keypoints"]
        if not isinstance(kps, list) or len(kps) != 3 * k:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise DataError(
                f"{path}: annotation id {aid} has {got} keypoint values, expected {3 * k} ({k} keypoints x 3)"
            )
        if not all(_number(v) for v in kps):
            raise DataError(f"{path}: annotation id {aid} has a keypoint value that is not a finite number")
        im = index.imgs.get(ann["image_id"])
        if im is None:
            raise DataError(f"{path}: annotation id {aid} refers to image id {ann['image_id']!r}, which is not in 'images'")
        per_image[ann["image_id"]] += 1
        arr = np.asarray(kps, dtype=np.float64).reshape(k, 3)
        flags = arr[:, 2].astype(np.int64)
        if np.any((flags < 0) | (flags > 2)) or np.any(arr[:, 2] != flags):
            raise DataError(f"{path}: annotation id {aid} has a visibility flag other than 0, 1 or 2")
        if not flags.any():
            continue
        bbox = ann.get("bbox")
        ok_bbox = isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox) and bbox[2] > 0 and bbox[3] > 0
        items.append(
            _Item(
                image_id=int(ann["image_id"]),
                annotation_id=int(aid),
                file=image_dir / im["file_name"],
                width=im.get("width") if _number(im.get("width")) else None,
                height=im.get("height") if _number(im.get("height")) else None,
                xy=arr[:, :2],
                flags=flags.astype(np.int8),
                bbox=tuple(float(v) for v in bbox) if ok_bbox else None,
            )
        )
    name = cat.get("name", cat["id"])
    if not anns:
        raise DataError(f"{path}: no annotation of category {name!r}")
    if not with_keypoints:
        raise DataError(f"{path}: not a COCO keypoints file: no annotation of category {name!r} has 'keypoints'")
    return items, per_image


# ---- images ---------------------------------------------------------------------------


def _decode(item: _Item, path: Path, channels: int) -> np.ndarray:
    """The image of ``item`` as a float32 ``[channels, H, W]`` array in [0, 1]."""
    arr = decode(item.file, channels, f"image id {item.image_id} in {path}")
    h, w = arr.shape[1:]
    if item.width not in (None, w) or item.height not in (None, h):
        raise DataError(f"{item.file}: is {w}x{h} pixels but {path} says {item.width}x{item.height}")
    return arr


# ---- the cache ------------------------------------------------------------------------


def _cache_file(path: Path, items: list[_Item], options: dict, raw: bytes) -> Path | None:
    h = hashlib.sha256()
    h.update(json.dumps({"loader": LOADER_VERSION, **options}, sort_keys=True).encode())
    h.update(hashlib.sha256(raw).digest())
    for file in dict.fromkeys(it.file for it in items):
        try:
            st = file.stat()
        except OSError:
            return None  # a missing image is reported while decoding
        h.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    name = f"{path.stem}-{options['size']}-{options['crop']}-{options['channels']}-{h.hexdigest()[:20]}.npz"
    return path.parent / CACHE_DIR / name


_CACHED = ("images", "keypoints", "flags", "image_ids", "annotation_ids")


def _read_cache(file: Path | None) -> dict | None:
    if file is None or not file.is_file():
        return None
    try:
        with np.load(file) as z:
            return {k: z[k] for k in _CACHED}
    except Exception:  # an unreadable cache is only a missed shortcut
        return None


def _write_cache(file: Path | None, arrays: dict) -> None:
    if file is None:
        return
    try:
        file.parent.mkdir(exist_ok=True)
        # Our own earlier caches for the same file, size and crop are now stale.
        prefix = file.name.rsplit("-", 1)[0] + "-"
        for old in file.parent.glob(f"{prefix}*.npz"):
            if old.name[len(prefix):].count("-") == 0 and old != file:
                old.unlink(missing_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only dataset folder simply goes uncached


# ---- loading --------------------------------------------------------------------------


def _check_options(size, crop, max_items, margin, pad, channels="auto") -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 4 <= size <= 4096:
        raise ConfigError(f"data.size: expected an integer in 4..4096, got {size!r}")
    if crop not in CROPS:
        raise ConfigError(f"data.crop: {crop!r} is not one of {', '.join(CROPS)}")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items < 1):
        raise ConfigError(f"data.max_items: expected a positive integer or None, got {max_items!r}")
    if not _number(margin) or margin < 0:
        raise ConfigError(f"data.margin: expected a number >= 0, got {margin!r}")
    if pad not in PADS:
        raise ConfigError(f"data.pad: {pad!r} is not one of {', '.join(PADS)}")
    if isinstance(channels, bool) or channels not in CHANNELS:
        raise ConfigError(f"data.channels: {channels!r} is not one of auto, 1, 3")


def load_coco(
    json_path: str | Path,
    image_dir: str | Path,
    size: int,
    crop: str = "auto",
    max_items: int | None = None,
    *,
    margin: float = 0.15,
    pad: str = "edge",
    category: str | int | None = None,
    cache: bool = True,
    channels: str | int = "auto",
) -> KeypointDataset:
    """Load the keypoint annotations of ``json_path`` with images under ``image_dir``.

    ``crop``: ``"none"`` resizes the whole image to ``size x size`` (x and y scale separately
    if it is not square); ``"bbox"`` takes the square around each annotation (see
    :func:`source_box`, ``margin`` each side, ``pad`` where it leaves the image); ``"auto"``
    is none for an image that is already ``size x size`` and holds one annotation, else bbox.
    ``max_items``: keep the first so many samples (in file order). ``category``: the name or
    id of the keypoint category to load (needed when the file has several with different
    keypoints). ``channels``: 1 (grayscale; colour becomes luma), 3 (RGB; grayscale is
    repeated) or ``"auto"`` (3 when any image file used is colour, else 1).
    Labelled keypoints that fall outside the input frame become unlabelled (flag 0).
    """
    _check_options(size, crop, max_items, margin, pad, channels)
    path, image_dir = Path(json_path), Path(image_dir)
    raw, data = _read_json(path)
    _check_fields(path, data)
    index = _index(path, data)
    cat_ids, cat = _pick_categories(path, index, category)
    names = [str(n) for n in cat["keypoints"]]
    skeleton = [tuple(int(a) for a in pair) for pair in cat.get("skeleton") or [] if isinstance(pair, list) and len(pair) == 2]
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such image folder (for {path})")
    items, per_image = _items(path, index, image_dir, cat_ids, cat)
    if not items:
        raise DataError(f"{path}: no annotation with a labelled keypoint (of {sum(per_image.values())} with keypoints)")
    items = items[:max_items]

    options = {"size": int(size), "crop": crop, "margin": float(margin), "pad": pad, "category": category,
               "max_items": max_items, "channels": channels}
    cache_file = _cache_file(path, items, options, raw) if cache else None
    arrays = _read_cache(cache_file)
    if arrays is None and cache and channels != "auto":
        # Training reads with "auto", the later stages with the network's count: the same
        # decoding when "auto" came out at that count, so that cache serves them (and a
        # stage that only reads writes nothing beside the data).
        auto = _read_cache(_cache_file(path, items, dict(options, channels="auto"), raw))
        if auto is not None and auto["images"].shape[1] == int(channels):
            arrays = auto
    if arrays is None:
        if channels == "auto":
            channels = 3 if any(is_color(f) for f in dict.fromkeys(it.file for it in items)) else 1
        arrays = _load_arrays(path, items, per_image, int(size), crop, float(margin), pad, int(channels))
        if cache:
            _write_cache(cache_file, arrays)
    return KeypointDataset(keypoint_names=names, skeleton=skeleton, source=str(path), **arrays)


def _load_arrays(path, items, per_image, size, crop, margin, pad, channels) -> dict:
    n, k = len(items), len(items[0].flags)
    images = np.empty((n, channels, size, size), dtype=np.float32)
    keypoints = np.zeros((n, k, 2), dtype=np.float32)
    flags = np.zeros((n, k), dtype=np.int8)
    by_file: dict[Path, list[int]] = {}  # each image decoded once, and only one held at a time
    for i, it in enumerate(items):
        by_file.setdefault(it.file, []).append(i)
    for file, idx in by_file.items():
        img = _decode(items[idx[0]], path, channels)
        h, w = img.shape[1:]
        for i in idx:
            it = items[i]
            mode = crop
            if mode == "auto":
                mode = "none" if (w, h) == (size, size) and per_image[it.image_id] == 1 else "bbox"
            x0, y0, x1, y1 = source_box(it.xy, it.flags, it.bbox, w, h, mode, margin)
            images[i] = resample(img, (x0, y0, x1, y1), size, pad)
            xy = (it.xy - [x0, y0]) * [size / (x1 - x0), size / (y1 - y0)]
            keep = (it.flags > 0) & np.all((xy >= 0) & (xy <= size), axis=1)
            keypoints[i][keep] = xy[keep]
            flags[i] = np.where(keep, it.flags, 0)
    return {
        "images": images,
        "keypoints": keypoints,
        "flags": flags,
        "image_ids": np.array([it.image_id for it in items], dtype=np.int64),
        "annotation_ids": np.array([it.annotation_id for it in items], dtype=np.int64),
    }


def load_split(root: str | Path, split: str, size: int, crop: str = "auto", max_items: int | None = None, **kwargs) -> KeypointDataset:
    """Load ``split`` of a dataset folder laid out as ``annotations/keypoints_<split>.json``
    plus ``images/<split>/`` (what :func:`pruner.data.synthetic.generate` writes)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    return load_coco(
        root / "annotations" / f"keypoints_{split}.json", root / "images" / split, size, crop, max_items, **kwargs
    )
