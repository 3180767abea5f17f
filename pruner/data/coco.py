"""Read any COCO-keypoints dataset into fixed-size grayscale arrays for the networks.

Every dataset takes this one path, the synthetic one included, so that a user's real data
works exactly like ours. Each annotation with at least one labelled keypoint becomes one
sample: its image is converted to grayscale, optionally cropped to a square around the
annotation, and resized to ``size x size``; its keypoints go through the very same map
(docs/dataset.md gives the formulas). Every problem with the files raises
:class:`~pruner.errors.DataError` as one line naming the file; bad arguments raise
:class:`~pruner.errors.ConfigError`.

Decoded arrays are cached in ``.usnprune-cache/`` beside the JSON file, keyed by a hash of
the JSON bytes, the loading options and each used image's size and modification time, so a
changed file is never served stale. A read-only dataset folder just goes uncached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from usnprune.errors import ConfigError, DataError

CROPS = ("auto", "none", "bbox")
PADS = ("edge", "zero")
CACHE_DIR = ".usnprune-cache"
# Bump whenever the same inputs would load to different arrays.
LOADER_VERSION = 1


@dataclasses.dataclass
class KeypointDataset:
    """Samples of one keypoint category, as network-ready arrays.

    Keypoint coordinates are pixels of the ``S x S`` network input with (0, 0) the top-left
    corner of the top-left pixel (COCO's convention), x right, y down. Keypoints that are
    not labelled (flag 0) have coordinates (0, 0).
    """

    images: np.ndarray  # [N, 1, S, S] float32 in [0, 1]
    keypoints: np.ndarray  # [N, K, 2] float32 (x, y)
    flags: np.ndarray  # [N, K] int8, COCO v: 2 visible, 1 labelled but occluded, 0 not labelled
    image_ids: np.ndarray  # [N] int64, COCO image ids
    annotation_ids: np.ndarray  # [N] int64, COCO annotation ids
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]  # 1-based keypoint index pairs, as in COCO
    source: str  # where the samples came from (the annotation file)

    def __post_init__(self) -> None:
        n, k = self.flags.shape
        if self.images.shape[:2] != (n, 1) or self.keypoints.shape != (n, k, 2) or len(self.keypoint_names) != k:
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
        """``(images [N,1,S,S] float32, keypoints [N,K,2] float32, visible [N,K] bool)`` tensors
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


def _pick_categories(path: Path, categories: list, category: str | int | None) -> tuple[set, dict]:
    """The ids of the keypoint categories to load and the one category describing them."""
    kp = [c for c in categories if isinstance(c, dict) and isinstance(c.get("keypoints"), list) and c["keypoints"]]
    if not kp:
        raise DataError(f"{path}: not a COCO keypoints file: no category lists 'keypoints'")
    if category is not None:
        kp = [c for c in kp if category in (c.get("id"), c.get("name"))]
        if not kp:
            raise DataError(f"{path}: no keypoint category with name or id {category!r}")
    names = {tuple(map(str, c["keypoints"])) for c in kp}
    if len(names) > 1:
        which = ", ".join(f"{c.get('name')!r} ({len(c['keypoints'])} keypoints)" for c in kp)
        raise DataError(f"{path}: several keypoint categories with different keypoints ({which}); choose one with category=")
    return {c.get("id") for c in kp}, kp[0]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _items(path: Path, data: dict, image_dir: Path, cat_ids: set, k: int) -> tuple[list[_Item], Counter]:
    """Every annotation with a labelled keypoint, in file order; and annotations per image."""
    images = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] has no 'id' or no 'file_name'")
        images[im["id"]] = im
    items, per_image, with_keypoints = [], Counter(), 0
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("category_id") not in cat_ids or ann.get("iscrowd", 0):
            continue
        aid = ann.get("id", i)
        if not _integer(aid) or not _integer(ann.get("image_id")):
            raise DataError(f"{path}: annotations[{i}] has an 'id' or 'image_id' that is not an integer")
        if "keypoints" not in ann:
            continue
        with_keypoints += 1
        kps = ann["keypoints"]
        if not isinstance(kps, list) or len(kps) != 3 * k:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise DataError(
                f"{path}: annotation id {aid} has {got} keypoint values, expected {3 * k} ({k} keypoints x 3)"
            )
        if not all(_number(v) for v in kps):
            raise DataError(f"{path}: annotation id {aid} has a keypoint value that is not a finite number")
        if ann.get("image_id") not in images:
            raise DataError(f"{path}: annotation id {aid} refers to image id {ann.get('image_id')!r}, which is not in 'images'")
        per_image[ann["image_id"]] += 1
        arr = np.asarray(kps, dtype=np.float64).reshape(k, 3)
        flags = arr[:, 2].astype(np.int64)
        if np.any((flags < 0) | (flags > 2)):
            raise DataError(f"{path}: annotation id {aid} has a visibility flag other than 0, 1 or 2")
        if not flags.any():
            continue
        im = images[ann["image_id"]]
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
    if not with_keypoints:
        raise DataError(f"{path}: not a COCO keypoints file: no annotation has 'keypoints'")
    return items, per_image


# ---- images, crops and resizes --------------------------------------------------------


def _decode(item: _Item, path: Path) -> np.ndarray:
    """The image of ``item`` as a float32 ``[H, W]`` grayscale array in [0, 1]."""
    try:
        with Image.open(item.file) as im:
            im.load()
            if im.mode.startswith("I;16"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(f"{item.file}: image file not found (image id {item.image_id} in {path})") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{item.file}: cannot read image: {e}") from None
    h, w = arr.shape
    if item.width not in (None, w) or item.height not in (None, h):
        raise DataError(f"{item.file}: is {w}x{h} pixels but {path} says {item.width}x{item.height}")
    return arr


def source_box(item_xy, flags, bbox, width, height, mode, margin) -> tuple[float, float, float, float]:
    """The region ``(x0, y0, x1, y1)`` of the image (continuous pixels) that becomes the input.

    ``none``: the whole image. ``bbox``: the square centred on the union of the annotation's
    bbox and its labelled keypoints, with side ``max(w, h) * (1 + 2 * margin)``; it may reach
    outside the image (that part is padded).
    """
    if mode == "none":
        return 0.0, 0.0, float(width), float(height)
    pts = item_xy[flags > 0]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if bbox is not None:
        lo = np.minimum(lo, [bbox[0], bbox[1]])
        hi = np.maximum(hi, [bbox[0] + bbox[2], bbox[1] + bbox[3]])
    centre = (lo + hi) / 2
    # A lone keypoint has no extent: fall back to a tenth of the image.
    side = max(float(np.max(hi - lo)) * (1 + 2 * margin), 0.1 * max(width, height), 1.0)
    return centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2


def resample(image: np.ndarray, box, size: int, pad: str = "edge") -> np.ndarray:
    """Map ``box = (x0, y0, x1, y1)`` of ``image`` onto a ``size x size`` array.

    Output pixel ``i`` covers source ``[x0 + i*sx, x0 + (i+1)*sx)``, ``sx = (x1 - x0) / size``,
    so a source point ``x`` lands at ``(x - x0) / sx``. Pillow's antialiased bilinear filter
    does the resampling; the part of the box outside the image is filled with the image's
    edge (``pad="edge"``) or zeros.
    """
    h, w = image.shape
    x0, y0, x1, y1 = box
    if (x0, y0, x1, y1) == (0, 0, w, h) and w == h == size:
        return image.astype(np.float32, copy=True)
    left, top = max(0, math.ceil(-x0)), max(0, math.ceil(-y0))
    right, bottom = max(0, math.ceil(x1 - w)), max(0, math.ceil(y1 - h))
    if left or top or right or bottom:
        mode = "edge" if pad == "edge" else "constant"
        image = np.pad(image, ((top, bottom), (left, right)), mode=mode)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    out = pil.resize((size, size), Image.Resampling.BILINEAR, box=(x0 + left, y0 + top, x1 + left, y1 + top))
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


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
    return path.parent / CACHE_DIR / f"{path.stem}-{options['size']}-{options['crop']}-{h.hexdigest()[:20]}.npz"


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


def _check_options(size, crop, max_items, margin, pad) -> None:
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
) -> KeypointDataset:
    """Load the keypoint annotations of ``json_path`` with images under ``image_dir``.

    ``crop``: ``"none"`` resizes the whole image to ``size x size`` (x and y scale separately
    if it is not square); ``"bbox"`` takes the square around each annotation (see
    :func:`source_box`, ``margin`` each side, ``pad`` where it leaves the image); ``"auto"``
    is none for an image that is already ``size x size`` and holds one annotation, else bbox.
    ``max_items``: keep the first so many samples (in file order). ``category``: the name or
    id of the keypoint category when the file has several with different keypoints.
    Labelled keypoints that fall outside the input frame become unlabelled (flag 0).
    """
    _check_options(size, crop, max_items, margin, pad)
    path, image_dir = Path(json_path), Path(image_dir)
    raw, data = _read_json(path)
    cat_ids, cat = _pick_categories(path, data["categories"], category)
    names = [str(n) for n in cat["keypoints"]]
    k = len(names)
    skeleton = [tuple(int(a) for a in pair) for pair in cat.get("skeleton") or [] if isinstance(pair, list) and len(pair) == 2]
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such image folder (for {path})")
    items, per_image = _items(path, data, image_dir, cat_ids, k)
    if not items:
        raise DataError(f"{path}: no annotation with a labelled keypoint (of {sum(per_image.values())} with keypoints)")
    items = items[:max_items]

    options = {"size": int(size), "crop": crop, "margin": float(margin), "pad": pad, "category": category, "max_items": max_items}
    cache_file = _cache_file(path, items, options, raw) if cache else None
    arrays = _read_cache(cache_file)
    if arrays is None:
        arrays = _load_arrays(path, items, per_image, int(size), crop, float(margin), pad)
        if cache:
            _write_cache(cache_file, arrays)
    return KeypointDataset(keypoint_names=names, skeleton=skeleton, source=str(path), **arrays)


def _load_arrays(path, items, per_image, size, crop, margin, pad) -> dict:
    n, k = len(items), len(items[0].flags)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    keypoints = np.zeros((n, k, 2), dtype=np.float32)
    flags = np.zeros((n, k), dtype=np.int8)
    decoded: dict[Path, np.ndarray] = {}  # images holding several annotations are decoded once
    for i, it in enumerate(items):
        img = decoded.get(it.file)
        if img is None:
            img = decoded[it.file] = _decode(it, path)
        h, w = img.shape
        mode = crop
        if mode == "auto":
            mode = "none" if (w, h) == (size, size) and per_image[it.image_id] == 1 else "bbox"
        x0, y0, x1, y1 = source_box(it.xy, it.flags, it.bbox, w, h, mode, margin)
        images[i, 0] = resample(img, (x0, y0, x1, y1), size, pad)
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
