"""The builtin verifier against alpha-beta-CROWN on a fixed hard set, side by side.

    python benchmarks/perf/hard_set.py --demo runs/demo/export/bench            # hard set
    python benchmarks/perf/hard_set.py --demo runs/demo/export/bench --all-demo  # + every demo instance
    python benchmarks/perf/hard_set.py --only synthetic --k 2 3 4 --repeat 2 --json out.json
    python benchmarks/perf/hard_set.py --demo BENCH --under-load 2               # per-sub-box time under load

The hard set:

* ``demo``: the demo benchmark's dense network on its *saturated* image -- the image with the
  most pixels whose ``clip(c x + b, 0, 1)`` crosses a kink inside the box (bright pixels near
  1 make the clip's ReLUs unstable in every sub-box that a fan of kink lines crosses);
* ``small``: the small preset's hardest networks, i.e. the pruned networks of the demo
  benchmark (the small preset's methods at sparsity 0.5, seed 0, same data and training) on
  that image (``--small-networks`` picks which);
* ``synthetic k=2..8``: convex ReLU networks with a hidden identity, answers known exactly
  (``synthetic_nets.py``), four properties each: certified and falsified at both extremes.

Both verifiers run at one thread each (builtin ``threads: 1``; alpha-beta-CROWN's
``OMP_NUM_THREADS=1``, its input-split profile ``abcrown``, one process for all instances,
its own per-instance time, start-up excluded). For every instance: the verdicts, whether
they agree (and with the known answer), builtin's sub-boxes and time per sub-box. Every
certified answer of either verifier is attacked with dense sampling through onnxruntime; a
refuted certificate is reported loudly. Printed at the end: solved counts, the ratio of
summed times (abcrown / builtin) and the ratio of medians, per set and over everything, and
the machine's load average during each pass. ``--under-load N`` adds a builtin pass with N
busy processes (started and stopped by this script, by process id) and compares the time
per sub-box with the pass alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import synthetic_nets  # noqa: E402
from usnprune.export.onnx_model import session  # noqa: E402
from usnprune.export.vnnlib import parse_file  # noqa: E402
from usnprune.verifier_specs.base import Instance, load_backend  # noqa: E402
from usnprune.verifier_specs.replay import replay  # noqa: E402

BOXES = re.compile(r"(\d+) sub-boxes")


# ---- the instances ----------------------------------------------------------------------


def saturated_image(bench: Path, network: str) -> str:
    """The image id of ``network`` whose clip kinks cross the box at the most pixels."""
    rows = [r for r in csv.DictReader(open(bench / "manifest.csv")) if r["network"] == network]
    if not rows:
        raise SystemExit(f"{bench}/manifest.csv has no network {network!r}")
    best, score = None, -1
    for onnx_rel in sorted({r["onnx"] for r in rows}):
        r = next(r for r in rows if r["onnx"] == onnx_rel)
        ec, eb = float(r["eps_c"]), float(r["eps_b"])
        m = onnx.load(str(bench / onnx_rel))
        x = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "front_W")[0].astype(np.float64)
        lo = np.minimum((1 - ec) * x, (1 + ec) * x) - eb
        hi = np.maximum((1 - ec) * x, (1 + ec) * x) + eb
        s = int(((lo < 0) & (hi > 0)).sum() + ((lo < 1) & (hi > 1)).sum())
        if s > score:
            best, score = r["image_id"], s
    return best


def demo_instances(bench: Path, networks: list[str], tag: str, image: str | None) -> list[dict]:
    rows = list(csv.DictReader(open(bench / "manifest.csv")))
    out = []
    for net in networks:
        img = image or saturated_image(bench, networks[0])
        for r in rows:
            if r["network"] == net and r["image_id"] == img:
                out.append({"root": str(bench), "onnx": r["onnx"], "vnnlib": r["vnnlib"], "expected": None,
                            "set": tag, "timeout": float(r["timeout"])})
    return out


def all_demo(bench: Path) -> list[dict]:
    return [{"root": str(bench), "onnx": r["onnx"], "vnnlib": r["vnnlib"], "expected": None, "set": "demo (all)",
             "timeout": float(r["timeout"])} for r in csv.DictReader(open(bench / "manifest.csv"))]


def synthetic(folder: Path, ks: list[int], seeds: int, margin: float, timeout: float) -> list[dict]:
    out = []
    for k in ks:
        for s in range(seeds):
            for inst in synthetic_nets.write(folder, k, s, margin):
                out.append({**inst, "root": str(folder), "timeout": timeout})
    return out


# ---- running ----------------------------------------------------------------------------


def _burn(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x += 1


def run_builtin(insts: list[dict], options: dict) -> list[dict]:
    backend = load_backend("builtin", **{"threads": 1, **options})  # --option threads=N overrides
    out = []
    for inst in insts:
        v = backend.verify(Instance(Path(inst["root"]), inst["onnx"], inst["vnnlib"], inst["timeout"]))
        m = BOXES.search(v.message or "")
        out.append({"status": v.status, "time": v.time, "boxes": int(m[1]) if m else None, "x": v.counterexample,
                    "message": v.message})
        print(f"  builtin {inst['vnnlib']:<60} {v.status:<9} {v.time:7.3f} s  {v.message[:70]}", flush=True)
    return out


_BEFORE_WORKER = r"""
import json, re, sys
tree, opts, insts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
for mod in list(sys.modules.values()):  # an editable install: point its finder at the old tree
    mapping = getattr(mod, "MAPPING", None)
    if isinstance(mapping, dict) and "usnprune" in mapping:
        for k in mapping:
            mapping[k] = tree + ("/usnprune" if k == "usnprune" else "/" + k.split(".", 1)[1])
from pathlib import Path
from usnprune.verifier_specs.base import Instance, load_backend
import usnprune
assert usnprune.__file__.startswith(tree), usnprune.__file__
b = load_backend("builtin", **opts)
for inst in insts:
    v = b.verify(Instance(Path(inst["root"]), inst["onnx"], inst["vnnlib"], inst["timeout"]))
    m = re.search(r"(\d+) sub-boxes", v.message or "")
    x = None if v.counterexample is None else [float(t) for t in v.counterexample]
    print("ROW " + json.dumps({"status": v.status, "time": v.time, "boxes": int(m[1]) if m else None, "x": x,
                               "message": v.message}), flush=True)
"""


def run_before(insts: list[dict], rev: str, options: dict) -> list[dict]:
    """The builtin of an older commit (``git archive`` of ``rev`` into a temporary folder),
    in a subprocess whose editable usnprune is pointed at it."""
    import subprocess

    tree = Path(tempfile.mkdtemp(prefix="usnprune-before-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    slim = [{k: inst[k] for k in ("root", "onnx", "vnnlib", "timeout")} for inst in insts]
    proc = subprocess.Popen([sys.executable, "-c", _BEFORE_WORKER, str(tree), json.dumps({"threads": 1, **options}),
                             json.dumps(slim)], stdout=subprocess.PIPE, text=True, cwd=str(tree))
    out = []
    for line in proc.stdout:
        if line.startswith("ROW "):
            r = json.loads(line[4:])
            out.append(r)
            inst = insts[len(out) - 1]
            print(f"  before  {inst['vnnlib']:<60} {r['status']:<9} {r['time']:7.3f} s  {r['message'][:70]}",
                  flush=True)
    proc.wait()
    import shutil

    shutil.rmtree(tree, ignore_errors=True)  # the temporary folder made above
    out += [{"status": "error", "time": inst["timeout"], "boxes": None, "x": None, "message": "worker died"}
            for inst in insts[len(out):]]
    return out


def run_abcrown(insts: list[dict]) -> list[dict] | None:
    backend = load_backend("abcrown")
    try:
        backend.check_available()
    except Exception as e:  # unconfigured or broken: the comparison is skipped, said once
        print(f"alpha-beta-CROWN skipped: {e}")
        return None
    got: dict[int, dict] = {}
    by_key = {}
    staged = []
    for i, inst in enumerate(insts):
        x = Instance(Path(inst["root"]), inst["onnx"], inst["vnnlib"], inst["timeout"])
        by_key[id(x)] = i
        staged.append(x)

    def on_result(x, v):
        i = by_key[id(x)]
        got[i] = {"status": v.status, "time": v.time, "x": v.counterexample, "message": v.message}
        print(f"  abcrown {insts[i]['vnnlib']:<60} {v.status:<9} {v.time:7.3f} s  {v.message[:70]}", flush=True)

    # one process per ONNX-file group is what the driver does; here: one process per set
    for tag in dict.fromkeys(inst["set"] for inst in insts):
        backend.run([x for x, inst in zip(staged, insts) if inst["set"] == tag], on_result)
    return [got.get(i, {"status": "error", "time": inst["timeout"], "x": None, "message": "no result"})
            for i, inst in enumerate(insts)]


def decided(r: dict, inst: dict) -> str | None:
    if r["status"] == "certified":
        return "certified"
    if r["status"] == "falsified" and r["x"] is not None:
        if replay(Path(inst["root"]) / inst["onnx"], parse_file(Path(inst["root"]) / inst["vnnlib"]), r["x"]).ok:
            return "falsified"
    return None


def refuted(inst: dict, n: int = 20000) -> bool:
    """Dense sampling of the input box through onnxruntime: does any point violate it?"""
    prop = parse_file(Path(inst["root"]) / inst["vnnlib"])
    sess = session(str(Path(inst["root"]) / inst["onnx"]))
    rng = np.random.default_rng(0)
    for d in prop.disjuncts:
        k = len(d.lower)
        pts = [rng.uniform(d.lower, d.upper, size=(n, k))]
        if k <= 2:
            axes = [np.linspace(d.lower[i], d.upper[i], 101) for i in range(k)]
            pts.append(np.array(np.meshgrid(*axes)).reshape(k, -1).T)
        elif k <= 10:
            pts.append(np.array(np.meshgrid(*zip(d.lower, d.upper))).reshape(k, -1).T)  # the corners
        x = np.concatenate(pts)
        y = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 4096].astype(np.float32)})[0]
                            .reshape(len(x[i:i + 4096]), -1) for i in range(0, len(x), 4096)]).astype(np.float64)
        for dd in prop.disjuncts:
            if np.any(dd.contains(x) & dd.holds(y)):
                return True
    return False


# ---- reporting --------------------------------------------------------------------------


def _ratio(a: list[float], b: list[float], f) -> float:
    return f(a) / max(f(b), 1e-9) if a and b else float("nan")


def summarize(insts, ours, theirs, label: str) -> dict:
    n = len(insts)
    solved_b = sum(r["status"] in ("certified", "falsified") for r in ours)
    row = {"set": label, "n": n, "builtin_solved": solved_b, "builtin_sum": sum(r["time"] for r in ours),
           "builtin_median": statistics.median(r["time"] for r in ours)}
    cert = [r for r in ours if r["status"] == "certified" and r["boxes"]]
    row["builtin_boxes_per_certified"] = statistics.mean(r["boxes"] for r in cert) if cert else float("nan")
    row["builtin_ms_per_box"] = (1000 * sum(r["time"] for r in cert) / max(1, sum(r["boxes"] for r in cert))
                                 if cert else float("nan"))
    if theirs is not None:
        row["abcrown_solved"] = sum(r["status"] in ("certified", "falsified") for r in theirs)
        row["abcrown_sum"] = sum(r["time"] for r in theirs)
        row["abcrown_median"] = statistics.median(r["time"] for r in theirs)
        row["ratio_sum"] = _ratio([r["time"] for r in theirs], [r["time"] for r in ours], sum)
        row["ratio_median"] = _ratio([r["time"] for r in theirs], [r["time"] for r in ours], statistics.median)
        row["abcrown_only"] = sum(t["status"] in ("certified", "falsified") and o["status"] not in ("certified", "falsified")
                                  for o, t in zip(ours, theirs))
    return row


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'set':<22} {'n':>4} {'builtin':>8} {'sum s':>8} {'median':>7} {'boxes/cert':>10} {'ms/box':>7} | "
          f"{'abcrown':>7} {'sum s':>8} {'median':>7} | {'sum ratio':>9} {'med ratio':>9} {'abc only':>8}")
    for r in rows:
        abc = (f"{r['abcrown_solved']:>7} {r['abcrown_sum']:>8.2f} {r['abcrown_median']:>7.3f} | "
               f"{r['ratio_sum']:>8.1f}x {r['ratio_median']:>8.1f}x {r['abcrown_only']:>8}" if "abcrown_sum" in r
               else "(alpha-beta-CROWN not run)")
        print(f"{r['set']:<22} {r['n']:>4} {r['builtin_solved']:>8} {r['builtin_sum']:>8.2f} {r['builtin_median']:>7.3f} "
              f"{r['builtin_boxes_per_certified']:>10.1f} {r['builtin_ms_per_box']:>7.2f} | {abc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, help="the demo's benchmark folder (runs/demo/export/bench)")
    ap.add_argument("--dense", default="dense-seed0", help="the demo's dense network")
    ap.add_argument("--small-networks", nargs="*", default=["usn_w-0.5-seed0", "random-0.5-seed0"])
    ap.add_argument("--all-demo", action="store_true", help="also every instance of the demo benchmark")
    ap.add_argument("--only", choices=["demo", "small", "synthetic"], nargs="*")
    ap.add_argument("--k", type=int, nargs="*", default=[2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--seeds", type=int, default=1, help="synthetic networks per k")
    ap.add_argument("--margin", type=float, default=0.02, help="synthetic thresholds: this share of max - min away")
    ap.add_argument("--timeout", type=float, default=30.0, help="synthetic timeout (demo: its instances.csv)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-abcrown", action="store_true")
    ap.add_argument("--option", action="append", default=[], help="builtin option KEY=VALUE (YAML value)")
    ap.add_argument("--baseline", action="append", default=[],
                    help="also run builtin with these options (KEY=VALUE), e.g. the settings before a change")
    ap.add_argument("--before", metavar="REV", help="also run the builtin of this git revision (one thread)")
    ap.add_argument("--under-load", type=int, default=0, help="also a builtin pass with N busy processes")
    ap.add_argument("--no-sampling", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, help="where to write the synthetic instances (default: a temp folder)")
    args = ap.parse_args(argv)
    import yaml

    def opts(pairs):
        return {p.split("=", 1)[0]: yaml.safe_load(p.split("=", 1)[1]) for p in pairs}

    only = set(args.only or ["demo", "small", "synthetic"])
    tmp = tempfile.TemporaryDirectory(prefix="usnprune-hard-")
    folder = args.out or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    insts: list[dict] = []
    if args.demo and "demo" in only:
        insts += demo_instances(args.demo, [args.dense], "demo dense saturated", None)
    if args.demo and "small" in only:
        img = saturated_image(args.demo, args.dense)
        insts += demo_instances(args.demo, args.small_networks, "small hardest", img)
    if "synthetic" in only:
        insts += synthetic(folder, args.k, args.seeds, args.margin, args.timeout)
    if args.demo and args.all_demo:
        insts += all_demo(args.demo)
    print(f"{len(insts)} instances; machine: {os.cpu_count()} cores, load {os.getloadavg()}", flush=True)

    passes = []
    for rep in range(args.repeat):
        record = {"repeat": rep}
        for name, o in [("builtin", opts(args.option))] + ([("baseline", opts(args.baseline))] if args.baseline else []):
            load0 = os.getloadavg()
            print(f"\n[{rep}] {name} {o}", flush=True)
            record[name] = run_builtin(insts, o)
            record[f"{name}_load"] = (load0, os.getloadavg())
        if args.before:
            load0 = os.getloadavg()
            print(f"\n[{rep}] builtin of {args.before}", flush=True)
            record["before"] = run_before(insts, args.before, {})
            record["before_load"] = (load0, os.getloadavg())
        if not args.no_abcrown:
            load0 = os.getloadavg()
            print(f"\n[{rep}] alpha-beta-CROWN", flush=True)
            record["abcrown"] = run_abcrown(insts)
            record["abcrown_load"] = (load0, os.getloadavg())
        if args.under_load:
            stop = time.monotonic() + 36000
            burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.under_load)]
            for p in burners:
                p.start()
            try:
                print(f"\n[{rep}] builtin under load ({args.under_load} busy processes)", flush=True)
                record["builtin_loaded"] = run_builtin(insts, opts(args.option))
                record["builtin_loaded_load"] = os.getloadavg()
            finally:
                for p in burners:
                    p.kill()  # by process id: only the processes started here
                    p.join()
        passes.append(record)

    # soundness: agreement, known answers, dense sampling of every certificate
    problems = []
    for rec in passes:
        for i, inst in enumerate(insts):
            answers = {name: decided(rec[name][i], inst) for name in ("builtin", "baseline", "before", "abcrown",
                                                                      "builtin_loaded") if rec.get(name)}
            known = {a for a in answers.values() if a}
            if len(known) > 1:
                problems.append(f"{inst['vnnlib']}: disagreement {answers}")
            if inst["expected"] and known and known != {inst["expected"]}:
                problems.append(f"{inst['vnnlib']}: expected {inst['expected']}, got {answers}")
            if "certified" in known and not args.no_sampling and rec["repeat"] == 0 and refuted(inst):
                problems.append(f"{inst['vnnlib']}: a certificate is REFUTED by sampling ({answers})")
    summaries = []
    for rec in passes:
        theirs = rec.get("abcrown")
        sets = list(dict.fromkeys(inst["set"] for inst in insts))
        for name in ("builtin", "baseline", "before", "builtin_loaded"):
            if not rec.get(name):
                continue
            rows = []
            for tag in sets + ["all (hard set)"]:
                idx = [i for i, inst in enumerate(insts) if inst["set"] == tag or
                       (tag == "all (hard set)" and inst["set"] != "demo (all)")]
                if not idx:
                    continue
                rows.append(summarize([insts[i] for i in idx], [rec[name][i] for i in idx],
                                      [theirs[i] for i in idx] if theirs else None, tag))
            print(f"\n== repeat {rec['repeat']}: {name} (load {rec.get(name + '_load')}), alpha-beta-CROWN "
                  f"(load {rec.get('abcrown_load')})")
            print_summary(rows)
            summaries.append({"repeat": rec["repeat"], "run": name, "rows": rows})
        if rec.get("builtin_loaded"):
            alone = [r["time"] / r["boxes"] for r in rec["builtin"] if r["boxes"] and r["status"] == "certified"]
            loaded = [r["time"] / r["boxes"] for r in rec["builtin_loaded"] if r["boxes"] and r["status"] == "certified"]
            if alone and loaded:
                print(f"per-sub-box time under load / alone (median over certified instances): "
                      f"{statistics.median(loaded) / statistics.median(alone):.2f}x")
    print("\nsoundness: " + ("no problem found (agreement, known answers, dense sampling of every certificate)"
                              if not problems else f"{len(problems)} PROBLEMS"))
    for p in problems:
        print("  " + p)
    if args.json:
        args.json.write_text(json.dumps({"instances": insts, "passes": passes, "summaries": summaries,
                                         "problems": problems}, indent=1, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
