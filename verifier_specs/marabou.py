"""Cross-check backend: Marabou (maraboupy), one query per disjunct, in a subprocess.

The backend runs ``python -m verifier_specs.marabou ONNX VNNLIB TIMEOUT OUT.json`` with a
hard limit of ``timeout + slack`` seconds (Marabou can hang or crash inside C++; the
process group is killed by id). The worker:

1. reads the property with usnprune's VNNLIB reader;
2. adapts the ONNX graph to what Marabou's reader accepts, without changing the function:
   ``Sub(a, b)`` of two computed tensors becomes ``Add(a, Mul(b, -1))`` (Marabou's Sub
   only takes a constant second operand). It refuses graphs where one tensor feeds both a
   Relu and an Add/Sub: Marabou's reader answers wrongly on that fan-out;
3. runs one query per disjunct (its input box and its rows ``A y <= b``): the property is
   ``unsat`` only if every disjunct is, ``sat`` as soon as one is (with Marabou's input
   values as the counterexample, which the driver replays). Strict rows are posed
   non-strictly, which can only turn an ``unsat`` into a ``sat`` that then fails replay,
   never the reverse.

Marabou's ONNX reader has no AveragePool; such graphs come back as ``error`` naming what
failed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from usnprune.config import from_dict, require
from usnprune.process import run_limited, tail
from usnprune.verifier_specs.base import Backend, Instance, Verdict, package_version, require_module, timed


@dataclasses.dataclass
class MarabouOptions:
    slack: float = 10.0
    verbosity: int = 0
    python: str = ""  # interpreter with maraboupy installed; empty: this one
    profile_name: str = "marabou"

    def check(self, where: str = "marabou") -> None:
        require(0 <= self.slack <= 3600, f"{where}.slack", f"must be in [0, 3600] seconds, got {self.slack}")
        require(0 <= self.verbosity <= 3, f"{where}.verbosity", f"must be in [0, 3], got {self.verbosity}")


class MarabouBackend(Backend):
    name = "marabou"
    vnnlib_versions = ("1.0", "2.0")  # its worker reads the query with usnprune.export.vnnlib

    def __init__(self, profile: dict | None = None, **options) -> None:
        super().__init__(profile, **options)
        self.options = from_dict(MarabouOptions, self.profile, where=f"profile {self.profile.get('profile_name', 'marabou')}")

    def version(self) -> str:
        return package_version("maraboupy")

    def check_available(self) -> None:
        if not self.options.python:  # a separate interpreter is checked when it runs
            require_module("maraboupy", "pip install usnprune[crosscheck]")

    def verify(self, instance: Instance) -> Verdict:
        done = timed(time.monotonic())
        if missing := instance.missing():
            return done("error", missing)
        with tempfile.TemporaryDirectory(prefix="usnprune-marabou-") as tmp:
            out = Path(tmp) / "result.json"
            cmd = [self.options.python or sys.executable, "-m", "usnprune.verifier_specs.marabou",
                   str(instance.onnx_path.resolve()), str(instance.vnnlib_path.resolve()),
                   repr(float(instance.timeout)), str(out), str(self.options.verbosity)]
            # ``python`` (default: this one) must have usnprune installed (docs/verifiers.md)
            proc = run_limited(cmd, float(instance.timeout) + self.options.slack, cwd=tmp)
            if proc.killed:
                return done("timeout", f"killed after the hard limit of {instance.timeout + self.options.slack:g} s")
            if not out.is_file():
                return done("error", f"marabou worker wrote no result (exit {proc.returncode}): "
                                     f"{tail(proc.stderr) or tail(proc.stdout)}")
            res = json.loads(out.read_text())
            x = tuple(res["x"]) if res.get("x") is not None else None
            return done(res["status"], res.get("message", ""), x)


# ---- the worker (runs in the subprocess) ----------------------------------------------


def marabou_compatible(model):
    """``model`` with ``Sub(tensor, tensor)`` rewritten as ``Add(a, Mul(b, -1))``; raises
    ValueError on the Relu + Add/Sub fan-out Marabou misreads."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    nodes = []
    neg_one = "__marabou_neg_one"
    for n in g.node:
        if n.op_type == "Sub" and all(t not in consts for t in n.input):
            a, b = n.input
            if neg_one not in consts:
                g.initializer.append(numpy_helper.from_array(np.array(-1.0, dtype=np.float32), neg_one))
                consts.add(neg_one)
            nodes.append(helper.make_node("Mul", [b, neg_one], [b + "__neg"], name=(n.name or b) + "__neg"))
            nodes.append(helper.make_node("Add", [a, b + "__neg"], list(n.output), name=n.name))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    consumers: dict[str, set] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, set()).add(n.op_type)
    for t, ops in consumers.items():
        if "Relu" in ops and ops & {"Add", "Sub"}:
            raise ValueError(f"tensor {t!r} feeds both a Relu and an Add/Sub, which Marabou's ONNX reader misreads")
    return m


def _solve(onnx_path: str, vnnlib_path: str, timeout: float, verbosity: int) -> dict:
    import onnx
    from maraboupy import Marabou

    from usnprune.export.vnnlib import VnnlibError, parse_file

    t0 = time.monotonic()
    try:
        prop = parse_file(vnnlib_path)
    except VnnlibError as e:
        return {"status": "error", "message": str(e)}
    try:
        model = marabou_compatible(onnx.load(onnx_path))
    except ValueError as e:
        return {"status": "error", "message": str(e)}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        onnx.save(model, path)
        for k, d in enumerate(prop.disjuncts):
            if np.any(d.lower > d.upper):
                continue
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                return {"status": "timeout", "message": f"time ran out before disjunct {k}"}
            try:
                net = Marabou.read_onnx(path)
            except Exception as e:  # its reader raises assertions and NotImplementedError alike
                return {"status": "error",
                        "message": f"Marabou cannot read the model: {type(e).__name__}: {str(e)[:200]}"}
            xin = np.asarray(net.inputVars[0]).reshape(-1)
            yout = np.asarray(net.outputVars[0]).reshape(-1)
            if len(xin) != prop.n_inputs or len(yout) != prop.n_outputs:
                return {"status": "error", "message": f"the model has {len(xin)} inputs / {len(yout)} outputs, "
                                                      f"the property {prop.n_inputs} / {prop.n_outputs}"}
            for i, v in enumerate(xin):
                if np.isfinite(d.lower[i]):
                    net.setLowerBound(int(v), float(d.lower[i]))
                if np.isfinite(d.upper[i]):
                    net.setUpperBound(int(v), float(d.upper[i]))
            for row, rhs in zip(d.A, d.b):
                nz = np.nonzero(row)[0]
                net.addInequality([int(yout[j]) for j in nz], [float(row[j]) for j in nz], float(rhs))
            opts = Marabou.createOptions(verbosity=verbosity, timeoutInSeconds=max(1, int(np.ceil(left))))
            code, vals, _ = net.solve(options=opts, verbose=verbosity > 0)
            code = str(code).lower()
            if code == "sat":
                return {"status": "falsified", "x": [float(vals[int(v)]) for v in xin],
                        "message": f"Marabou: disjunct {k} is sat"}
            if code == "unsat":
                continue
            if code == "timeout":
                return {"status": "timeout", "message": f"Marabou timed out on disjunct {k}"}
            return {"status": "unknown", "message": f"Marabou answered {code!r} on disjunct {k}"}
    return {"status": "certified", "message": f"Marabou: all {len(prop.disjuncts)} disjuncts unsat"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    onnx_path, vnnlib_path, timeout, out = args[:4]
    verbosity = int(args[4]) if len(args) > 4 else 0
    try:
        res = _solve(onnx_path, vnnlib_path, float(timeout), verbosity)
    except Exception as e:  # report, do not lose the instance: the backend turns it into an error row
        res = {"status": "error", "message": f"{type(e).__name__}: {str(e)[:300]}"}
    tmp = out + ".tmp"
    Path(tmp).write_text(json.dumps(res))
    Path(tmp).replace(out)
    return 0


BACKEND = MarabouBackend
__all__ = ["BACKEND", "MarabouBackend", "MarabouOptions", "marabou_compatible"]

if __name__ == "__main__":
    sys.exit(main())
