"""Attack every verdict of a run by sampling its k-D lighting box through onnxruntime.

    python examples/attack_certificates.py BENCH RUN [--samples 20000]

For each `certified` instance: the identity, every corner of the box (capped at 64) and
`--samples` uniform points are run through the ONNX model with onnxruntime; a point where
the property's unsafe region holds refutes the certificate (there must be none). For each
`falsified` instance: its stored counterexample (all k coordinates: the `cex` column, a JSON
list) is replayed. Prints the counts; exits 1 when a certificate is refuted or a counterexample
does not replay.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from usnprune.export.vnnlib import parse_file
from usnprune.pruner.perturbation import Box
from usnprune.verifier_specs.replay import evaluate, get_session, replay


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--samples", type=int, default=20000)
    args = ap.parse_args(argv)
    meta = json.loads((args.bench / "benchmark.json").read_text())
    box = Box(meta["eps_c"], meta["eps_b"], meta.get("family", "brightness_contrast"))
    np.testing.assert_allclose(box.lower, meta["input_lower"])
    rng = np.random.default_rng(0)
    pts = np.concatenate([box.identity(), box.corners(), box.uniform(args.samples, rng)])
    rows = pd.read_csv(args.run / "instances.csv")
    outputs, counts = {}, {"certified": 0, "refuted": 0, "falsified": 0, "replayed": 0}
    for r in rows.itertuples():
        prop = parse_file(args.bench / r.vnnlib)
        if r.verdict == "certified":
            if r.onnx not in outputs:
                outputs = {r.onnx: evaluate(get_session(str(args.bench / r.onnx)), pts)}  # one model at a time
            bad = np.zeros(len(pts), bool)
            for d in prop.disjuncts:
                bad |= d.contains(pts) & d.holds(outputs[r.onnx])
            counts["certified"] += 1
            if bad.any():
                counts["refuted"] += 1
                print(f"REFUTED: {r.onnx} {r.vnnlib} at {pts[np.flatnonzero(bad)[0]]}")
        elif r.verdict == "falsified":
            x = np.array(json.loads(r.cex), dtype=float)
            counts["falsified"] += 1
            ok = len(x) == box.k and replay(str(args.bench / r.onnx), prop, x).ok
            counts["replayed"] += int(ok)
            if not ok:
                print(f"DOES NOT REPLAY: {r.onnx} {r.vnnlib} x = {x}")
    print(f"family {box.family} (k={box.k}), {len(pts)} points per certified instance: {counts}")
    return 0 if counts["refuted"] == 0 and counts["replayed"] == counts["falsified"] else 1


if __name__ == "__main__":
    sys.exit(main())
