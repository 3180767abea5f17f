"""Builtin verification time per instance on the residual registry model beside a chain CNN
of similar parameter count: the same data, images, keypoints, box, tolerance and timeout.

    python benchmarks/perf/bench_residual.py                  # res_tiny vs a chain of ~ its parameter count
    python benchmarks/perf/bench_residual.py --residual res_small --chain "{conv: [16, 32, 32], fc: [64]}" --rounds 2

Both networks are trained here on the same RGB synthetic data (32x32 by default) for the
same epochs, exported with ``export_benchmark`` into one folder per network and verified
through ``verify`` with the builtin backend on the serial executor (one instance at a time;
the time in a result row is the backend's). Rounds rotate the order of the two networks, so
a machine that is slower at one moment does not favour one of them; the table pools the
rounds. Prints, per network: parameters, instances, verdict counts, median and mean seconds
per instance, timeouts.

Measured once (defaults, ``--images 2 --rounds 2``; shared 2-core machine, load average
9-11, so treat absolute times as upper bounds; the ratio is within one run):

| network | parameters | instances | certified | falsified | timeout | unknown | median s | mean s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| res_tiny | 12,796 | 40 | 0 | 10 | 30 | 0 | 20.532 | 15.800 |
| chain | 12,676 | 40 | 22 | 18 | 0 | 0 | 1.172 | 0.992 |

The builtin decides every chain instance (median 1.2 s) and certifies no residual one
within 20 s: at a similar parameter count the residual network (MaxPool, Add of two computed
branches, wider early feature maps) is far harder for it.
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
import yaml  # noqa: E402

from usnprune.config import from_dict  # noqa: E402
from usnprune.driver.verify import verify  # noqa: E402
from usnprune.export.benchmark import ExportConfig, export_benchmark  # noqa: E402
from usnprune.pruner.data.synthetic import generate  # noqa: E402
from usnprune.pruner.models import count_parameters, load_checkpoint  # noqa: E402
from usnprune.pruner.perturbation import Box  # noqa: E402
from usnprune.pruner.train import TrainConfig, train  # noqa: E402


def trained(folder: Path, data: Path, label: str, arch, size: int, epochs: int) -> Path:
    cfg = from_dict(TrainConfig, {"data": str(data), "out": str(folder / label), "arch": arch, "input_size": size,
                                  "optim": {"epochs": epochs, "batch_size": 64},
                                  "augment": {"perturbation": {"eps_c": 0.1, "eps_b": 0.1}}})
    t = time.monotonic()
    train(cfg, log=lambda s: None)
    print(f"trained {label} ({arch}) for {epochs} epochs in {time.monotonic() - t:.0f} s", flush=True)
    return folder / label / "model.pt"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--residual", default="res_tiny")
    ap.add_argument("--chain", default="{conv: [8, 16, 16], fc: [32]}",
                    help="a chain registry name or a YAML mapping (default: 12.6k parameters at 32x32 RGB, ~ res_tiny's)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--delta", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="usnprune-residual-") as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "data", n_train=args.n_train, n_test=100, seed=0, size=args.size, channels=3,
                        progress=False)
        chain = yaml.safe_load(args.chain) if args.chain.lstrip().startswith("{") else args.chain
        nets = {args.residual: trained(tmp, data, args.residual, args.residual, args.size, args.epochs),
                "chain": trained(tmp, data, "chain", chain, args.size, args.epochs)}
        params = {a: count_parameters(load_checkpoint(c)[0]) for a, c in nets.items()}
        print(f"{args.size}x{args.size} RGB, brightness_contrast eps_c = eps_b = {args.eps}, delta {args.delta} px, "
              f"reference: prediction, timeout {args.timeout:g} s, {args.images} images", flush=True)
        names, frames = list(nets), []
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                bench, run = tmp / f"bench_{name}", tmp / f"run_{name}_{r}"
                if not bench.exists():
                    export_benchmark(ExportConfig(
                        checkpoints=[str(nets[name])], categories=["net"], data=str(data), out=str(bench),
                        perturbation=Box(args.eps, args.eps), deltas=[args.delta], images=args.images,
                        pool=args.images, timeout=args.timeout, reference="prediction"), log=lambda s: None)
                t = time.monotonic()
                verify(bench, run, executor="serial", log=lambda s: None)
                df = pd.read_csv(run / "instances.csv").assign(net=name, round=r)
                print(f"  round {r}: {name:10s} {len(df)} instances in {time.monotonic() - t:6.1f} s", flush=True)
                frames.append(df)
        df = pd.concat(frames)
        print("\n| network | parameters | instances | certified | falsified | timeout | unknown | median s | mean s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in names:
            g = df[df["net"] == name]
            c = g["verdict"].value_counts()
            print(f"| {name} | {params[name]:,} | {len(g)} | {c.get('certified', 0)} | {c.get('falsified', 0)} | "
                  f"{c.get('timeout', 0)} | {c.get('unknown', 0)} | {statistics.median(g['time']):.3f} | "
                  f"{statistics.fmean(g['time']):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
