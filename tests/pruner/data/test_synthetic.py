"""The synthetic generator: COCO output, determinism, visibility flags and geometry."""

import json

import numpy as np
import pytest
from PIL import Image

from usnprune.errors import ConfigError, DataError
from usnprune.pruner.data import synthetic
from usnprune.pruner.data.synthetic import KEYPOINT_NAMES, SKELETON, generate, image_rng, make_options, render_sample

K = len(KEYPOINT_NAMES)


def _json(root, split):
    return json.loads((root / "annotations" / f"keypoints_{split}.json").read_text())


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "ds", n_train=12, n_test=5, seed=7)


def test_keypoint_names_and_skeleton():
    assert 8 <= K <= 12 and len(set(KEYPOINT_NAMES)) == K
    assert synthetic.KEYPOINTS_3D.shape == (K, 3)
    for a, b in SKELETON:
        assert 1 <= a <= K and 1 <= b <= K and a != b
    # every keypoint is drawn by the skeleton
    assert {i for pair in SKELETON for i in pair} == set(range(1, K + 1))


def test_writes_a_valid_coco_keypoints_folder(dataset):
    assert (dataset / synthetic.MANIFEST).is_file()
    for split, n in (("train", 12), ("test", 5)):
        coco = _json(dataset, split)
        assert {"info", "images", "annotations", "categories"} <= set(coco)
        assert coco["info"]["seed"] == 7 and coco["info"]["size"] == 32
        assert coco["info"]["version"] == synthetic.GENERATOR_VERSION
        (cat,) = coco["categories"]
        assert {"id", "name", "supercategory", "keypoints", "skeleton"} <= set(cat)
        assert cat["keypoints"] == list(KEYPOINT_NAMES)
        assert cat["skeleton"] == [list(p) for p in SKELETON]
        assert len(coco["images"]) == len(coco["annotations"]) == n
        ids = {im["id"] for im in coco["images"]}
        for im in coco["images"]:
            assert {"id", "file_name", "width", "height"} <= set(im)
            with Image.open(dataset / "images" / split / im["file_name"]) as png:
                assert png.mode == "L" and png.size == (32, 32) == (im["width"], im["height"])
        for ann in coco["annotations"]:
            assert {"id", "image_id", "category_id", "keypoints", "num_keypoints", "bbox", "area", "iscrowd"} <= set(ann)
            assert ann["image_id"] in ids and ann["category_id"] == cat["id"] and ann["iscrowd"] == 0
            kp = np.array(ann["keypoints"], dtype=float).reshape(K, 3)
            v = kp[:, 2]
            assert set(v) <= {0, 1, 2} and ann["num_keypoints"] == np.count_nonzero(v)
            assert np.all(kp[v == 0, :2] == 0)
            assert np.all((kp[v > 0, :2] >= 0) & (kp[v > 0, :2] < 32))
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 32 and y + h <= 32 and 0 < ann["area"] <= w * h
            # labelled keypoints lie on the aircraft, hence inside its box
            lab = kp[v > 0, :2]
            # coordinates and box are rounded to 3 decimals independently
            assert np.all((lab >= np.array([x, y]) - 2e-3) & (lab <= np.array([x + w, y + h]) + 2e-3))


def test_same_seed_same_bytes_other_seed_differs(tmp_path, dataset):
    again = generate(tmp_path / "again", n_train=12, n_test=5, seed=7)
    assert _files(again) == _files(dataset)
    other = generate(tmp_path / "other", n_train=12, n_test=5, seed=8)
    a, b = _files(dataset), _files(other)
    assert a.keys() == b.keys()
    assert a["images/train/000001.png"] != b["images/train/000001.png"]
    assert a["annotations/keypoints_train.json"] != b["annotations/keypoints_train.json"]


def test_images_do_not_depend_on_dataset_length(tmp_path, dataset):
    small = generate(tmp_path / "small", n_train=3, n_test=1, seed=7)
    for name in ("000001.png", "000002.png", "000003.png"):
        assert (small / "images/train" / name).read_bytes() == (dataset / "images/train" / name).read_bytes()
    assert _json(small, "train")["annotations"] == _json(dataset, "train")["annotations"][:3]


def test_train_and_test_images_differ(dataset):
    assert (dataset / "images/train/000001.png").read_bytes() != (dataset / "images/test/000001.png").read_bytes()


def test_keypoints_outside_the_image_are_not_labelled():
    # a close, far-shifted camera pushes many keypoints out of the frame
    opt = make_options(distance=[2.0, 2.2], shift=0.5, focal=1.6)
    outside = 0
    for i in range(40):
        s = render_sample(image_rng(0, "train", i), 24, opt)
        inside = np.all((s.keypoints >= 0) & (s.keypoints < 24), axis=1)
        assert np.array_equal(s.flags == 0, ~inside)
        outside += np.count_nonzero(~inside)
    assert outside > 20


def test_visible_keypoints_lie_on_the_rendered_aircraft():
    opt = make_options(background="plain")
    # tips of the zero-thickness plates vanish when a plate is seen exactly edge-on
    on_plates = {"left_wing_tip", "right_wing_tip", "left_stab_tip", "right_stab_tip", "fin_tip"}
    shown, labelled = 0, 0
    for i in range(30):
        s = render_sample(image_rng(1, "test", i), 32, opt)
        # a plain background is one grey level: the aircraft is exactly where it is not
        bg = s.image[s.coverage == 0]
        assert np.ptp(bg) < 1e-9
        assert np.all(np.abs(s.image[s.coverage == 1] - bg[0]) > 0.05)
        on = s.coverage > 0.05
        for name, (x, y), v in zip(KEYPOINT_NAMES, s.keypoints, s.flags):
            if v == 0:
                continue
            c, r = int(x), int(y)
            # the keypoint is on the surface: its pixel or a neighbour shows the aircraft
            hit = on[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any()
            assert hit or name in on_plates, (i, name)
            shown += hit
            labelled += 1
    assert shown >= 0.98 * labelled


def test_self_occlusion_from_above_and_below():
    names = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    view = dict(pitch=0, roll=0, shift=0, distance=[3.8, 3.8], background="plain")  # all in frame
    above = make_options(elevation=[89, 89], **view)
    below = make_options(elevation=[-89, -89], **view)
    for i in range(5):
        top = render_sample(image_rng(2, "train", i), 32, above).flags
        bottom = render_sample(image_rng(2, "train", i), 32, below).flags
        for n in ("cockpit", "fin_tip", "left_wing_tip", "right_wing_tip"):
            assert top[names[n]] == 2, n
        # from below the fuselage hides the canopy and the fin; the engines hang in view
        assert bottom[names["cockpit"]] == 1 and bottom[names["fin_tip"]] == 1
        for n in ("left_engine", "right_engine", "left_wing_tip", "right_wing_tip"):
            assert bottom[names[n]] == 2, n


def test_left_is_the_aircraft_left():
    # seen from straight above with the nose pointing up the image, its left is image left
    opt = make_options(elevation=[89.9, 89.9], pitch=0, roll=0, shift=0, distance=[3.8, 3.8])
    for i in range(20):
        s = render_sample(image_rng(3, "train", i), 32, opt)
        nose, tail = s.keypoints[0], s.keypoints[KEYPOINT_NAMES.index("tail")]
        fwd = nose - tail
        for left, right in (("left_wing_tip", "right_wing_tip"), ("left_engine", "right_engine")):
            side = s.keypoints[KEYPOINT_NAMES.index(left)] - s.keypoints[KEYPOINT_NAMES.index(right)]
            # image y points down: "left of forward" is a negative cross product
            assert fwd[0] * side[1] - fwd[1] * side[0] < 0


def test_larger_sizes_render_the_same_view():
    for i in range(5):
        a = render_sample(image_rng(4, "train", i), 32)
        b = render_sample(image_rng(4, "train", i), 96)
        np.testing.assert_allclose(b.keypoints, 3 * a.keypoints, atol=1e-9)
        assert np.array_equal(a.flags, b.flags)
        down = b.coverage.reshape(32, 3, 32, 3).mean(axis=(1, 3))
        assert np.abs(down - a.coverage).mean() < 0.02


def test_generation_is_quiet(tmp_path, capsys):
    generate(tmp_path / "q", n_train=2, n_test=1)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds other files; pass --force"):
        generate(tmp_path, n_train=2, n_test=1)
    assert not (tmp_path / "images").exists()
    generate(tmp_path, n_train=2, n_test=1, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "images/train/000002.png").is_file()


def test_replaces_an_earlier_dataset_removing_only_its_own_stale_images(tmp_path):
    root = generate(tmp_path / "ds", n_train=5, n_test=2, seed=1)
    (root / "images/train/extra.png").write_bytes(b"user file")
    with pytest.raises(DataError, match="earlier synthetic dataset; pass --force"):
        generate(root, n_train=3, n_test=2, seed=2)  # nothing is replaced or removed without --force
    assert len(list((root / "images/train").iterdir())) == 6
    generate(root, n_train=3, n_test=2, seed=2, force=True)
    names = sorted(p.name for p in (root / "images/train").iterdir())
    assert names == ["000001.png", "000002.png", "000003.png", "extra.png"]
    assert _json(root, "train")["info"]["seed"] == 2 and len(_json(root, "train")["images"]) == 3


def test_an_interrupted_regeneration_leaves_the_earlier_dataset_whole(tmp_path, monkeypatch):
    root = generate(tmp_path / "ds", n_train=3, n_test=1, seed=1)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "render_sample", broken)
    with pytest.raises(KeyboardInterrupt):
        generate(root, n_train=3, n_test=1, seed=2, force=True)
    assert _json(root, "train")["info"]["seed"] == 1  # staged: the old dataset is untouched
    assert not [p for p in root.iterdir() if p.name.startswith(".usnprune-staging")]
    monkeypatch.undo()
    generate(root, n_train=3, n_test=1, seed=2, force=True)  # still recognised as ours
    assert _json(root, "train")["info"]["seed"] == 2


def test_refuses_a_file_as_output(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate(tmp_path / "f", n_train=1, n_test=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_train": 0}, "n_train: must be >= 1"),
        ({"n_test": -1}, "n_test: must be >= 0"),
        ({"size": 8}, "size: must be >= 16"),
        ({"size": 32.0}, "size: expected an integer"),
        ({"seed": -3}, "seed: must be >= 0"),
        ({"colour": "red"}, "unknown key colour"),
        ({"distance": [3, 2]}, "distance"),
        ({"background": "sky"}, "background"),
        ({"clutter": -1}, "clutter: must be in"),
        ({"channels": 2}, "channels: must be 1 \\(grayscale\\) or 3 \\(RGB\\)"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"n_train": 2, "n_test": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        generate(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_rgb_shows_the_same_views_in_colour(tmp_path, dataset):
    rgb = generate(tmp_path / "rgb", n_train=12, n_test=5, seed=7, channels=3)
    for split in ("train", "test"):
        assert _json(rgb, split)["annotations"] == _json(dataset, split)["annotations"]  # same views, same keypoints
        assert _json(rgb, split)["info"]["channels"] == 3 and _json(dataset, split)["info"]["channels"] == 1
    again = generate(tmp_path / "rgb2", n_train=12, n_test=5, seed=7, channels=3)
    assert _files(rgb) == {k: v for k, v in _files(again).items()}  # deterministic
    im = Image.open(rgb / "images/train/000001.png")
    assert im.mode == "RGB" and im.size == (32, 32)
    arr = np.stack([np.asarray(Image.open(p), dtype=float) for p in sorted((rgb / "images/train").glob("*.png"))])
    # the channels differ (tinted background and aircraft), yet each tracks the grayscale view
    assert np.abs(arr[..., 0] - arr[..., 1]).mean() > 3 and np.abs(arr[..., 1] - arr[..., 2]).mean() > 3
    gray = np.stack([np.asarray(Image.open(p), dtype=float) for p in sorted((dataset / "images/train").glob("*.png"))])
    corr = np.corrcoef(arr.mean(-1).reshape(len(arr), -1)[0], gray.reshape(len(gray), -1)[0])[0, 1]
    assert corr > 0.8
