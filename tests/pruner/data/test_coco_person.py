"""A file in the shape of COCO 2017's person_keypoints_val2017.json, read as it comes."""

import json

import numpy as np
import pytest
from PIL import Image

from usnprune.errors import DataError
from usnprune.pruner.data.coco import load_coco
from usnprune.pruner.data.images import source_box

from .person_coco import PERSON_KEYPOINTS, PERSON_SKELETON, write_person_file


@pytest.fixture
def person(tmp_path):
    return write_person_file(tmp_path)


def test_reads_the_person_keypoints_file_as_it_comes(person):
    path, img_dir, data = person
    # a bright marker on the nose of annotation 201, to follow through the crop
    nose = np.array(data["annotations"][2]["keypoints"][:2])
    im = np.asarray(Image.open(img_dir / "000000000785.jpg")).copy()
    r, c = int(nose[1]), int(nose[0])
    im[r - 1:r + 2, c - 1:c + 2] = 255
    Image.fromarray(im).save(img_dir / "000000000785.jpg", quality=95)

    ds = load_coco(path, img_dir, 64, cache=False)
    assert list(ds.annotation_ids) == [101, 102, 201, 301]  # crowd region 302 and empty 303 skipped
    assert list(ds.image_ids) == [139, 139, 785, 1000]
    assert ds.keypoint_names == PERSON_KEYPOINTS and ds.skeleton == [tuple(p) for p in PERSON_SKELETON]
    assert ds.images.shape == (4, 3, 64, 64) and ds.channels == 3  # colour JPEGs: RGB
    np.testing.assert_array_equal(ds.images[3, 0], ds.images[3, 1])  # the grayscale one, repeated
    np.testing.assert_array_equal(ds.images[3, 0], ds.images[3, 2])
    # keypoints take the crop's map: the square around bbox + keypoints, 15% margin
    anns = {a["id"]: a for a in data["annotations"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for i, aid in enumerate(ds.annotation_ids):
        a = anns[int(aid)]
        kp = np.array(a["keypoints"], dtype=float).reshape(17, 3)
        x0, y0, x1, y1 = source_box(kp[:, :2], kp[:, 2], a["bbox"], *sizes[a["image_id"]], "bbox", 0.15)
        lab = kp[:, 2] > 0
        want = (kp[lab, :2] - [x0, y0]) * 64 / (x1 - x0)
        np.testing.assert_allclose(ds.keypoints[i][lab], want, atol=1e-4)
        np.testing.assert_array_equal(ds.flags[i], kp[:, 2])
    # the marker lands on the nose keypoint
    lum = ds.images[2].mean(0)
    row, col = np.unravel_index(np.argmax(lum), lum.shape)
    assert abs(col + 0.5 - ds.keypoints[2, 0, 0]) <= 1.5 and abs(row + 0.5 - ds.keypoints[2, 0, 1]) <= 1.5
    gray = load_coco(path, img_dir, 32, cache=False, channels=1)
    assert gray.images.shape == (4, 1, 32, 32)


def test_several_categories_need_the_one_asked_for(person):
    path, img_dir, data = person
    data["categories"].append({"supercategory": "animal", "id": 18, "name": "dog", "keypoints": ["snout", "tail"]})
    data["annotations"].append({"id": 900, "image_id": 139, "category_id": 18, "iscrowd": 0,
                                "keypoints": [5, 5, 2, 9, 9, 2], "num_keypoints": 2, "bbox": [1, 1, 10, 10], "area": 100})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"several keypoint categories .*'person' \(17 keypoints\), 'dog' \(2 keypoints\)"):
        load_coco(path, img_dir, 32)
    assert list(load_coco(path, img_dir, 32, category="person", cache=False).annotation_ids) == [101, 102, 201, 301]
    dog = load_coco(path, img_dir, 32, category="dog", cache=False)
    assert dog.keypoint_names == ["snout", "tail"] and list(dog.annotation_ids) == [900]
    with pytest.raises(DataError, match=r"no category 'cat' \(the file has: 'person', 'dog'\)"):
        load_coco(path, img_dir, 32, category="cat")
