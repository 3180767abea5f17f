"""A user's ONNX keypoint regressor as a benchmark network (``usnprune export --onnx``).

The lighting front (:func:`usnprune.pruner.onnx_graph.front_graph`) is prepended to the user's
graph by ONNX graph surgery: the user's image input is replaced by the front's lit image, so
whatever the model does to its input -- mean/std normalization, channel reordering,
scaling by 255 -- stays in its graph, exactly as the user exported it. Conventions
(docs/formats.md, "Your own ONNX model"):

* one input that is not an initializer: a float image ``[1, C, H, W]`` (or a symbolic batch)
  with C = 1 or 3 and H = W, pixel values in [0, 1] -- usnprune's data, resized to H x W
  and C channels, is what it is fed;
* one output: ``[1, 2K]`` interleaved ``(u0, v0, u1, v1, ...)`` or ``[1, K, 2]`` (one
  ``(u, v)`` row per keypoint), u the column (x, right), v the row (y, down), in pixels of
  the model's input, (0, 0) the top-left corner of the top-left pixel (COCO); K is the
  data's keypoint count. With ``normalized``, coordinates in [0, 1] are mapped to pixels
  as ``u * W, v * H`` by a Mul the export appends;
* the instance model has the front's input ``X`` ``[batch, k]`` and output ``Y``
  ``[batch, 2K]``; the user's tensors are renamed ``net/<name>``; it is simplified with
  onnxsim and pinned to opset 13 / IR 7 like every instance model (a model of another
  opset is converted with onnx's version converter, and parity says whether that held).

Parity: the instance model (onnxruntime, one batched call) against the user's original
model (onnxruntime, one image at a time, the lit image computed in float64) at >= 25 points
of the box -- the identity and every corner (capped) included -- within 1e-4 px.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.compose
import onnx.defs
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper
from usnprune.pruner import perturbation
from usnprune.pruner.models import file_hash
from usnprune.pruner.onnx_graph import (
    INPUT_NAME,
    IR_VERSION,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    front_graph,
)

from usnprune.bounds.graph import read_graph
from usnprune.bounds.operators import UnsupportedModel

from . import onnx_model

PREFIX = "net/"  # the user's tensor and node names, so they never meet the front's
CHANNELS = (1, 3)  # what usnprune's data loaders produce


def _float_input(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.tensor_type.elem_type == TensorProto.FLOAT  # the front computes float32 pixels


class OnnxNetwork:
    """One ``--onnx`` model: read and checked once, grafted onto each pool image."""

    def __init__(self, path: str, name: str | None = None, normalized: bool = False,
                 builtin_check: bool = True) -> None:
        self.path, self.normalized, self.builtin_check = str(path), normalized, builtin_check
        self.flag = f"--onnx {path}"
        self.name = name or default_name(path)
        self.original = _load(self.path, self.flag)
        inputs = [i for i in self.original.graph.input
                  if i.name not in {t.name for t in self.original.graph.initializer}]
        if len(inputs) != 1:
            listed = ", ".join(f"'{i.name}' {_shape(i)}" for i in inputs) or "none"
            raise ExportError(f"{self.flag}: the model has {len(inputs)} inputs ({listed}); usnprune needs exactly "
                              f"one image input [1, C, H, W] (fold the others into the graph as constants)")
        self.input = inputs[0]
        dims = _dims(self.input)
        if not _float_input(self.input) or len(dims) != 4 or any(not isinstance(d, int) or d <= 0 for d in dims[1:]) \
                or dims[0] not in (1, None):
            raise ExportError(f"{self.flag}: input '{self.input.name}' is {_shape(self.input)}; usnprune needs a float32 "
                              f"image [1, C, H, W] with C, H, W fixed")
        _, self.channels, self.height, self.width = dims
        if self.channels not in CHANNELS:
            raise ExportError(f"{self.flag}: input '{self.input.name}' has {self.channels} channels; usnprune's data "
                              f"gives 1 (gray) or 3 (RGB)")
        if self.height != self.width:
            raise ExportError(f"{self.flag}: input '{self.input.name}' is {self.height} x {self.width}; usnprune's "
                              f"data loaders give square images (H = W)")
        if len(self.original.graph.output) != 1:
            names = ", ".join(f"'{o.name}'" for o in self.original.graph.output)
            raise ExportError(f"{self.flag}: the model has {len(self.original.graph.output)} outputs ({names}); "
                              f"usnprune needs one, the keypoint coordinates [1, 2K] or [1, K, 2]")
        self.reference = onnx_model.session(self.original)
        self.out_shape = tuple(self._reference_run(np.zeros((self.channels, self.height, self.width), np.float32)).shape)
        self.model = _at_opset(self.original, self.flag)
        self.keypoints: int | None = None

    @property
    def size(self) -> int:
        return self.height

    def _reference_run(self, image: np.ndarray) -> np.ndarray:
        try:
            return self.reference.run(None, {self.input.name: image[None].astype(np.float32)})[0]
        except Exception as e:  # onnxruntime raises its own types (shape mismatches, missing kernels)
            raise ExportError(f"{self.flag}: onnxruntime cannot run the model on a [1, {self.channels}, "
                              f"{self.height}, {self.width}] image: {str(e).splitlines()[0][:200]}") from None

    def check_keypoints(self, k: int, data: str) -> None:
        """The output must hold the 2K coordinates of the data's K keypoints."""
        shape = self.out_shape
        if int(np.prod(shape)) != 2 * k or not (shape in ((1, 2 * k), (1, k, 2))):
            raise ExportError(f"{self.flag}: output '{self.original.graph.output[0].name}' has shape {list(shape)} "
                              f"({int(np.prod(shape))} numbers); the {k} keypoints of {data} need [1, {2 * k}] "
                              f"(u0, v0, u1, v1, ...) or [1, {k}, 2]")
        self.keypoints = k

    def scale(self) -> np.ndarray:
        """What the output is multiplied by: (W, H) per keypoint when normalized, else 1."""
        per = np.array([self.width, self.height] if self.normalized else [1.0, 1.0], dtype=np.float64)
        return np.tile(per, self.keypoints)

    # ---- the instance model ------------------------------------------------------------

    def graft(self, image: np.ndarray, fam) -> onnx.ModelProto:
        """The user's graph behind the lighting front of ``image`` (not yet simplified)."""
        user = onnx.compose.add_prefix(self.model, PREFIX)
        g = user.graph
        image_in, net_out = PREFIX + self.input.name, PREFIX + self.original.graph.output[0].name
        inits, nodes = front_graph(image, fam, image_in)
        tail = []
        if len(self.out_shape) == 3 or self.normalized:
            flat = "usnprune_flat"
            shape = numpy_helper.from_array(np.array([-1, 2 * self.keypoints], dtype=np.int64), "usnprune_out_shape")
            inits.append(shape)
            tail.append(helper.make_node("Reshape", [net_out, shape.name], [flat if self.normalized else OUTPUT_NAME],
                                         name="usnprune_to_rows"))
            if self.normalized:
                inits.append(onnx_model.initializer("usnprune_pixels_per_unit", self.scale()))
                tail.append(helper.make_node("Mul", [flat, "usnprune_pixels_per_unit"], [OUTPUT_NAME],
                                             name="usnprune_to_pixels"))
        else:
            for node in g.node:  # the user's output tensor becomes Y
                node.input[:] = [OUTPUT_NAME if t == net_out else t for t in node.input]
                node.output[:] = [OUTPUT_NAME if t == net_out else t for t in node.output]
        n_params = perturbation.family(fam).k
        graph = helper.make_graph(
            nodes + list(g.node) + tail, "usnprune_keypoints_" + re.sub(r"\W", "_", self.name),
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_params])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2 * self.keypoints])],
            initializer=inits + list(g.initializer))  # the user's value_info is dropped: it may fix the batch to 1
        others = [o for o in user.opset_import if o.domain not in ("", "ai.onnx")]  # its functions' domains
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)] + others,
                                  producer_name="usnprune", doc_string=f"usnprune lighting front + {Path(self.path).name}")
        model.functions.extend(user.functions)
        model.ir_version = IR_VERSION
        return model

    def first(self, image: np.ndarray, box: perturbation.Box, doc: str = "") -> tuple[onnx.ModelProto, float]:
        """The simplified, checked instance model of the first image, and its parity error."""
        model = self.graft(image, box.family)
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"{self.flag}: the grafted model is not valid ONNX: {str(e).splitlines()[0][:200]}") from None
        model = onnx_model.simplify(model, structure=False)
        if doc:
            model.doc_string = doc
        if self.builtin_check:
            try:
                read_graph(model)
            except UnsupportedModel as e:
                raise ExportError(f"{self.flag}: {e}; export it for another verifier with --no-builtin-check") from None
        return model, self.parity(model, image, box)

    def again(self, template: onnx.ModelProto, image: np.ndarray, box: perturbation.Box) -> tuple[onnx.ModelProto, float]:
        """The same simplified graph with another image's front weights, parity re-checked."""
        model = onnx_model.with_image(template, image, box.family)
        return model, self.parity(model, image, box)

    def parity(self, model: onnx.ModelProto, image: np.ndarray, box: perturbation.Box,
               n: int = 25, tol: float = onnx_model.PARITY_TOL) -> float:
        """Max |instance model - original model| in px over >= n points of the box (identity
        and corners included); ExportError above ``tol``. The instance model runs them as one
        batch, which every verifier needs."""
        pts = onnx_model.parity_points(box, n)
        try:
            got = onnx_model.run(onnx_model.session(model), pts)
        except Exception as e:  # onnxruntime's own types
            raise ExportError(f"{self.flag}: the model does not run on a batch of {len(pts)} images "
                              f"({str(e).splitlines()[0][:160]}); verifiers evaluate batches: export it with a "
                              f"dynamic batch dimension") from None
        img = np.asarray(image, dtype=np.float64)
        lit = perturbation.apply(np.repeat(img[None], len(pts), 0), pts, box.fam)
        ref = np.stack([self._reference_run(x).reshape(-1).astype(np.float64) for x in lit]) * self.scale()
        err = float(np.max(np.abs(got - ref)))
        if not np.isfinite(err) or err > tol:
            raise ExportError(f"{self.flag}: parity with the original model failed: max difference {err:.3g} px "
                              f"> {tol:g} px")
        return err

    def category(self) -> dict:
        return {"name": self.name, "network": self.name, "checkpoint": self.path, "checkpoint_hash": file_hash(self.path),
                "source": "onnx", "method": "onnx", "sparsity": 0.0, "seed": "", "parameters": parameters(self.original),
                "output_layout": "K,2" if len(self.out_shape) == 3 else "2K", "normalized": self.normalized}


def default_name(path: str) -> str:
    """A category name from the file name: characters outside ``[A-Za-z0-9._+-]`` become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(path).stem)
    return stem if re.match(r"[A-Za-z0-9]", stem) else "net" + stem


def parameters(model: onnx.ModelProto) -> int:
    """Float weights of the model (its float initializers and Constant tensors)."""
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer
            if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.t and a.t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
                    n += int(np.prod(a.t.dims))
    return n


def _load(path: str, flag: str) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{flag}: no such file")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf and the checker raise several types
        raise ExportError(f"{flag}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return model


def _at_opset(model: onnx.ModelProto, flag: str) -> onnx.ModelProto:
    """The model at opset 13: onnx's version converter, or -- where it has no adapter (opset
    14 only widened the types of Add/Sub/Mul/Div/Relu, and the converter has no step down for
    them) -- the same nodes relabeled, when every operator exists at 13 and the checker
    accepts them there. Either way the parity check against the original decides."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version == OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, OPSET)
    except Exception as e:  # the converter raises RuntimeError and others
        why = str(e).splitlines()[0][:160]
    relabeled = onnx.ModelProto()
    relabeled.CopyFrom(model)
    for o in relabeled.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = OPSET
    try:
        for node in relabeled.graph.node:
            if node.domain in ("", "ai.onnx"):
                onnx.defs.get_schema(node.op_type, OPSET)
        onnx.checker.check_model(relabeled)
    except Exception:  # get_schema and the checker raise their own types
        raise ExportError(f"{flag}: cannot bring the model from opset {version} to {OPSET} ({why}); "
                          f"export it at opset {OPSET}") from None
    return relabeled


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _shape(vi: onnx.ValueInfoProto) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in _dims(vi)) + "]"
