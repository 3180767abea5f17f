"""The COCO-keypoints loader: round trip with the generator, crops, cache, and bad input."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from usnprune.errors import ConfigError, DataError
from usnprune.pruner.data import coco
from usnprune.pruner.data.coco import KeypointDataset, load_coco, load_split
from usnprune.pruner.data.synthetic import KEYPOINT_NAMES, SKELETON, generate

K = len(KEYPOINT_NAMES)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "ds", n_train=10, n_test=4, seed=3)


def _coco_json(root, split):
    return json.loads((root / "annotations" / f"keypoints_{split}.json").read_text())


def write_coco(folder, images, annotations, categories=None, name="ann.json"):
    """A hand-made COCO file: ``images`` maps file name -> uint8 array (H, W) or (H, W, 3)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (fname, arr) in enumerate(images.items(), start=1):
        Image.fromarray(arr).save(folder / "img" / fname)
        entries.append({"id": i, "file_name": fname, "width": arr.shape[1], "height": arr.shape[0]})
    if categories is None:
        categories = [{"id": 1, "name": "thing", "supercategory": "x", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2]]}]
    anns = [{"id": j, "category_id": 1, "iscrowd": 0, **a} for j, a in enumerate(annotations, start=1)]
    path = folder / name
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return path, folder / "img"


# ---- the synthetic round trip ---------------------------------------------------------


def test_round_trip_with_the_generator(synth):
    ds = load_split(synth, "train", 32, crop="none", cache=False)
    assert len(ds) == 10 and isinstance(ds, KeypointDataset)
    assert ds.images.shape == (10, 1, 32, 32) and ds.images.dtype == np.float32
    assert ds.keypoints.shape == (10, K, 2) and ds.keypoints.dtype == np.float32
    assert ds.flags.shape == (10, K) and ds.flags.dtype == np.int8
    assert ds.visible.dtype == bool and np.array_equal(ds.visible, ds.flags == 2)
    assert ds.keypoint_names == list(KEYPOINT_NAMES) and ds.skeleton == [tuple(p) for p in SKELETON]
    assert ds.source.endswith("keypoints_train.json")
    data = _coco_json(synth, "train")
    files = {im["id"]: im["file_name"] for im in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        kp = np.array(ann["keypoints"], dtype=np.float64).reshape(K, 3)
        assert ds.annotation_ids[i] == ann["id"] and ds.image_ids[i] == ann["image_id"]
        assert np.array_equal(ds.flags[i], kp[:, 2])
        np.testing.assert_allclose(ds.keypoints[i], kp[:, :2], atol=1e-4)
        png = np.asarray(Image.open(synth / "images/train" / files[ann["image_id"]]), dtype=np.float32) / 255
        assert np.array_equal(ds.images[i, 0], png)


def test_auto_crop_keeps_whole_synthetic_images(synth):
    auto = load_split(synth, "test", 32, cache=False)
    none = load_split(synth, "test", 32, crop="none", cache=False)
    assert np.array_equal(auto.images, none.images) and np.array_equal(auto.keypoints, none.keypoints)


def test_resizing_a_synthetic_split_scales_keypoints(synth):
    small = load_split(synth, "test", 16, crop="none", cache=False)
    full = load_split(synth, "test", 32, crop="none", cache=False)
    lab = small.labelled & full.labelled
    np.testing.assert_allclose(small.keypoints[lab], full.keypoints[lab] / 2, atol=1e-4)
    # a 2x box-like reduction: the mean level is kept
    np.testing.assert_allclose(small.images.mean(axis=(2, 3)), full.images.mean(axis=(2, 3)), atol=0.02)


def test_max_items_subset_and_to_torch(synth):
    ds = load_split(synth, "train", 32, max_items=6, cache=False)
    assert len(ds) == 6 and list(ds.annotation_ids) == [1, 2, 3, 4, 5, 6]
    sub = ds.subset([4, 1])
    assert list(sub.annotation_ids) == [5, 2] and np.array_equal(sub.images[0], ds.images[4])
    assert len(ds.subset(ds.annotation_ids > 3)) == 3
    x, y, v = sub.to_torch()
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (2, K, 2) and y.dtype == torch.float32
    assert v.dtype == torch.bool and torch.equal(v, torch.from_numpy(sub.flags == 2))


def test_cache_is_used_and_invalidated_by_a_changed_image(tmp_path):
    root = generate(tmp_path / "ds", n_train=3, n_test=1, seed=5)
    first = load_split(root, "train", 32)
    (cached,) = (root / "annotations" / coco.CACHE_DIR).glob("keypoints_train-32-auto-*.npz")
    again = load_split(root, "train", 32)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.keypoints, again.keypoints)
    # the network's channel count (gray: 1) is served by the "auto" cache: nothing new written
    gray = load_split(root, "train", 32, channels=1)
    assert np.array_equal(first.images, gray.images)
    assert [cached] == list((root / "annotations" / coco.CACHE_DIR).glob("*.npz"))
    # a changed image must not be served from the cache
    png = root / "images/train/000002.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    os.utime(png, ns=(1, 1))
    changed = load_split(root, "train", 32)
    assert changed.images[1].max() == 0 and np.array_equal(changed.images[0], first.images[0])
    # the stale entry was replaced, not kept beside the new one
    (now,) = (root / "annotations" / coco.CACHE_DIR).glob("keypoints_train-32-auto-*.npz")
    assert now != cached


# ---- crops on hand-made files ---------------------------------------------------------


def _marked_image(h=30, w=40):
    img = np.full((h, w), 120, np.uint8)
    img[10, 25] = 255  # bright marker, keypoint a
    img[20, 8] = 0  # dark marker, keypoint b
    return img


def test_bbox_crop_maps_keypoints_onto_the_same_features(tmp_path):
    kps = [25.5, 10.5, 2, 8.5, 20.5, 1, 0, 0, 0]  # pixel centres of the markers; c unlabelled
    path, imgs = write_coco(tmp_path, {"m.png": _marked_image()}, [{"image_id": 1, "keypoints": kps, "bbox": [5, 5, 25, 20]}])
    ds = load_coco(path, imgs, 64, crop="bbox", cache=False)
    # square of side 25 * 1.3 around the box centre (17.5, 15)
    side = 25 * 1.3
    x0, y0 = 17.5 - side / 2, 15 - side / 2
    expect = (np.array([[25.5, 10.5], [8.5, 20.5]]) - [x0, y0]) * 64 / side
    np.testing.assert_allclose(ds.keypoints[0, :2], expect, atol=1e-4)
    assert list(ds.flags[0]) == [2, 1, 0] and list(ds.keypoints[0, 2]) == [0, 0]
    img = ds.images[0, 0]
    for (x, y), pick in zip(expect, (np.argmax, np.argmin)):
        r, c = np.unravel_index(pick(img), img.shape)
        assert abs(c + 0.5 - x) <= 1 and abs(r + 0.5 - y) <= 1
    # sharper: the centroid of the upsampled bright marker is the keypoint (a half-pixel
    # slip in the conventions would move it by a whole output pixel)
    blob = np.clip(img - 120 / 255, 0, None)
    rows, cols = np.indices(img.shape) + 0.5
    centroid = np.array([(blob * cols).sum(), (blob * rows).sum()]) / blob.sum()
    np.testing.assert_allclose(centroid, expect[0], atol=0.1)


def test_none_crop_scales_a_non_square_image_per_axis(tmp_path):
    path, imgs = write_coco(tmp_path, {"m.png": _marked_image()}, [{"image_id": 1, "keypoints": [25.5, 10.5, 2, 8.5, 20.5, 2, 0, 0, 0]}])
    ds = load_coco(path, imgs, 20, crop="none", cache=False)
    expect = np.array([[25.5, 10.5], [8.5, 20.5]]) * [20 / 40, 20 / 30]
    np.testing.assert_allclose(ds.keypoints[0, :2], expect, atol=1e-4)
    img = ds.images[0, 0]
    for (x, y), pick in zip(expect, (np.argmax, np.argmin)):
        r, c = np.unravel_index(pick(img), img.shape)
        assert abs(c + 0.5 - x) <= 1 and abs(r + 0.5 - y) <= 1


def test_rgb_images_load_as_rgb_or_become_luma(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    gray = np.full((8, 8), 100, np.uint8)
    anns = [{"image_id": 1, "keypoints": [1, 1, 2, 2, 2, 2, 0, 0, 0]}, {"image_id": 2, "keypoints": [1, 1, 2, 2, 2, 2, 0, 0, 0]}]
    path, imgs = write_coco(tmp_path, {"red.png": rgb, "gray.png": gray}, anns)
    ds = load_coco(path, imgs, 8, crop="none", cache=False, channels=1)
    assert ds.channels == 1
    np.testing.assert_allclose(ds.images[0], 76 / 255)  # ITU-R 601: red weighs 0.299
    auto = load_coco(path, imgs, 8, crop="none", cache=False)  # one colour image: RGB for all
    assert auto.images.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(auto.images[0, 0], 1.0)
    np.testing.assert_allclose(auto.images[0, 1:], 0.0)
    np.testing.assert_allclose(auto.images[1], 100 / 255)  # grayscale repeated into R, G, B
    assert load_coco(path, imgs, 8, crop="none", cache=False, channels=3).channels == 3


@pytest.mark.parametrize("pad, corner", [("zero", 0.0), ("edge", 120 / 255)])
def test_bbox_crop_pads_outside_the_image(tmp_path, pad, corner):
    # a keypoint in the image's corner: the square around it reaches 2.5 pixels outside
    path, imgs = write_coco(tmp_path, {"m.png": _marked_image()}, [{"image_id": 1, "keypoints": [0.5, 0.5, 2, 20.5, 20.5, 2, 0, 0, 0]}])
    ds = load_coco(path, imgs, 16, crop="bbox", pad=pad, cache=False)
    assert ds.images[0, 0, 0, 0] == pytest.approx(corner, abs=1e-6)
    assert np.all(ds.keypoints[0, :2] > 0) and np.all(ds.keypoints[0, :2] < 16)


def test_auto_crops_an_image_holding_two_annotations(tmp_path):
    img = np.full((32, 32), 100, np.uint8)
    anns = [
        {"image_id": 1, "keypoints": [4, 4, 2, 10, 10, 2, 0, 0, 0]},
        {"image_id": 1, "keypoints": [20, 20, 2, 28, 28, 2, 0, 0, 0], "num_keypoints": 2},
    ]
    path, imgs = write_coco(tmp_path, {"a.png": img}, anns)
    ds = load_coco(path, imgs, 32, cache=False)
    assert len(ds) == 2 and list(ds.image_ids) == [1, 1]
    # each annotation fills its own crop, so both land at the same place
    np.testing.assert_allclose(ds.keypoints[0], ds.keypoints[1], atol=1e-4)
    assert ds.keypoints[0, 1, 0] - ds.keypoints[0, 0, 0] > 12


def test_skips_crowd_unlabelled_and_other_category_annotations(tmp_path):
    cats = [
        {"id": 1, "name": "thing", "keypoints": ["a", "b", "c"]},
        {"id": 2, "name": "background"},
    ]
    anns = [
        {"image_id": 1, "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 2]},
        {"image_id": 1, "keypoints": [0] * 9},
        {"image_id": 1, "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 2], "iscrowd": 1},
        {"image_id": 1, "category_id": 2},
    ]
    path, imgs = write_coco(tmp_path, {"a.png": np.zeros((8, 8), np.uint8)}, anns, categories=cats)
    ds = load_coco(path, imgs, 8, cache=False)
    assert list(ds.annotation_ids) == [1]


# ---- bad input ------------------------------------------------------------------------


def _good(tmp_path):
    return write_coco(tmp_path, {"a.png": np.zeros((8, 8), np.uint8)}, [{"image_id": 1, "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 1]}])


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_error_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such dataset folder"):
        load_split(tmp_path / "nope", "train", 32)


def test_error_missing_annotation_file(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match=r"keypoints_train\.json: no such annotation file"):
        load_split(tmp_path / "ds", "train", 32)


def test_error_missing_image_folder(tmp_path):
    path, _ = _good(tmp_path)
    with pytest.raises(DataError, match=r"elsewhere: no such image folder"):
        load_coco(path, tmp_path / "elsewhere", 8)


def test_error_corrupt_json(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('{"images": [\n  {"id": 1,, }]}')
    with pytest.raises(DataError, match=r"ann\.json: not valid JSON \(line 2, column 12\)"):
        load_coco(path, tmp_path, 8)


def test_error_not_a_coco_file(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="ann.json: not a COCO file"):
        load_coco(path, tmp_path, 8)
    path.write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO file: no 'annotations' list"):
        load_coco(path, tmp_path, 8)


def test_error_no_keypoints_in_categories(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["categories"][0].pop("keypoints"))
    with pytest.raises(DataError, match="not a COCO keypoints file: no category lists 'keypoints'"):
        load_coco(path, imgs, 8)


def test_error_no_keypoints_in_annotations(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["annotations"][0].pop("keypoints"))
    with pytest.raises(DataError, match="not a COCO keypoints file: no annotation of category 'thing' has 'keypoints'"):
        load_coco(path, imgs, 8)


def test_error_missing_image_file(tmp_path):
    path, imgs = _good(tmp_path)
    (imgs / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.png: image file not found \(image id 1 in .*ann\.json\)"):
        load_coco(path, imgs, 8)


@pytest.mark.parametrize("content", [b"this is not a png", "truncated"])
def test_error_corrupt_image(tmp_path, content):
    path, imgs = _good(tmp_path)
    if content == "truncated":
        big = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
        Image.fromarray(big).save(imgs / "a.png")
        content = (imgs / "a.png").read_bytes()[:300]
    (imgs / "a.png").write_bytes(content)
    with pytest.raises(DataError, match=r"a\.png: cannot read image"):
        load_coco(path, imgs, 8, cache=False)


def test_error_inconsistent_keypoint_count(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["annotations"][0].__setitem__("keypoints", [1, 1, 2, 2, 2, 2]))
    with pytest.raises(DataError, match=r"ann\.json: annotation id 1 has 6 keypoint values, expected 9 \(3 keypoints x 3\)"):
        load_coco(path, imgs, 8)


def test_error_bad_flag(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 5))
    with pytest.raises(DataError, match="annotation id 1 has a visibility flag other than 0, 1 or 2"):
        load_coco(path, imgs, 8)


def test_error_empty_after_filtering(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["annotations"][0].__setitem__("keypoints", [0] * 9))
    with pytest.raises(DataError, match=r"ann\.json: no annotation with a labelled keypoint"):
        load_coco(path, imgs, 8)


def test_error_image_size_disagrees_with_json(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["images"][0].__setitem__("width", 16))
    with pytest.raises(DataError, match=r"a\.png: is 8x8 pixels but .*ann\.json says 16x8"):
        load_coco(path, imgs, 8)


def test_error_unknown_image_id(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["annotations"][0].__setitem__("image_id", 9))
    with pytest.raises(DataError, match="annotation id 1 refers to image id 9, which is not in 'images'"):
        load_coco(path, imgs, 8)


def test_error_several_keypoint_categories(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["categories"].append({"id": 2, "name": "other", "keypoints": ["z"]}))
    with pytest.raises(DataError, match="several keypoint categories .*choose one with category="):
        load_coco(path, imgs, 8)
    assert len(load_coco(path, imgs, 8, category="thing", cache=False)) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [({"crop": "square"}, "crop"), ({"size": 0}, "size"), ({"max_items": 0}, "max_items"), ({"pad": "mirror"}, "pad")],
)
def test_bad_options(tmp_path, kwargs, match):
    path, imgs = _good(tmp_path)
    args = {"size": 8, **kwargs}
    with pytest.raises(ConfigError, match=match):
        load_coco(path, imgs, **args)


def test_error_non_integer_ids(tmp_path):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d["annotations"][0].__setitem__("image_id", "1"))
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 1\) has an 'id' or 'image_id' that is not an integer"):
        load_coco(path, imgs, 8)


@pytest.mark.parametrize("where, key, match", [
    ("annotations", "category_id", r"annotations\[0\] \(id 1\) has no 'category_id'"),
    ("annotations", "image_id", r"annotations\[0\] \(id 1\) has no 'image_id'"),
    ("annotations", "id", r"annotations\[0\] has no 'id'"),
    ("images", "file_name", r"images\[0\] \(id 1\) has no 'file_name'"),
    ("images", "id", r"images\[0\] has no 'id'"),
    ("categories", "id", r"categories\[0\] has no 'id'"),
])
def test_error_missing_fields_are_named(tmp_path, where, key, match):
    path, imgs = _good(tmp_path)
    _edit(path, lambda d: d[where][0].pop(key))
    with pytest.raises(DataError, match=match):
        load_coco(path, imgs, 8)


def test_error_category_not_in_the_file(tmp_path):
    path, imgs = _good(tmp_path)
    with pytest.raises(DataError, match=r"ann\.json: no category 'dog' \(the file has: 'thing'\)"):
        load_coco(path, imgs, 8, category="dog")
    _edit(path, lambda d: d["categories"].append({"id": 7, "name": "plain"}))
    with pytest.raises(DataError, match=r"category 'plain' lists no 'keypoints'"):
        load_coco(path, imgs, 8, category="plain")
    assert len(load_coco(path, imgs, 8, category="1", cache=False)) == 1  # an id, as the command line passes it
