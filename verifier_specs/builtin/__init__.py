"""The embedded sound verifier ("builtin").

It searches with usnprune's bound engine (:mod:`usnprune.bounds`: one bound rule per ONNX
operator, forward-mode linear bounds and a backward CROWN pass): ``bab`` splits the input
box, bounds the property rows on every sub-box and searches for counterexamples (every one
replayed on onnxruntime); ``options`` are its tunables; ``backend`` is the
:class:`~usnprune.verifier_specs.base.Backend` the driver loads through
``profiles/builtin.yaml``. See docs/verifiers.md.
"""

from .backend import BACKEND, BuiltinBackend

__all__ = ["BACKEND", "BuiltinBackend"]
