"""Regenerate docs/img/synthetic_samples.png and synthetic_samples_rgb.png: 16 synthetic
samples (grayscale, and the same views in RGB) with their keypoints.

Run from the repository root: ``python docs/img/synthetic_samples.py``. Filled dots are
visible keypoints (v=2), hollow ones occluded (v=1); lines follow the skeleton.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from usnprune.pruner.data.coco import load_split  # noqa: E402
from usnprune.pruner.data.synthetic import generate  # noqa: E402

SCALE, GAP = 4, 2
COLOURS = [(230, 25, 75), (245, 130, 48), (60, 180, 75), (0, 130, 200), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (255, 225, 25), (0, 128, 128)]


def main(out=Path(__file__).with_suffix(".png"), channels=1):
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_split(generate(Path(tmp) / "ds", n_train=16, n_test=1, seed=0, channels=channels), "train", 32,
                        cache=False)
    w = ds.size * SCALE
    sheet = Image.new("RGB", (4 * w + 3 * GAP, 4 * w + 3 * GAP), (255, 255, 255))
    for i in range(16):
        pixels = np.round(ds.images[i].transpose(1, 2, 0) * 255).astype(np.uint8)
        tile = Image.fromarray(pixels[..., 0] if channels == 1 else pixels).resize((w, w), Image.NEAREST).convert("RGB")
        draw = ImageDraw.Draw(tile)
        xy, flags = ds.keypoints[i] * SCALE, ds.flags[i]
        for a, b in ds.skeleton:
            if flags[a - 1] and flags[b - 1]:
                draw.line([tuple(xy[a - 1]), tuple(xy[b - 1])], fill=(255, 255, 255), width=1)
        for k, ((x, y), v) in enumerate(zip(xy, flags)):
            if v:
                box = [x - 3, y - 3, x + 3, y + 3]
                draw.ellipse(box, fill=COLOURS[k] if v == 2 else None, outline=COLOURS[k])
        sheet.paste(tile, ((i % 4) * (w + GAP), (i // 4) * (w + GAP)))
    sheet.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
    main(Path(__file__).with_name("synthetic_samples_rgb.png"), channels=3)
