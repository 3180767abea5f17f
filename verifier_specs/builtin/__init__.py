"""The embedded sound verifier ("builtin").

Shaped like auto_LiRPA: ``operators/`` holds one bound rule per operator family and the
registry ONNX op_type -> rule; ``graph`` reads an ONNX file into rules; ``bounds``
propagates sound linear bounds in the input variables (forward mode, then a backward CROWN
pass for the property rows); ``bab`` splits the input box and searches for counterexamples
(every one replayed on onnxruntime); ``backend`` is the :class:`~verifier_specs.base.Backend`
the driver loads through ``profiles/builtin.yaml``. See docs/verifiers.md.
"""

from .backend import BACKEND, BuiltinBackend

__all__ = ["BACKEND", "BuiltinBackend"]
