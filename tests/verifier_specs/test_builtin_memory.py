"""The builtin verifier holds a large model's weights once (``usnprune.bounds.onnx_file``).

* the two-part read gives exactly the file's tensors, and its model (large initializers as
  external data pointing into the file) is the same network as the file for onnxruntime;
* the graph's float32-held weights and the screening session use the same arrays (Gemm
  with ``transB`` included: a transposed view, no copy), and the session computes bitwise
  what a session of the file computes;
* files that already use external data, and files that are not ONNX, take the ordinary
  path and its errors;
* a fresh process (as a worker runs it) that reads a model grows by little more than the
  file's size (a 53 MB model: 1.47x; 3.77x before this reader).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from usnprune.bounds import onnx_file
from usnprune.bounds.graph import ModelError, load_model, read_graph
from usnprune.bounds.operators import linear
from usnprune.verifier_specs.base import load_backend


def _mlp(path, widths=(2, 1100, 1100, 5), trans_b=(False, True, False), seed=0):
    """An MLP whose middle weights exceed onnx_file.MIN_BYTES and linear.BIG's float32 limit
    when widths are large; layer i uses Gemm transB per ``trans_b``."""
    rng = np.random.default_rng(seed)
    inits, nodes, cur = [], [], "X"
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(np.ascontiguousarray(w.T) if trans_b[i] else w, f"W{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(np.float32) * 0.1, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"z{i}"], transB=int(trans_b[i])))
        cur = f"z{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"h{i}"]))
            cur = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", widths[0]])],
                          [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["batch", widths[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(path))
    return m


def _file_session(path):
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_parts_are_the_file(tmp_path):
    m = _mlp(tmp_path / "m.onnx")
    parts = onnx_file.read_parts(tmp_path / "m.onnx")
    assert sorted(parts.arrays) == ["W1"]  # 1100x1100 float32 = 4.8 MB; W0, W2 and biases stay inline
    for t in m.graph.initializer:
        ref = numpy_helper.to_array(t)
        got = parts.arrays[t.name] if t.name in parts.arrays else numpy_helper.to_array(
            next(u for u in parts.model.graph.initializer if u.name == t.name))
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
    (w1,) = [t for t in parts.model.graph.initializer if t.name == "W1"]
    assert w1.data_location == TensorProto.EXTERNAL and not w1.raw_data
    ext = {e.key: e.value for e in w1.external_data}
    assert ext["location"] == "m.onnx"
    # the stripped model is a valid model of the same network: onnx resolves its reference
    full = onnx.ModelProto.FromString(parts.model.SerializeToString())
    onnx.load_external_data_for_model(full, str(tmp_path))
    assert np.array_equal(numpy_helper.to_array(full.graph.initializer[2]), numpy_helper.to_array(m.graph.initializer[2]))
    onnx.checker.check_model(full)


def test_graph_and_session_share_the_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(linear, "BIG", 1000)  # every weight above it stays float32
    path = tmp_path / "m.onnx"
    _mlp(path)
    backend = load_backend("builtin", threads=1)
    model = backend.prepared(path)
    arrays = model.session.usnprune_initializers[1]
    (w1_rule,) = [n.rule for n in model.graph.nodes if n.name == "z1"]
    assert w1_rule.W.dtype == torch.float32
    assert w1_rule.W.data_ptr() == arrays["W1"].ctypes.data  # the transB view of the same bytes
    assert tuple(w1_rule.W.shape) == (1100, 1100) and w1_rule.W.stride() == (1, 1100)
    x = np.random.default_rng(1).uniform(-2, 2, (300, 2)).astype(np.float32)
    y = model.session.run(None, {"X": x})[0]
    assert np.array_equal(y, _file_session(path).run(None, {"X": x})[0])
    # and the float64 graph agrees with it to float32 rounding (weights widened blockwise)
    y64 = model.graph.evaluate(torch.as_tensor(x, dtype=torch.float64)).numpy()
    assert np.abs(y64 - y).max() < 1e-4 * (1 + np.abs(y).max())


def test_external_data_files_take_the_ordinary_path(tmp_path):
    m = _mlp(tmp_path / "inline.onnx")
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=1024)
    parts = onnx_file.read_parts(tmp_path / "ext.onnx")
    assert parts.arrays == {}
    backend = load_backend("builtin", threads=1)
    model = backend.prepared(tmp_path / "ext.onnx")
    x = np.random.default_rng(2).uniform(-2, 2, (50, 2)).astype(np.float32)
    assert np.array_equal(model.session.run(None, {"X": x})[0], _file_session(tmp_path / "inline.onnx").run(None, {"X": x})[0])


def test_a_link_to_the_file(tmp_path):
    (tmp_path / "real").mkdir()
    _mlp(tmp_path / "real" / "m.onnx")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "real" / "m.onnx")
    model = load_backend("builtin", threads=1).prepared(tmp_path / "link.onnx")
    assert model.session.usnprune_initializers[1]  # the shared path, resolved to the target's name
    x = np.zeros((1, 2), np.float32)
    assert np.array_equal(model.session.run(None, {"X": x})[0], _file_session(tmp_path / "real" / "m.onnx").run(None, {"X": x})[0])


@pytest.mark.parametrize("content", [b"not an onnx file at all \xff\xff\xff", b"\x3a\xff\xff\xff\xff\x0f"])
def test_unreadable_file_is_named(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="bad.onnx: not a readable ONNX model"):
        load_model(path)
    with pytest.raises(ModelError, match="bad.onnx: not a readable ONNX model"):
        read_graph(path)


_PEAK = r"""
import json, sys
import torch, onnx, onnxruntime
from usnprune.verifier_specs.base import load_backend
backend = load_backend("builtin", threads=1)  # the baseline: every module a verification imports
if sys.argv[1] == "prepare":
    backend.prepared(sys.argv[2])
print("PEAK", next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")) * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_peak_memory_of_reading_a_model(tmp_path):
    """What a worker holds before its first sub-domain: the weights once (1.47x the file
    here, 3.77x before); the bound computation's own memory is budgeted by ``memory_mb``."""
    path = tmp_path / "m.onnx"
    _mlp(path, widths=(2, 2100, 2100, 2100, 2100, 10), trans_b=(False, True, False, True, False))
    size = path.stat().st_size  # 53 MB; 2100^2 > linear.BIG: held in float32

    def peak(*args):
        p = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, cwd=tmp_path)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("PEAK ")), None)
        assert line, p.stderr[-2000:]
        return int(line.split()[1])

    above = peak("prepare", str(path)) - peak("imports")
    # + a fixed share: the 8 MB widening buffer, onnxruntime's session (~10 MB), the shape pass
    assert above < 1.1 * size + 40e6, f"reading the model took {above / size:.2f}x the file above the interpreter"
