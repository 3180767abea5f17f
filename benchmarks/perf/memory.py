"""Peak memory of the builtin verifier on a large two-input model.

    python benchmarks/perf/memory.py                       # 5 Gemm layers 4096 wide: a 268.7 MB ONNX file
    python benchmarks/perf/memory.py --width 2048 --timeout 10
    python benchmarks/perf/memory.py --before 4894b4a      # also the builtin of an older commit

Writes the model and a property into a temporary folder, then runs one builtin verification
per pass in a fresh process (one thread) and reads that process's peak resident set
(``VmHWM`` in ``/proc/self/status``; Linux only), after reading the model (graph + onnxruntime
session) and at the end; a process that only imports what the verification imports (torch
included: the bound engine computes with it) gives the interpreter's own share. Prints the
file size, each peak, and the peaks as multiples of the file size, total and above the
interpreter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

_RUN = r"""
import json, sys, time
tree = sys.argv[1]
if tree:  # an editable install pointed at an older tree (see hard_set.py)
    for mod in list(sys.modules.values()):
        mapping = getattr(mod, "MAPPING", None)
        if isinstance(mapping, dict) and "usnprune" in mapping:
            for k in mapping:
                mapping[k] = tree + ("/usnprune" if k == "usnprune" else "/" + k.split(".", 1)[1])
import torch, onnx, onnxruntime
from pathlib import Path
from usnprune.verifier_specs.base import Instance, load_backend
out = {}
# VmHWM: this address space's peak. Not ru_maxrss, which Linux carries over from the
# forking parent through exec (it read the parent's 1.46 GB here).
def hwm():
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")) / 1024
backend = load_backend("builtin", threads=1)
if sys.argv[2] == "verify":
    folder = Path(sys.argv[3])
    t = time.monotonic()
    if hasattr(backend, "prepared"):  # reading the model: graph + session, before any bound
        backend.prepared(folder / "big.onnx")
        out["read_peak_mb"] = hwm()
    v = backend.verify(Instance(folder, "big.onnx", "p.vnnlib", float(sys.argv[4])))
    out.update(status=v.status, message=v.message, seconds=time.monotonic() - t)
out["peak_mb"] = hwm()
print("RESULT " + json.dumps(out))
"""


def make(folder: Path, width: int, layers: int) -> int:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, cur, prev = [], [], "X", 2
    for i in range(layers):
        w = (rng.standard_normal((prev, width), dtype=np.float32) / np.sqrt(prev)).astype(np.float32)
        b = (rng.standard_normal(width) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"z{i}"]),
                  helper.make_node("Relu", [f"z{i}"], [f"h{i}"])]
        cur, prev = f"h{i}", width
    inits.append(numpy_helper.from_array((rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32), "Wo"))
    nodes.append(helper.make_node("MatMul", [cur, "Wo"], ["Y"]))
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, folder / "big.onnx")
    import onnxruntime as ort

    y0 = ort.InferenceSession(str(folder / "big.onnx")).run(None, {"X": np.zeros((1, 2), np.float32)})[0][0]
    lines = ["(declare-const X_0 Real)", "(declare-const X_1 Real)"] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    lines += ["(assert (>= X_0 -0.1))", "(assert (<= X_0 0.1))", "(assert (>= X_1 -0.1))", "(assert (<= X_1 0.1))",
              f"(assert (>= Y_0 {float(y0[0]) + 50.0!r}))"]
    (folder / "p.vnnlib").write_text("\n".join(lines) + "\n")
    return (folder / "big.onnx").stat().st_size


def run(tree: str, what: str, folder: Path, timeout: float) -> dict:
    cwd = tree or tempfile.gettempdir()  # not the checkout: its usnprune/ would shadow the tree
    p = subprocess.run([sys.executable, "-c", _RUN, tree, what, str(folder), str(timeout)], capture_output=True,
                       text=True, cwd=cwd)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"the measuring process failed:\n{p.stderr[-2000:]}")
    return json.loads(line[7:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--before", metavar="REV", help="also measure the builtin of this git revision")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="usnprune-mem-") as tmp:
        folder = Path(tmp)
        size = make(folder, args.width, args.layers) / 1e6
        print(f"model: {args.layers} Gemm layers {args.width} wide, ONNX file {size:.1f} MB")
        base = run("", "imports", folder, args.timeout)["peak_mb"] * 1.048576
        passes = [("builtin (this checkout)", "")]
        if args.before:
            tree = Path(tmp) / "before"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            passes.append((f"builtin of {args.before}", str(tree)))
        print(f"interpreter with torch, onnx, onnxruntime and the builtin imported: {base:.0f} MB")
        for name, tree in passes:
            r = run(tree, "verify", folder, args.timeout)
            peak = r["peak_mb"] * 1.048576
            read = f"; after reading the model {r['read_peak_mb'] * 1.048576:.0f} MB" if "read_peak_mb" in r else ""
            print(f"{name}: {r['status']} in {r['seconds']:.1f} s ({r['message'][:60]}); peak {peak:.0f} MB = "
                  f"{peak / size:.2f}x the file, {(peak - base) / size:.2f}x above the interpreter{read}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
