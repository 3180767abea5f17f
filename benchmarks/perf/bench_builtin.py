"""Time per instance of the builtin verifier, and the same-run comparison with onnxsim's runner.

    python benchmarks/perf/bench_builtin.py                      # medium and large, briefly trained
    python benchmarks/perf/bench_builtin.py --checkpoint ck.pt   # a real usnprune checkpoint
    python benchmarks/perf/bench_builtin.py --arch medium --images 1 --onnxsim-instances 4

Instances: one ONNX per (network, image), one VNNLIB per (image, keypoint, delta), the
reference being the network's own prediction at the identity (certified stability),
eps_c = eps_b = 0.1. Without ``--checkpoint`` each architecture is trained for a few
hundred steps on the synthetic quadrilateral task of ``tests/verifier_specs/keypoint_nets``
(random weights give unrealistic bounds). onnxsim runs on a subset (it is slow), with its
own timeout; when it times out the ratio is a lower bound and is printed with ``>=``.
A small 8x8 network ("micro8") is added because onnxsim decides almost nothing on the 32x32
ones. Agreement counts instances both decide (certified, or falsified with a counterexample
that replays on onnxruntime) and answer the same.
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
sys.path.insert(0, str(ROOT / "tests" / "verifier_specs"))

import keypoint_nets  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from usnprune.export.onnx_model import run, session  # noqa: E402
from usnprune.export.vnnlib import parse_file  # noqa: E402
from usnprune.pruner.models import count_parameters, load_checkpoint  # noqa: E402
from usnprune.pruner.perturbation import Box  # noqa: E402
from usnprune.verifier_specs.base import Instance, load_backend  # noqa: E402
from usnprune.verifier_specs.replay import replay  # noqa: E402

MICRO = {"conv": [2, 4], "fc": [8], "input_size": 8, "name": "micro8"}  # small enough for onnxsim to decide


def build(folder: Path, net, tag: str, images: np.ndarray, deltas, eps: float) -> list[tuple[Instance, dict]]:
    out = []
    box = Box(eps, eps)
    for i, img in enumerate(images):
        model = keypoint_nets.instance_model(net, img)
        op = folder / f"{tag}_img{i}.onnx"
        onnx.save(model, op)
        y0 = run(session(model), box.identity())[0]
        for k in range(len(y0) // 2):
            for d in deltas:
                vp = folder / f"{tag}_img{i}_kp{k}_d{d:g}.vnnlib"
                vp.write_text(keypoint_nets.property_text((float(y0[2 * k]), float(y0[2 * k + 1])), k, len(y0), d, eps, eps))
                out.append((Instance(folder, op.name, vp.name, 0.0), {"image": i, "keypoint": k, "delta": d}))
    return out


def decided(v, inst: Instance) -> str | None:
    if v.status == "certified":
        return "certified"
    if v.status == "falsified" and v.counterexample is not None:
        if replay(inst.onnx_path, parse_file(inst.vnnlib_path), v.counterexample).ok:
            return "falsified"
    return None


SHORT = {"certified": "cert", "falsified": "fals", "timeout": "tout", "unknown": "unkn", "error": "err"}


def counts(verdicts) -> str:
    c: dict[str, int] = {}
    for v in verdicts:
        c[v.status] = c.get(v.status, 0) + 1
    return " ".join(f"{SHORT[k]}={n}" for k, n in sorted(c.items()))


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", nargs="*", default=["medium", "large"], help="registry names (ignored with --checkpoint)")
    ap.add_argument("--no-micro", action="store_true",
                    help="skip the 8x8 network on which onnxsim decides instances (for a meaningful agreement count)")
    ap.add_argument("--checkpoint", type=Path, help="a usnprune checkpoint to verify instead of briefly trained nets")
    ap.add_argument("--steps", type=int, default=300, help="training steps for the briefly trained nets")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--micro-deltas", type=float, nargs="+", default=[0.1, 0.2, 0.5],
                    help="deltas for the 8x8 network, whose keypoints move only 0.2-0.5 px")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0, help="builtin timeout per instance")
    ap.add_argument("--onnxsim-timeout", type=float, default=30.0)
    ap.add_argument("--onnxsim-instances", type=int, default=6, help="instances per network for onnxsim (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    nets = []
    if args.checkpoint:
        net, _ = load_checkpoint(args.checkpoint)
        nets.append((args.checkpoint.stem, net))
    else:
        for a in args.arch:
            t = time.monotonic()
            nets.append((a, keypoint_nets.trained_net(a, steps=args.steps, seed=args.seed)))
            print(f"trained {a} for {args.steps} steps in {time.monotonic() - t:.1f} s", flush=True)
    if not args.no_micro:
        nets.append(("micro8", keypoint_nets.trained_net(MICRO, steps=args.steps, seed=args.seed)))
    builtin = load_backend("builtin")
    onnxsim = load_backend("onnxsim") if args.onnxsim_instances else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="usnprune-bench-") as tmp:
        for tag, net in nets:
            arch = net.arch
            imgs, _ = keypoint_nets.synthetic(args.images, arch.input_size, seed=1000 + args.seed)
            if arch.in_channels > 1:
                imgs = np.repeat(imgs, arch.in_channels, axis=1)
            deltas = args.micro_deltas if tag == "micro8" else args.deltas
            insts = build(Path(tmp), net, tag, imgs, deltas, args.eps)
            verdicts = []
            for inst, _ in insts:
                inst.timeout = args.timeout
                verdicts.append(builtin.verify(inst))
            cert = [v.time for v in verdicts if v.status == "certified"]
            fals = [v.time for v in verdicts if v.status == "falsified"]
            row = {"net": tag, "params": count_parameters(net), "n": len(insts), "verdicts": counts(verdicts),
                   "mean": mean([v.time for v in verdicts]), "median": statistics.median(v.time for v in verdicts),
                   "cert": mean(cert), "fals": mean(fals), "max": max(v.time for v in verdicts),
                   "by_delta": "  ".join(f"d={d:g}: {mean([v.time for v, (_, i) in zip(verdicts, insts) if i['delta'] == d]):.3f} s"
                                         f" ({counts([v for v, (_, i) in zip(verdicts, insts) if i['delta'] == d])})"
                                         for d in deltas)}
            if onnxsim:
                # a spread of instances: every k-th one, so tight and loose deltas are both in
                step = max(1, len(insts) // args.onnxsim_instances)
                pick = list(range(0, len(insts), step))[: args.onnxsim_instances]
                theirs, agree, both, ours_t = [], 0, 0, []
                for j in pick:
                    inst = Instance(insts[j][0].root, insts[j][0].onnx, insts[j][0].vnnlib, args.onnxsim_timeout)
                    v = onnxsim.verify(inst)
                    theirs.append(v)
                    ours_t.append(verdicts[j].time)
                    a, b = decided(verdicts[j], inst), decided(v, inst)
                    if a and b:
                        both += 1
                        agree += a == b
                lower = any(v.status == "timeout" for v in theirs)
                ratio = mean([v.time for v in theirs]) / max(mean(ours_t), 1e-9)
                row.update({"os_n": len(pick), "os_verdicts": counts(theirs), "os_mean": mean([v.time for v in theirs]),
                            "ratio": f"{'>=' if lower else ''}{ratio:.0f}x", "agree": f"{agree}/{both}"})
            rows.append(row)
            print_row(row, header=len(rows) == 1)
    print("\nbuiltin: time per instance in seconds (mean over all / certified / falsified, median, max); "
          "onnxsim on a subset of the same instances with its own timeout;")
    print("ratio = onnxsim mean time / builtin mean time on that subset (>= when onnxsim timed out); "
          "agree = same answer / both decided.")
    return 0


def print_row(r: dict, header: bool) -> None:
    if header:
        print(f"\n{'net':<10} {'params':>8} {'n':>4}  {'verdicts':<22} {'mean':>6} {'cert':>6} {'fals':>6} {'median':>6} "
              f"{'max':>6} | {'onnxsim (subset)':<28} {'os mean':>7} {'ratio':>7} {'agree':>6}")
    os_part = (f"{r['os_n']:>2}: {r['os_verdicts']:<24} {r['os_mean']:>7.2f} {r['ratio']:>7} {r['agree']:>6}"
               if "os_n" in r else "(skipped)")
    print(f"{r['net']:<10} {r['params']:>8} {r['n']:>4}  {r['verdicts']:<22} {r['mean']:>6.3f} {r['cert']:>6.3f} "
          f"{r['fals']:>6.3f} {r['median']:>6.3f} {r['max']:>6.2f} | {os_part}", flush=True)
    print(f"{'':<10} by delta: {r['by_delta']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
