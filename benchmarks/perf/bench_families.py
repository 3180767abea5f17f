"""Builtin verification time per instance for lighting families of k = 2, 3 and 6 parameters
on the same network, the same images, keypoints, tolerance and eps.

    python benchmarks/perf/bench_families.py                          # trains an RGB 'small' net first
    python benchmarks/perf/bench_families.py --checkpoint ck.pt --data DATA_FOLDER
    python benchmarks/perf/bench_families.py --rounds 2               # each family twice, order rotated

Each family gets its own benchmark folder (the same checkpoint, pool and seed, so the same
images and keypoints) exported with ``export_benchmark`` and verified through ``verify``
with the builtin backend on the serial executor (one instance at a time, the time in the
result row is the backend's). Rounds rotate the order of the families, so a slower machine
at one moment does not favour one of them; the table pools the rounds. Prints, per family:
instances, verdict counts, median and mean seconds per instance, timeouts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from usnprune.config import from_dict  # noqa: E402
from usnprune.driver.verify import verify  # noqa: E402
from usnprune.export.benchmark import ExportConfig, export_benchmark  # noqa: E402
from usnprune.pruner.data.synthetic import generate  # noqa: E402
from usnprune.pruner.models import count_parameters, load_checkpoint  # noqa: E402
from usnprune.pruner.perturbation import FAMILIES, Box  # noqa: E402
from usnprune.pruner.train import TrainConfig, train  # noqa: E402

FAMILY_ORDER = ["brightness_contrast", "channel_gain", "channel_gain_bias"]  # k = 2, 3, 6


def trained(folder: Path, arch: str, epochs: int) -> tuple[Path, Path]:
    data = generate(folder / "data", n_train=2000, n_test=100, seed=0, size=32, channels=3, progress=False)
    cfg = from_dict(TrainConfig, {"data": str(data), "out": str(folder / "net"), "arch": arch,
                                  "optim": {"epochs": epochs, "batch_size": 64},
                                  "augment": {"perturbation": {"eps_c": 0.1, "eps_b": 0.1, "family": "channel_gain_bias"}}})
    t = time.monotonic()
    train(cfg, log=lambda s: None)
    print(f"trained {arch} on 2000 RGB images for {epochs} epochs in {time.monotonic() - t:.0f} s", flush=True)
    return folder / "net" / "model.pt", data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="an RGB usnprune checkpoint (default: train one)")
    ap.add_argument("--data", type=Path, help="its dataset folder (with --checkpoint)")
    ap.add_argument("--arch", default="small")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--families", nargs="+", default=FAMILY_ORDER, choices=list(FAMILIES))
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="usnprune-families-") as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            ckpt, data = args.checkpoint, args.data
        else:
            ckpt, data = trained(tmp, args.arch, args.epochs)
        net, _ = load_checkpoint(ckpt)
        print(f"network: {ckpt} ({net.arch.name}, {count_parameters(net):,} parameters, {net.arch.in_channels} channels); "
              f"eps_c = eps_b = {args.eps}, delta {args.delta} px, reference: prediction, timeout {args.timeout:g} s")
        frames = []
        for r in range(args.rounds):
            order = args.families[r % len(args.families):] + args.families[:r % len(args.families)]
            for name in order:
                bench, run = tmp / f"bench_{name}", tmp / f"run_{name}_{r}"
                if not bench.exists():
                    export_benchmark(ExportConfig(
                        checkpoints=[str(ckpt)], categories=["net"], data=str(data), out=str(bench),
                        perturbation=Box.make(args.eps, args.eps, name), deltas=[args.delta], images=args.images,
                        pool=args.images, timeout=args.timeout, reference="prediction"), log=lambda s: None)
                t = time.monotonic()
                verify(bench, run, executor="serial", log=lambda s: None)
                df = pd.read_csv(run / "instances.csv").assign(family=name, round=r)
                print(f"  round {r}: {name:20s} {len(df)} instances in {time.monotonic() - t:6.1f} s", flush=True)
                frames.append(df)
        df = pd.concat(frames)
        print(f"\n| family | k | instances | certified | falsified | timeout | unknown | median s | mean s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in args.families:
            g = df[df["family"] == name]
            c = g["verdict"].value_counts()
            print(f"| {name} | {FAMILIES[name].k} | {len(g)} | {c.get('certified', 0)} | {c.get('falsified', 0)} | "
                  f"{c.get('timeout', 0)} | {c.get('unknown', 0)} | {statistics.median(g['time']):.3f} | "
                  f"{statistics.fmean(g['time']):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
