"""The ``builtin`` backend: VNNLIB + ONNX -> Verdict, in process.

The parsed graph and its onnxruntime session are cached per ONNX file (keyed by path, mtime
and size), so the keypoints of one image -- one ONNX file, many VNNLIB files -- share one
read, one session and one calibration grid. Torch runs with ``threads`` threads during a
verification (1 by default: on small machines shared with other work, OpenMP thread
hand-offs cost more than they gain for these tensor sizes) and is restored afterwards.
"""

from __future__ import annotations

import collections
import time

import torch

from usnprune.bounds.graph import file_key, load_model, read_graph
from usnprune.bounds.onnx_file import ModelParts
from usnprune.bounds.onnx_file import session as onnx_session
from usnprune.bounds.operators import UnsupportedModel
from usnprune.config import from_dict
from usnprune.errors import UsnpruneError
from usnprune.system import thread_share
from usnprune.verifier_specs.base import Backend, Instance, Verdict, timed

from . import bab
from .options import BuiltinOptions

CACHE_SIZE = 4  # ONNX files kept; a chunk of instances is ordered by file, so a few suffice


def _session(parts: ModelParts):
    """onnxruntime on the graph's own weight arrays (``onnx_file.session``), one thread,
    without pre-packed weight copies."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return onnx_session(parts, opts)


class BuiltinBackend(Backend):
    name = "builtin"
    vnnlib_versions = ("1.0", "2.0")  # through usnprune.export.vnnlib

    def __init__(self, profile: dict | None = None, **options) -> None:
        super().__init__(profile, **options)
        self.options = from_dict(BuiltinOptions, self.profile, where=f"profile {self.profile.get('profile_name', 'builtin')}")
        self._models: collections.OrderedDict = collections.OrderedDict()

    def version(self) -> str:
        return "usnprune-builtin 1"

    def prepared(self, onnx_path) -> bab.PreparedModel:
        """The cached graph + session of an ONNX file (re-read when the file changes)."""
        key = file_key(onnx_path)
        hit = self._models.get(key)
        if hit is not None:
            self._models.move_to_end(key)
            return hit
        # the previous models go first when this one would exceed the memory budget
        size = key[2]
        while self._models and (len(self._models) >= CACHE_SIZE or
                                sum(k[2] for k in self._models) + size > self.options.memory_mb * 2**20):
            self._models.popitem(last=False)
        parts = load_model(onnx_path)  # large weights read once, shared by graph and session
        graph = read_graph(parts)
        model = bab.PreparedModel(graph, _session(parts), source=str(onnx_path))
        del parts
        self._models[key] = model
        return model

    def verify(self, instance: Instance) -> Verdict:
        t0 = time.monotonic()
        threads = torch.get_num_threads()
        torch.set_num_threads(self.options.threads or thread_share())
        # subnormal float64 arithmetic is ~100x slower; flushing them to zero moves a bound
        # by < 1e-307, far inside the safety margin
        flush = torch.set_flush_denormal(True)
        try:
            return self._verify(instance, t0)
        finally:
            torch.set_num_threads(threads)
            if flush:
                torch.set_flush_denormal(False)

    def _verify(self, instance: Instance, t0: float) -> Verdict:
        done = timed(t0)
        prop, error = instance.query()
        if error:
            return done("error", error)
        try:
            model = self.prepared(instance.onnx_path)
        except UnsupportedModel as e:
            return done("error", f"{instance.onnx_path}: {e}")
        except OSError as e:
            return done("error", f"{instance.onnx_path}: cannot read: {e}")
        try:
            out = bab.verify(model, prop, instance.timeout, self.options, start=t0)
        except UsnpruneError as e:
            return done("error", str(e))
        return done(out.status, out.message, out.x)


BACKEND = BuiltinBackend
__all__ = ["BACKEND", "BuiltinBackend"]
