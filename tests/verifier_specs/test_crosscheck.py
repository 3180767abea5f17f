"""The builtin verifier against two independent verifiers, and those backends themselves.

onnxsim's runner (subprocess) and Marabou (maraboupy, subprocess) answer the same instances
as the builtin: on every instance both decide -- ``certified``, or ``falsified`` with a
counterexample that replays on onnxruntime -- they must agree. Networks are small (8x8
inputs) because both cross-checkers are exact-ish and slow: onnxsim splits ReLUs before
inputs and Marabou solves an SMT problem per disjunct.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import keypoint_nets
import numpy as np
import onnx
import pytest
from onnx import helper

from usnprune.export.onnx_model import run, session
from usnprune.export.vnnlib import parse_file
from usnprune.pruner.perturbation import Box
from usnprune.verifier_specs.base import Instance, load_backend
from usnprune.verifier_specs.marabou import marabou_compatible
from usnprune.verifier_specs.onnxsim_runner import parse_results
from usnprune.verifier_specs.replay import replay

TIMEOUT = 30.0


def decided(v, op: Path, vp: Path) -> str | None:
    """certified / falsified (only if it replays) / None."""
    if v.status == "certified":
        return "certified"
    if v.status == "falsified" and v.counterexample is not None and replay(op, parse_file(vp), v.counterexample).ok:
        return "falsified"
    return None


@pytest.fixture(scope="module")
def small_instances(tmp_path_factory):
    """A trained 8x8 conv net and an 8x8 MLP; three keypoints; tolerances around the shift."""
    folder = tmp_path_factory.mktemp("cross")
    out = []
    archs = {"conv": {"conv": [2, 4], "fc": [8], "input_size": 8}, "mlp": {"conv": [], "fc": [16], "input_size": 8}}
    for name, arch in archs.items():
        net = keypoint_nets.trained_net(arch, steps=200, seed=4)
        img = keypoint_nets.synthetic(1, 8, seed=11)[0][0]
        model = keypoint_nets.instance_model(net, img)
        op = folder / f"{name}.onnx"
        onnx.save(model, op)
        y0 = run(session(model), Box().identity())[0]
        grid = run(session(model), Box().grid(41))
        for k in range(3):
            shift = float(np.abs(grid[:, 2 * k:2 * k + 2] - y0[2 * k:2 * k + 2]).max())
            for rel in (0.5, 1.02, 2.0):
                vp = folder / f"{name}_kp{k}_{rel:g}.vnnlib"
                vp.write_text(keypoint_nets.property_text((float(y0[2 * k]), float(y0[2 * k + 1])), k, len(y0),
                                                          rel * shift))
                out.append((name, k, rel, op, vp))
    return folder, out


def _compare(folder, insts, other, workers=1):
    builtin = load_backend("builtin")
    mine = {vp: builtin.verify(Instance(folder, op.name, vp.name, TIMEOUT)) for _, _, _, op, vp in insts}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # subprocess backends: run two at once
        theirs = dict(zip([vp for *_, vp in insts],
                          pool.map(lambda i: other.verify(Instance(folder, i[3].name, i[4].name, TIMEOUT)), insts)))
    agree, both = {"certified": 0, "falsified": 0}, 0
    for _, _, _, op, vp in insts:
        a, b = decided(mine[vp], op, vp), decided(theirs[vp], op, vp)
        assert theirs[vp].status != "error", f"{other.name} on {vp.name}: {theirs[vp].message}"
        if a and b:
            both += 1
            assert a == b, f"{vp.name}: builtin {a}, {other.name} {b}"
            agree[a] += 1
    return agree, both


def test_builtin_agrees_with_marabou(small_instances):
    folder, insts = small_instances
    agree, both = _compare(folder, insts, load_backend("marabou"), workers=2)
    assert agree["certified"] >= 6 and agree["falsified"] >= 2, agree


def test_builtin_agrees_with_onnxsim(small_instances):
    folder, insts = small_instances
    # onnxsim needs 3-10 s per instance here: the conv net's tight and loose tolerances
    subset = [i for i in insts if i[0] == "conv" and i[1] < 2 and i[2] != 1.02]
    agree, both = _compare(folder, subset, load_backend("onnxsim"), workers=2)
    assert agree["certified"] >= 1 and agree["falsified"] >= 1, agree


def test_onnxsim_results_file_parsing():
    assert parse_results("unsat\n") == ("certified", None)
    assert parse_results("sat\n((X_0  0.800000011920929)\n(X_1  -0.10000000149011612)\n(Y_0  -0.48)\n)") == \
        ("falsified", (0.800000011920929, -0.10000000149011612))
    assert parse_results("sat\n(\n(X_1 0.5)\n)\n") == ("error", None)  # X_0 missing
    assert parse_results("timeout") == ("timeout", None)
    assert parse_results("unknown\n") == ("unknown", None)
    assert parse_results("") == ("error", None)
    assert parse_results("banana") == ("error", None)


def test_onnxsim_hard_limit_kills_the_process_group(small_instances):
    folder, insts = small_instances
    _, _, _, op, vp = insts[0]
    fast = load_backend("onnxsim", slack=0.0)
    v = fast.verify(Instance(folder, op.name, vp.name, 0.3))  # python + onnx imports alone take longer
    assert v.status == "timeout" and "killed" in v.message and v.time < 2.0


def test_marabou_rewrite_keeps_the_function(small_instances):
    _, insts = small_instances
    op = insts[0][3]
    model = onnx.load(op)
    rewritten = marabou_compatible(model)
    assert "Sub" not in [n.op_type for n in rewritten.graph.node]
    x = Box().grid(7)
    np.testing.assert_array_equal(run(session(model), x), run(session(rewritten), x))


def test_marabou_refuses_the_relu_add_fanout():
    g = helper.make_graph([helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Add", ["X", "r"], ["Y"])], "fan",
                          [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", 2])],
                          [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["batch", 2])])
    with pytest.raises(ValueError, match="feeds both a Relu and an Add"):
        marabou_compatible(helper.make_model(g))


def test_marabou_reports_what_it_cannot_read(tmp_path):
    """Marabou's ONNX reader has no AveragePool: an error verdict that says what failed."""
    net = keypoint_nets.random_net({"conv": [2], "fc": [4], "input_size": 8, "pool": 2}, seed=0)
    model = keypoint_nets.instance_model(net, np.zeros((1, 8, 8), dtype=np.float32))
    onnx.save(model, tmp_path / "pool.onnx")
    (tmp_path / "p.vnnlib").write_text(keypoint_nets.property_text((4.0, 4.0), 0, 16, 1.0))
    v = load_backend("marabou").verify(Instance(tmp_path, "pool.onnx", "p.vnnlib", 20))
    assert v.status == "error" and "AveragePool" in v.message


@pytest.mark.parametrize("name", ["onnxsim", "marabou"])
def test_missing_files_are_errors(name, tmp_path):
    (tmp_path / "p.vnnlib").write_text("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= Y_0 0))")
    v = load_backend(name).verify(Instance(tmp_path, "none.onnx", "p.vnnlib", 5))
    assert v.status == "error" and "none.onnx: no such ONNX file" in v.message


def test_gzip_property_through_onnxsim(small_instances, tmp_path):
    import gzip

    folder, insts = small_instances
    _, _, _, op, vp = next(i for i in insts if i[0] == "conv" and i[2] == 0.5)
    gz = tmp_path / "p.vnnlib.gz"
    gz.write_bytes(gzip.compress(vp.read_bytes()))
    (tmp_path / "m.onnx").write_bytes(op.read_bytes())
    v = load_backend("onnxsim").verify(Instance(tmp_path, "m.onnx", "p.vnnlib.gz", TIMEOUT))
    assert v.status == "falsified" and replay(op, parse_file(gz), v.counterexample).ok


def test_profiles_reject_unknown_keys():
    from usnprune.errors import ConfigError

    for name in ("builtin", "onnxsim", "marabou"):
        with pytest.raises(ConfigError, match="unknown key"):
            load_backend(name, not_an_option=1)
    with pytest.raises(ConfigError, match="branching"):
        load_backend("builtin", branching="random")

