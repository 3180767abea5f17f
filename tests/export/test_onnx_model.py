import numpy as np
import pytest
import torch

from usnprune.export import onnx_model
from usnprune.pruner import perturbation
from usnprune.pruner.models import KeypointNet, arch_from, load_checkpoint
from usnprune.pruner.perturbation import Box


def _image(seed=0, size=32):
    return np.random.default_rng(seed).uniform(0, 1, size=(1, size, size)).astype(np.float32)


def test_exported_model_matches_pytorch_on_a_grid(small_checkpoint):
    model, _ = load_checkpoint(small_checkpoint)
    box = Box(0.2, 0.15)
    image = _image()
    m, err = onnx_model.export_instance_model(image, model.to_plain(), box)
    assert err <= onnx_model.PARITY_TOL
    grid = box.grid(11)
    got = onnx_model.run(onnx_model.session(m), grid)  # one batch of 121: batch > 1 works
    with torch.no_grad():
        x = perturbation.apply(torch.as_tensor(image).expand(len(grid), *image.shape), torch.as_tensor(grid, dtype=torch.float32))
        want = model(x).double().numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_graph_shape_is_what_verifiers_accept(small_checkpoint):
    model, _ = load_checkpoint(small_checkpoint)
    m, _ = onnx_model.export_instance_model(_image(), model.to_plain(), Box())
    assert m.ir_version == onnx_model.IR_VERSION
    assert [(o.domain, o.version) for o in m.opset_import] == [("", onnx_model.OPSET)]
    ops = {n.op_type for n in m.graph.node}
    assert ops <= {"Gemm", "Relu", "Sub", "Reshape", "Conv", "Flatten", "AveragePool"}
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "X" and inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [2]
    assert out.type.tensor_type.shape.dim[1].dim_value == 2 * model.arch.num_keypoints
    consumers = {}
    for n in m.graph.node:
        for t in n.input:
            consumers.setdefault(t, set()).add(n.op_type)
    assert not any("Relu" in ops and ops & {"Add", "Sub"} for ops in consumers.values())


def test_clip_is_exact_where_pixels_saturate():
    plain = KeypointNet(arch_from("tiny")).to_plain()
    image = np.zeros((1, 32, 32), np.float32)
    image[0, :, :16] = 1.0  # pixels that saturate at c > 1, b > 0
    image[0, :8, 16:] = 0.02  # pixels that clip at zero for b < 0
    box = Box(0.3, 0.3)
    m = onnx_model.build_model(image, plain)
    onnx_model.check_parity(m, plain, image, box, n=40)


def test_with_image_swaps_only_the_image(small_checkpoint):
    model, _ = load_checkpoint(small_checkpoint)
    plain = model.to_plain()
    m0, _ = onnx_model.export_instance_model(_image(0), plain, Box())
    m1 = onnx_model.with_image(m0, _image(1)[0])
    onnx_model.check_parity(m1, plain, _image(1), Box())
    assert [n.op_type for n in m1.graph.node] == [n.op_type for n in m0.graph.node]


def test_parity_failure_refuses_the_model():
    plain = KeypointNet(arch_from("tiny")).to_plain()
    image = _image()
    m = onnx_model.build_model(image, plain)
    other = KeypointNet(arch_from("tiny")).to_plain()  # different weights
    with pytest.raises(onnx_model.ExportError, match="parity failed"):
        onnx_model.check_parity(m, other, image, Box())


@pytest.mark.parametrize("name, k", [("channel_gain", 3), ("channel_gain_bias", 6)])
def test_families_of_k_parameters_export_exactly(name, k):
    """The k-input front: X [batch, k], one Gemm per branch from X, parity <= 1e-4 px at every
    corner, the identity and uniform points; another image swaps in; the RGB net sees per-channel
    lighting."""
    torch.manual_seed(0)
    plain = KeypointNet(arch_from({"conv": [6, 8], "fc": [16], "in_channels": 3}, input_size=16)).to_plain()
    box = Box(0.3, 0.2, name)
    image = np.random.default_rng(0).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    image[0, :4] = 1.0  # saturates for gains > 1
    m, err = onnx_model.export_instance_model(image, plain, box)
    assert err <= onnx_model.PARITY_TOL
    pts = onnx_model.parity_points(box)
    assert len(pts) >= 25 and {tuple(c) for c in box.corners()} <= {tuple(p) for p in pts}
    np.testing.assert_array_equal(pts[0], box.identity()[0])
    (inp,) = m.graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [k]
    front = [n for n in m.graph.node if n.input and n.input[0] == "X"]
    assert [n.op_type for n in front] == ["Gemm", "Gemm"]
    # the per-channel map differs from the global one: raising only red moves the output
    y = onnx_model.run(onnx_model.session(m), np.stack([box.identity()[0], box.upper * (np.arange(k) == 0) + box.identity()[0] * (np.arange(k) != 0)]))
    assert np.abs(y[1] - y[0]).max() > 0
    other = np.random.default_rng(1).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    assert onnx_model.check_parity(onnx_model.with_image(m, other, name), plain, other, box) <= onnx_model.PARITY_TOL
    with pytest.raises(onnx_model.ExportError, match="front weights"):
        onnx_model.with_image(m, other, "brightness_contrast")  # k = 2 weights for a k-input model
