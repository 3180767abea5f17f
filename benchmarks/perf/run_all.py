"""Performance of every stage, in one run (ratios are what to read on a noisy machine).

    python benchmarks/perf/run_all.py                         # uses runs/demo if it exists, else trains
    python benchmarks/perf/run_all.py --dense D.pt --pruned P.pt --data DIR

Prints: USN scoring throughput ((image, perturbation) pairs per second) on the dense network;
the time of one progressive prune at the demo's size; export throughput (instances per
second) and folder size per instance; builtin verification time per instance for the dense
and the pruned network (their ratio is the speed-up pruning buys); builtin against onnxsim's
VNN-COMP runner on the same instances (their ratio, and agreement); and the peak resident
memory of each stage (each stage runs in a fresh process, so peaks do not mix).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("USNPRUNE_NO_PROGRESS", "1")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_usn(dense: str, data: str) -> dict:
    import torch

    from usnprune.pruner.data.coco import load_split
    from usnprune.pruner.importance import USNImportance, make_calibration
    from usnprune.pruner.models import load_checkpoint
    from usnprune.pruner.perturbation import Box

    torch.set_num_threads(2)
    model, _ = load_checkpoint(dense)
    ds = load_split(data, "train", model.arch.input_size)
    calib = make_calibration(ds.images, Box(0.1, 0.1), 128, 16, 0)
    imp = USNImportance()
    imp(model, make_calibration(ds.images, Box(0.1, 0.1), 8, 16, 1))  # warm-up
    t = time.perf_counter()
    imp(model, calib)
    sec = time.perf_counter() - t
    pairs = len(calib.images) * len(calib.thetas)
    t = time.perf_counter()
    USNImportance(bound_weight=0.5)(model, calib)
    sec_b = time.perf_counter() - t
    return {"pairs": pairs, "seconds": sec, "pairs_per_s": pairs / sec, "with_bound_term_s": sec_b, "peak_mb": _peak_mb()}


def stage_prune(dense: str, data: str, out: str) -> dict:
    import torch

    from usnprune.config import from_dict
    from usnprune.pruner.prune import PruneConfig, prune

    torch.set_num_threads(2)
    cfg = from_dict(PruneConfig, {"checkpoint": dense, "data": data, "out": out, "method": "usn_w", "sparsity": 0.5,
                                  "max_train": 2000, "eval_grid": 5,
                                  "schedule": {"steps": 2, "reg_epochs": 1, "finetune_epochs": 1, "final_epochs": 1}})
    t = time.perf_counter()
    rep = prune(cfg, log=lambda s: None)
    return {"seconds": time.perf_counter() - t, "epochs": 5, "train_images": 2000, "parameters": rep["parameters"],
            "peak_mb": _peak_mb()}


def stage_export(dense: str, pruned: str, data: str, out: str, images: int) -> dict:
    from usnprune.export.benchmark import ExportConfig, export_benchmark

    t = time.perf_counter()
    st = export_benchmark(ExportConfig(checkpoints=[dense, pruned], categories=["dense", "pruned"], data=data, out=out,
                                       deltas=[0.5], images=images, pool=images, timeout=60, reference="prediction"),
                          log=lambda s: None)
    sec = time.perf_counter() - t
    return {"instances": st["instances"], "onnx_models": st["onnx_models"], "seconds": sec,
            "instances_per_s": st["instances"] / sec, "bytes_per_instance": st["bytes"] / st["instances"],
            "peak_mb": _peak_mb()}


def stage_verify(bench: str, run: str, backend: str, limit_per_category: int | None, timeout: float) -> dict:
    from usnprune.driver.runfolder import load_instances
    from usnprune.verifier_specs.base import load_backend
    from usnprune.verifier_specs.trust import Checker

    insts = load_instances(bench, timeout)
    if limit_per_category:
        seen: dict[str, int] = {}
        keep = []
        for i in insts:
            cat = Path(i.onnx).parent.name
            if seen.get(cat, 0) < limit_per_category:
                keep.append(i)
                seen[cat] = seen.get(cat, 0) + 1
        insts = keep
    be = load_backend(backend)
    checker = Checker()
    rows = []
    for inst in insts:
        t = time.perf_counter()
        v = be.verify(inst)
        wall = time.perf_counter() - t
        v, _ = checker.check(inst, v)
        rows.append({"key": inst.key, "category": Path(inst.onnx).parent.name, "verdict": v.status, "wall": wall})
    return {"rows": rows, "peak_mb": _peak_mb()}


def _in_child(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _prepare(tmp: Path) -> tuple[str, str, str]:
    demo = ROOT / "runs" / "demo"
    dense = demo / "train" / "seed0" / "model.pt"
    pruned = sorted((demo / "prune").glob("usn_w-*-seed0/model.pt"))
    if dense.is_file() and pruned:
        return str(dense), str(pruned[0]), str(demo / "data")
    print("runs/demo not found: generating data and training a 'large' network briefly (slower, less realistic)")
    from usnprune.config import from_dict
    from usnprune.pruner.data.synthetic import generate
    from usnprune.pruner.train import TrainConfig, train

    generate(tmp / "data", 2000, 100, seed=0, progress=False)
    train(from_dict(TrainConfig, {"data": str(tmp / "data"), "out": str(tmp / "dense"), "arch": "large",
                                  "optim": {"epochs": 5}}), log=lambda s: None)
    return str(tmp / "dense" / "model.pt"), "", str(tmp / "data")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense")
    ap.add_argument("--pruned")
    ap.add_argument("--data")
    ap.add_argument("--images", type=int, default=4, help="images exported per network")
    ap.add_argument("--onnxsim-per-category", type=int, default=4)
    ap.add_argument("--onnxsim-timeout", type=float, default=30.0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="usnprune-perf-"))
    dense, pruned, data = (args.dense, args.pruned, args.data) if args.dense else _prepare(tmp)
    out: dict = {}
    print(f"dense: {dense}\ndata: {data}")
    out["usn"] = u = _in_child(stage_usn, dense, data)
    print(f"USN scoring: {u['pairs']} (image, perturbation) pairs in {u['seconds']:.2f} s = {u['pairs_per_s']:.0f} pairs/s "
          f"(with the bound term: {u['with_bound_term_s']:.2f} s); peak {u['peak_mb']:.0f} MB")
    out["prune"] = p = _in_child(stage_prune, dense, data, str(tmp / "pruned"))
    print(f"progressive prune (usn_w, 50%, 2 steps, {p['epochs']} epochs on {p['train_images']} images): "
          f"{p['seconds']:.1f} s; peak {p['peak_mb']:.0f} MB")
    pruned = pruned or str(tmp / "pruned" / "model.pt")
    print(f"pruned: {pruned}")
    out["export"] = e = _in_child(stage_export, dense, pruned, data, str(tmp / "bench"), args.images)
    print(f"export: {e['instances']} instances ({e['onnx_models']} ONNX models) in {e['seconds']:.1f} s = "
          f"{e['instances_per_s']:.1f} instances/s, {e['bytes_per_instance'] / 1024:.0f} KiB per instance; peak {e['peak_mb']:.0f} MB")
    vb = _in_child(stage_verify, str(tmp / "bench"), "", "builtin", None, 60.0)
    by = {}
    for r in vb["rows"]:
        by.setdefault(r["category"], []).append(r)
    for cat, rs in by.items():
        ts = [r["wall"] for r in rs]
        counts = {v: sum(r["verdict"] == v for r in rs) for v in ("certified", "falsified", "timeout", "unknown", "error")}
        print(f"builtin, {cat}: {len(rs)} instances, mean {statistics.mean(ts):.3f} s, median {statistics.median(ts):.3f} s, "
              f"max {max(ts):.2f} s; {counts}")
    speedup = statistics.mean(r["wall"] for r in by["dense"]) / statistics.mean(r["wall"] for r in by["pruned"])
    print(f"builtin dense / pruned time per instance: {speedup:.2f}x; peak {vb['peak_mb']:.0f} MB")
    out["builtin"] = {"rows": vb["rows"], "dense_over_pruned": speedup}
    vo = _in_child(stage_verify, str(tmp / "bench"), "", "onnxsim", args.onnxsim_per_category, args.onnxsim_timeout)
    mine = {r["key"]: r for r in vb["rows"]}
    ratios, agree, both = [], 0, 0
    for r in vo["rows"]:
        m = mine[r["key"]]
        ratios.append(r["wall"] / m["wall"])
        if r["verdict"] in ("certified", "falsified") and m["verdict"] in ("certified", "falsified"):
            both += 1
            agree += r["verdict"] == m["verdict"]
    timed_out = sum(r["verdict"] in ("timeout", "unknown") for r in vo["rows"])
    print(f"onnxsim runner on {len(vo['rows'])} of those instances (timeout {args.onnxsim_timeout:g} s): "
          f"time ratio onnxsim / builtin: median {statistics.median(ratios):.1f}x "
          f"({'a lower bound: ' + str(timed_out) + ' undecided' if timed_out else 'all decided'}); "
          f"{both} decided by both, {agree} agree; peak {vo['peak_mb']:.0f} MB")
    out["onnxsim"] = {"rows": vo["rows"], "median_ratio": statistics.median(ratios), "both": both, "agree": agree}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
