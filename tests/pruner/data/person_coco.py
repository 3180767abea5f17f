"""A hand-made file in the shape of COCO 2017's ``person_keypoints_val2017.json``, with its
images: every top-level block and field the real file has (info, licenses, images with
coco_url/flickr_url/date_captured, annotations with segmentation polygons or crowd RLE,
num_keypoints, area, bbox, iscrowd, 17 keypoints; the person category with its skeleton),
JPEG images of different sizes, colour and one grayscale, named like COCO's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

PERSON_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]
PERSON_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                   [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# (file name, width, height, colour)
IMAGES = [("000000000139.jpg", 96, 64, True), ("000000000785.jpg", 72, 108, True), ("000000001000.jpg", 100, 75, False)]


def _person(x0: float, y0: float, w: float, h: float, visible: int = 17) -> list[float]:
    """17 keypoints laid out like a standing person inside the box; the last ``17 - visible``
    unlabelled (0, 0, 0)."""
    rel = [(0.5, 0.1), (0.45, 0.08), (0.55, 0.08), (0.4, 0.1), (0.6, 0.1), (0.35, 0.25), (0.65, 0.25), (0.3, 0.4),
           (0.7, 0.4), (0.28, 0.55), (0.72, 0.55), (0.42, 0.6), (0.58, 0.6), (0.42, 0.78), (0.58, 0.78), (0.42, 0.95),
           (0.58, 0.95)]
    out: list[float] = []
    for i, (u, v) in enumerate(rel):
        out += [round(x0 + u * w, 2), round(y0 + v * h, 2), 2 if i % 5 else 1] if i < visible else [0, 0, 0]
    return out


def write_person_file(folder: Path) -> tuple[Path, Path, dict]:
    """Writes ``annotations/person_keypoints_val2017.json`` and ``val2017/*.jpg`` under
    ``folder``; returns (json path, image folder, the JSON data). Samples expected, in file
    order: annotation ids 101, 102 (image 139), 201 (785), 301 (1000, grayscale). Skipped:
    302 (a crowd region, although it lists keypoints) and 303 (num_keypoints 0)."""
    img_dir = folder / "val2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i, (name, w, h, colour) in enumerate(IMAGES):
        arr = rng.integers(40, 90, (h, w, 3) if colour else (h, w), dtype=np.uint8)
        Image.fromarray(arr).save(img_dir / name, quality=95)
        images.append({"license": 3, "file_name": name, "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                       "height": h, "width": w, "date_captured": "2013-11-21 01:34:01",
                       "flickr_url": "http://farm9.staticflickr.com/8186/8119368305_4e622c8349_z.jpg",
                       "id": int(name.split(".")[0])})
    boxes = {101: (139, 10, 8, 20, 40, 17), 102: (139, 60, 12, 24, 44, 12), 201: (785, 20, 30, 30, 60, 17),
             301: (1000, 30, 10, 25, 55, 17), 302: (1000, 5, 5, 40, 40, 17), 303: (1000, 70, 20, 10, 20, 0)}
    annotations = []
    for aid, (image_id, x, y, w, h, vis) in boxes.items():
        crowd = aid == 302
        kps = _person(x, y, w, h, vis)
        seg = ({"counts": [int(v) for v in rng.integers(1, 30, 12)], "size": [75, 100]} if crowd
               else [[x, y, x + w, y, x + w, y + h, x, y + h]])
        annotations.append({"segmentation": seg, "num_keypoints": sum(1 for v in kps[2::3] if v > 0),
                            "area": float(w * h), "iscrowd": int(crowd), "keypoints": kps, "image_id": image_id,
                            "bbox": [float(x), float(y), float(w), float(h)], "category_id": 1, "id": aid})
    data = {
        "info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
                 "contributor": "COCO Consortium", "date_created": "2017/09/01"},
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                      "name": "Attribution-NonCommercial-ShareAlike License"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": PERSON_KEYPOINTS,
                        "skeleton": PERSON_SKELETON}],
    }
    (folder / "annotations").mkdir(exist_ok=True)
    path = folder / "annotations" / "person_keypoints_val2017.json"
    path.write_text(json.dumps(data))
    return path, img_dir, data
