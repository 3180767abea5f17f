#!/usr/bin/env python3
"""Regenerate this benchmark's VNNLIB properties, instances.csv and manifest.csv.

    python generate_properties.py <seed>

Standalone (numpy and onnx only; no usnprune, no network access) and deterministic: the
seed selects which images of the folder's pool are verified (the same images for every
network), and everything else comes from files this folder holds:

* ``benchmark.json``  -- the lighting family and its k-D box, tolerances, reference,
  timeout, number of images, the networks (categories) and their ONNX file per pool image;
* ``properties.npz``  -- for every pool image: ground-truth keypoints, COCO flags, and each
  network's clean prediction (the onnxruntime output at the identity (c, b) = (1, 0)).

A property per (network, image, keypoint, delta, reference): the input box is the family's box
over its k parameters (k = 2, (c, b), for brightness_contrast); the asserted output region is
the unsafe set, the keypoint leaving the closed L-inf box of half-width delta pixels around its
reference. Reference ``gt`` (the ground truth: certified accuracy), ``prediction`` (the
network's clean prediction: certified stability), or ``both`` (one property of each per
keypoint, so one verification run yields both).

manifest.csv has one row per property. A property left out with ``skip_violated`` (already
violated at the identity, so falsified without running a verifier) keeps its row with an
empty ``instance`` and ``vnnlib``: a report still counts the keypoint in its base.

Each property is written in every VNN-LIB version the folder holds, laid out as VNN-COMP
2026 does: ``1.0/`` and ``2.0/``, each with its own instances.csv, onnx/ and vnnlib/, the
same relative paths in both (so manifest.csv, at the top, serves both). A folder written
before VNN-LIB 2.0 (no ``vnnlib_versions`` in benchmark.json) keeps its flat layout.
"""

import csv
import json
import os
import sys

import numpy as np

VNNCOMP_TOTAL_TIMEOUT = 6 * 3600  # seconds: VNN-COMP's limit for one benchmark
REFERENCES = {"gt": ["gt"], "prediction": ["prediction"], "both": ["gt", "prediction"]}
FILE_TAG = {"gt": "gt", "prediction": "pred"}  # in the VNNLIB file name


def _num(v):
    v = float(v)
    if not np.isfinite(v):
        raise ValueError("cannot write a non-finite number to VNNLIB: %r" % v)
    s = repr(v)
    return "0.0" if s == "-0.0" else s


DEFAULT_FAMILY = "brightness_contrast"


def _num2(v):
    """A VNN-LIB 2.0 float literal: the same decimal value as ``_num``, written positionally
    (the 2.0 grammar has no exponent) and always with a '.' (an integer literal does not
    type-check against float32)."""
    from decimal import Decimal

    s = format(Decimal(_num(v)), "f")
    return s if "." in s else s + ".0"


NETWORK_NAME, INPUT_NAME, OUTPUT_NAME = "net", "X", "Y"  # the ONNX graph's input and output names


def format_property_v2(n_outputs, keypoint, reference, delta, lower, upper, comments=(), input_names=None):
    """VNN-LIB 2.0 text of the same property: one float32 network ``net`` with input
    ``X [1, k]`` and output ``Y [1, n_outputs]`` (the ONNX batch dimension instantiated to 1),
    the box, and the unsafe set as one ``or`` of four comparisons. ``input_names`` as in
    :func:`format_property`."""
    if not delta > 0:
        raise ValueError("delta must be > 0, got %r" % delta)
    u, v = float(reference[0]), float(reference[1])
    iu, iv = 2 * keypoint, 2 * keypoint + 1
    lines = ["(vnnlib-version <2.0>)"]
    lines += ["; " + c if c else ";" for c in comments]
    lines += ["", "(declare-network %s" % NETWORK_NAME,
              "    (declare-input %s float32 [1,%d])" % (INPUT_NAME, len(lower)),
              "    (declare-output %s float32 [1,%d])" % (OUTPUT_NAME, n_outputs),
              ")", "", "; the (contrast, brightness) box" if input_names is None
              else "; the lighting box: (%s)" % ", ".join(input_names)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append("(assert (>= %s[0,%d] %s))" % (INPUT_NAME, i, _num2(lo)))
        lines.append("(assert (<= %s[0,%d] %s))" % (INPUT_NAME, i, _num2(hi)))
    y = lambda j: "%s[0,%d]" % (OUTPUT_NAME, j)  # noqa: E731
    lines += ["", "; unsafe: keypoint %d (%s, %s) leaves the box of half-width %s px" % (keypoint, y(iu), y(iv), _num2(delta)),
              "(assert (or",
              "    (>= %s %s)" % (y(iu), _num2(u + delta)),
              "    (<= %s %s)" % (y(iu), _num2(u - delta)),
              "    (>= %s %s)" % (y(iv), _num2(v + delta)),
              "    (<= %s %s)" % (y(iv), _num2(v - delta)),
              "))"]
    return "\n".join(lines) + "\n"


def format_property(n_outputs, keypoint, reference, delta, lower, upper, comments=(), input_names=None):
    """VNNLIB text: the k-D input box, unsafe set = keypoint outside the delta box.
    ``input_names`` (the family's parameters) only label the box in a comment."""
    if not delta > 0:
        raise ValueError("delta must be > 0, got %r" % delta)
    u, v = float(reference[0]), float(reference[1])
    iu, iv = 2 * keypoint, 2 * keypoint + 1
    lines = ["; " + c if c else ";" for c in comments]
    lines += ["(declare-const X_%d Real)" % i for i in range(len(lower))]
    lines += ["(declare-const Y_%d Real)" % j for j in range(n_outputs)]
    lines += ["", "; the (contrast, brightness) box" if input_names is None
              else "; the lighting box: (%s)" % ", ".join(input_names)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append("(assert (>= X_%d %s))" % (i, _num(lo)))
        lines.append("(assert (<= X_%d %s))" % (i, _num(hi)))
    lines += ["", "; unsafe: keypoint %d (Y_%d, Y_%d) leaves the box of half-width %s px" % (keypoint, iu, iv, _num(delta)),
              "(assert (or",
              "    (and (>= Y_%d %s))" % (iu, _num(u + delta)),
              "    (and (<= Y_%d %s))" % (iu, _num(u - delta)),
              "    (and (>= Y_%d %s))" % (iv, _num(v + delta)),
              "    (and (<= Y_%d %s))" % (iv, _num(v - delta)),
              "))"]
    return "\n".join(lines) + "\n"


FORMATS = {"1.0": format_property, "2.0": format_property_v2}


def _write(path, text, gz):
    import gzip

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    data = text.encode()
    if gz:
        with open(tmp, "wb") as f:  # mtime 0: the same seed gives byte-identical files
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
                g.write(data)
    else:
        with open(tmp, "wb") as f:
            f.write(data)
    os.replace(tmp, path)


def select_images(pool_ids, n, seed):
    """The pool positions verified for this seed (sorted), the same for every network."""
    rng = np.random.default_rng(seed)
    n = min(int(n), len(pool_ids))
    return np.sort(rng.choice(len(pool_ids), size=n, replace=False))


def generate(folder, seed):
    """Write vnnlib/, instances.csv and manifest.csv; returns the number of instances."""
    with open(os.path.join(folder, "benchmark.json")) as f:
        meta = json.load(f)
    data = np.load(os.path.join(folder, "properties.npz"))
    pool_ids = data["image_ids"]
    gt, flags = data["ground_truth"], data["flags"]
    names = meta["keypoint_names"]
    lower, upper = meta["input_lower"], meta["input_upper"]
    deltas, timeout = meta["deltas"], float(meta["timeout"])
    if meta["reference"] not in REFERENCES:
        raise ValueError("benchmark.json: reference must be one of %s, got %r" % (", ".join(REFERENCES), meta["reference"]))
    references = REFERENCES[meta["reference"]]
    gz = bool(meta.get("gzip", False))
    family = meta.get("family", DEFAULT_FAMILY)
    input_names = None if family == DEFAULT_FAMILY else meta["input_names"]
    if len(lower) != len(upper) or any(not lo <= hi for lo, hi in zip(lower, upper)):
        raise ValueError("benchmark.json: the input box is empty or malformed: %r .. %r" % (lower, upper))
    versions = meta.get("vnnlib_versions")  # absent: a flat folder from before VNN-LIB 2.0
    roots = [(v, os.path.join(folder, v)) for v in versions] if versions else [("1.0", folder)]
    chosen = select_images(pool_ids, meta["images"], seed)
    instances, manifest = [], []
    skipped_invisible = skipped_violated = 0
    for cat in meta["categories"]:
        pred = data["pred_" + cat["name"]]
        n_out = 2 * len(names)
        for p in chosen:
            image_id = int(pool_ids[p])
            onnx_rel = cat["onnx"][str(image_id)]
            for k, kname in enumerate(names):
                if flags[p, k] < meta.get("min_flag", 1):
                    skipped_invisible += 1
                    continue
                err = float(np.max(np.abs(pred[p, k] - gt[p, k])))
                for d in deltas:
                    for reference in references:
                        ref = gt[p, k] if reference == "gt" else pred[p, k]
                        violated = bool(np.max(np.abs(pred[p, k] - ref)) >= d)
                        row = {
                            "instance": "", "onnx": onnx_rel, "vnnlib": "", "category": cat["name"],
                            "network": cat["network"], "checkpoint_hash": cat.get("checkpoint_hash", ""),
                            "method": cat.get("method", ""), "sparsity": cat.get("sparsity", ""),
                            "seed": cat.get("seed", ""), "parameters": cat.get("parameters", ""),
                            "image_id": image_id, "keypoint": k, "keypoint_name": kname, "delta": d,
                            "eps_c": meta["eps_c"], "eps_b": meta["eps_b"], "family": family, "reference": reference,
                            "ref_u": float(ref[0]), "ref_v": float(ref[1]),
                            "gt_u": float(gt[p, k, 0]), "gt_v": float(gt[p, k, 1]),
                            "pred_u": float(pred[p, k, 0]), "pred_v": float(pred[p, k, 1]),
                            "clean_error_px": err, "violated_at_identity": violated, "timeout": timeout,
                        }
                        if violated and meta.get("skip_violated", False):
                            skipped_violated += 1
                            manifest.append(row)  # no instance, but the keypoint stays in the base
                            continue
                        rel = "vnnlib/%s/img%d_kp%02d_%s_d%s_%s.vnnlib" % (
                            cat["name"], image_id, k, kname, _num(d), FILE_TAG[reference])
                        rel += ".gz" if gz else ""
                        comments = [
                            "usnprune keypoint property (generate_properties.py seed %d)" % seed,
                            "network: %s  checkpoint: %s  image: %d  keypoint: %s (%d)" % (cat["name"], cat.get("checkpoint_hash", "?"), image_id, kname, k),
                            "reference: %s (%s, %s)  delta: %s px  eps_c: %s  eps_b: %s" % (reference, _num(ref[0]), _num(ref[1]), _num(d), _num(meta["eps_c"]), _num(meta["eps_b"]))
                            + ("" if input_names is None else "  family: %s" % family),
                            "toolkit: usnprune %s" % meta.get("toolkit_version", "?"),
                        ]
                        for version, root in roots:
                            text = FORMATS[version](n_out, k, ref, d, lower, upper, comments, input_names)
                            _write(os.path.join(root, rel), text, gz)
                        instances.append((onnx_rel, rel, timeout))
                        row.update({"instance": len(instances) - 1, "vnnlib": rel})
                        manifest.append(row)
    for _, root in roots:
        _write_csv(os.path.join(root, "instances.csv"), None, [list(r) for r in instances])
    fields = list(manifest[0].keys()) if manifest else ["instance"]
    _write_csv(os.path.join(folder, "manifest.csv"), fields, [[m[k] for k in fields] for m in manifest])
    total = timeout * len(instances)
    if total > VNNCOMP_TOTAL_TIMEOUT:
        sys.stderr.write("warning: %d instances x %g s = %.1f h of timeout, more than VNN-COMP's 6 h per benchmark\n"
                         % (len(instances), timeout, total / 3600))
    return {"instances": len(instances), "skipped_not_labelled": skipped_invisible,
            "skipped_violated": skipped_violated, "total_timeout_s": total}


def _write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: python generate_properties.py <seed>\n")
        return 2
    try:
        seed = int(argv[1])
    except ValueError:
        sys.stderr.write("error: the seed must be an integer, got %r\n" % argv[1])
        return 2
    folder = os.path.dirname(os.path.abspath(__file__))
    stats = generate(folder, seed)
    print("wrote %d instances (seed %d)" % (stats["instances"], seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
