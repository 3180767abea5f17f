"""Submit-to-last-row time of a demo-sized benchmark: the slurm executor on the single-node
test Slurm (tests/driver/slurm/cluster.py) against the local executor, and whether every
instance gets the same verdict.

    python benchmarks/perf/slurm_vs_local.py --out /tmp/svl        # as root (starts the test Slurm)

The benchmark: a tiny and a small KeypointNet trained briefly on the synthetic set, 5 test
images each, 10 keypoints, tolerances 0.05 px (breaks) and 1 px (holds): 200 instances,
the size of the demo experiment's export (5 images per network). Writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("USNPRUNE_NO_PROGRESS", "1")


def build(out: Path, images: int) -> Path:
    from usnprune.config import from_dict
    from usnprune.export.benchmark import ExportConfig, export_benchmark
    from usnprune.pruner.data.synthetic import generate
    from usnprune.pruner.train import TrainConfig, train

    bench = out / "bench"
    if (bench / "instances.csv").is_file():
        return bench
    data = out / "data"
    if not (data / "annotations").exists():
        generate(data, n_train=400, n_test=40, seed=0, size=32, progress=False)
    ckpts = []
    for arch, epochs in (("tiny", 2), ("small", 3)):
        cfg = from_dict(TrainConfig, {"data": str(data), "out": str(out / f"train-{arch}"), "arch": arch, "seed": 0,
                                      "optim": {"epochs": epochs, "batch_size": 32, "lr": 3e-3}})
        if not (out / f"train-{arch}" / "model.pt").is_file():
            train(cfg, log=lambda s: None)
        ckpts.append(str(out / f"train-{arch}" / "model.pt"))
    export_benchmark(ExportConfig(checkpoints=ckpts, categories=["tiny", "small"], data=str(data), out=str(bench),
                                  deltas=[0.05, 1.0], images=images, pool=images, timeout=60,
                                  reference="prediction"), log=lambda s: None)
    return bench


def timed(bench: Path, run: Path, **kw) -> dict:
    from usnprune.driver.store import ResultStore
    from usnprune.driver.verify import verify

    said: list[tuple[float, str]] = []
    t0 = time.time()
    res = verify(bench, run, log=lambda s: (said.append((time.time(), s)), print(s, flush=True)), **kw)
    wall = time.time() - t0
    rows = ResultStore(run).rows()
    submitted = next((t for t, s in said if "submitted array" in s), t0)
    last = max(r["finished_at"] for r in rows.values())
    return {"wall_s": round(wall, 1), "submit_to_last_row_s": round(last - submitted, 1), "missing": res["missing"],
            "verdicts": {k: r["verdict"] for k, r in rows.items()},
            "verify_s_sum": round(sum(r["time"] for r in rows.values()), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="local executor workers (the machine's cores)")
    ap.add_argument("--chunk-size", type=int, default=16)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = build(args.out, args.images)

    spec = importlib.util.spec_from_file_location("cluster", REPO / "tests" / "driver" / "slurm" / "cluster.py")
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    installed = cluster.ensure_packages()
    c = cluster.Cluster().start()
    os.environ["SLURM_CONF"] = c.env["SLURM_CONF"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        local = timed(bench, args.out / f"run-local-{stamp}", executor="local", workers=args.workers,
                      chunk_size=args.chunk_size)
        slurm = timed(bench, args.out / f"run-slurm-{stamp}", executor="slurm", chunk_size=args.chunk_size,
                      executor_options={"cpus_per_task": 1, "time_min": 30})
    finally:
        c.stop()
    same = local["verdicts"] == slurm["verdicts"]
    result = {
        "instances": len(local["verdicts"]), "chunk_size": args.chunk_size, "local_workers": args.workers,
        "cpus": os.cpu_count(), "install_s": round(installed, 1), "cluster_start_s": round(c.timings["start"], 1),
        "cluster_stop_s": round(c.timings["stop"], 1),
        "local": {k: v for k, v in local.items() if k != "verdicts"},
        "slurm": {k: v for k, v in slurm.items() if k != "verdicts"},
        "same_verdicts": same,
        "verdict_counts": {v: list(local["verdicts"].values()).count(v) for v in sorted(set(local["verdicts"].values()))},
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if same and not local["missing"] and not slurm["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
