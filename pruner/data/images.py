"""Image files to network inputs: decoding (grayscale or RGB), the crop rectangle, and the
resampling that maps a rectangle of an image onto the ``S x S`` input (docs/dataset.md).

Pixels and keypoints take the same map, so a keypoint stays on its feature. Decoding
problems raise :class:`~usnprune.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from usnprune.errors import DataError

# Pillow modes that hold one grey value per pixel (everything else -- RGB, RGBA, palette,
# CMYK, YCbCr -- counts as colour).
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_color(file: Path) -> bool:
    """Whether the image file is colour (reads the header only). Unreadable files count as
    grayscale here; decoding reports them."""
    try:
        with Image.open(file) as im:
            return im.mode not in GRAY_MODES
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def decode(file: Path, channels: int, what: str) -> np.ndarray:
    """The image as float32 ``[channels, H, W]`` in [0, 1].

    ``channels=1``: colour images become ITU-R 601 luma (Pillow's ``L``); ``channels=3``:
    grayscale images are repeated into R, G and B. 16-bit grayscale is scaled by 1/65535,
    everything else by 1/255. ``what`` says where the file was named (for errors).
    """
    try:
        with Image.open(file) as im:
            im.load()
            if im.mode.startswith("I;16"):
                arr = (np.asarray(im, dtype=np.float32) / 65535.0)[None]
            elif channels == 1 or im.mode in GRAY_MODES:
                arr = (np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[None]
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    except FileNotFoundError:
        raise DataError(f"{file}: image file not found ({what})") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{file}: cannot read image: {e}") from None
    if arr.shape[0] != channels:
        arr = np.repeat(arr, channels, axis=0)
    return np.ascontiguousarray(arr)


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
    """Map ``box = (x0, y0, x1, y1)`` of ``image`` (``[H, W]`` or ``[C, H, W]``) onto
    ``size x size`` (same layout).

    Output pixel ``i`` covers source ``[x0 + i*sx, x0 + (i+1)*sx)``, ``sx = (x1 - x0) / size``,
    so a source point ``x`` lands at ``(x - x0) / sx``. Pillow's antialiased bilinear filter
    does the resampling, channel by channel; the part of the box outside the image is filled
    with the image's edge (``pad="edge"``) or zeros.
    """
    if image.ndim == 3:
        return np.stack([resample(ch, box, size, pad) for ch in image])
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
