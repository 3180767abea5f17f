"""What the trust layer's sampling check costs next to the verdict, on k-input networks.

    python benchmarks/perf/trust_check.py [--inputs 5] [--hidden 48 48 48] [--seed 0] [--out DIR]

Writes a small VNN-COMP-style benchmark (one ReLU network with ``--inputs`` inputs, the box
[-1, 1]^k, properties ``Y_0 >= t`` at several thresholds t between the sampled maximum of
Y_0 and its interval-arithmetic bound, and one below the sampled maximum so that it is
falsified), runs ``usnprune verify`` on it with the builtin verifier, and prints, per
instance, the verdict time, the check time (both from the run's rows) and their ratio.
Before the fixed budget the check sampled a 21^k grid: 4,084,101 points at k = 5.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("USNPRUNE_NO_PROGRESS", "1")


def network(k: int, hidden: list[int], seed: int):
    """A random ReLU network ``[batch, k] -> [batch, 2]`` as an ONNX model, with its layers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [k, *hidden, 2]
    layers = [(rng.normal(0, 1 / np.sqrt(a), size=(a, b)).astype(np.float32),
               rng.normal(0, 0.1, size=b).astype(np.float32)) for a, b in zip(sizes[:-1], sizes[1:])]
    nodes, inits, x = [], [], "X"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "Y" if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [out if i == len(layers) - 1 else f"z{i}"]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        x = out
    graph = helper.make_graph(nodes, "kin", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model, layers


def _forward(layers, x: np.ndarray) -> np.ndarray:
    for i, (w, b) in enumerate(layers):
        x = x @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def _interval_max(layers, lo: np.ndarray, hi: np.ndarray) -> float:
    """An upper bound of Y_0 over the box (interval arithmetic)."""
    for i, (w, b) in enumerate(layers):
        w = w.astype(np.float64)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        c, r = c @ w + b, r @ np.abs(w)
        lo, hi = c - r, c + r
        if i < len(layers) - 1:
            lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
    return float(hi[0])


def vnnlib(k: int, threshold: float) -> str:
    lines = [f"; Y_0 >= {threshold!r} over the box [-1, 1]^{k} is the unsafe set"]
    lines += [f"(declare-const X_{i} Real)" for i in range(k)] + ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    for i in range(k):
        lines += [f"(assert (>= X_{i} -1.0))", f"(assert (<= X_{i} 1.0))"]
    lines.append(f"(assert (>= Y_0 {threshold!r}))")
    return "\n".join(lines) + "\n"


def make_benchmark(folder: Path, k: int = 5, hidden=(48, 48, 48), seed: int = 0, timeout: float = 60,
                   fractions=(0.002, 0.01, 0.05)) -> dict:
    """The benchmark folder; returns the thresholds by property file. ``fractions`` place
    the thresholds between the sampled maximum (0) and the interval bound (1); one more
    property (``falsified.vnnlib``) sits below the sampled maximum."""
    import onnx

    model, layers = network(k, list(hidden), seed)
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    (folder / "vnnlib").mkdir(exist_ok=True)
    onnx.save(model, folder / "onnx" / "net.onnx")
    lo, hi = -np.ones(k), np.ones(k)
    pts = np.random.default_rng(seed + 1).uniform(lo, hi, size=(200_000, k))
    ys = _forward(layers, pts)[:, 0]
    top, bound = float(ys.max()), _interval_max(layers, lo, hi)
    props = {"falsified.vnnlib": round(float(np.quantile(ys, 0.999)), 6)}
    for f in fractions:
        props[f"t{f:g}.vnnlib"] = round(top + f * (bound - top), 6)
    rows = []
    for name, t in props.items():
        (folder / "vnnlib" / name).write_text(vnnlib(k, t))
        rows.append(f"onnx/net.onnx,vnnlib/{name},{timeout:g}")
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")
    return {"thresholds": props, "sampled_max": top, "interval_bound": bound}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=5)
    ap.add_argument("--hidden", type=int, nargs="+", default=[48, 48, 48])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    ap.add_argument("--old-grid", action="store_true", help="also time the former 21^k grid on this network")
    args = ap.parse_args(argv)
    import pandas as pd

    work = Path(args.out or tempfile.mkdtemp(prefix="trust-check-"))
    bench = work / "bench"
    info = make_benchmark(bench, args.inputs, args.hidden, args.seed, args.timeout)
    run = work / "run"
    cmd = [sys.executable, "-m", "usnprune.driver.cli", "verify", str(bench), "--out", str(run), "--executor", "serial"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout.strip())
    if proc.returncode not in (0, 1):
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    df = pd.read_csv(run / "instances.csv")
    print(f"\nk = {args.inputs} inputs, hidden {args.hidden}; Y_0 sampled max {info['sampled_max']:.4f}, "
          f"interval bound {info['interval_bound']:.4f}")
    print(f"{'property':>18} {'verdict':>10} {'verdict s':>10} {'check s':>9} {'check/verdict':>14}")
    for r in df.itertuples():
        print(f"{Path(r.vnnlib).name:>18} {r.verdict:>10} {r.time:10.3f} {r.check_time:9.4f} "
              f"{r.check_time / max(r.time, 1e-9):14.1%}")
    print(f"{'total':>18} {'':>10} {df['time'].sum():10.3f} {df['check_time'].sum():9.4f} "
          f"{df['check_time'].sum() / df['time'].sum():14.1%}")
    if args.old_grid:
        import time

        from usnprune.verifier_specs.replay import evaluate, get_session

        sess = get_session(str(bench / "onnx" / "net.onnx"))
        axes = [np.linspace(-1, 1, 21)] * args.inputs
        t0 = time.perf_counter()
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, args.inputs)
        for i in range(0, len(grid), 200_000):
            evaluate(sess, grid[i:i + 200_000])
        print(f"the former 21^{args.inputs} grid: {len(grid):,} points in {time.perf_counter() - t0:.2f} s "
              f"(per instance, on this network)")
    fals = df[df["verdict"] == "falsified"]
    for r in fals.itertuples():
        print(f"counterexample of {Path(r.vnnlib).name}: {r.cex}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
