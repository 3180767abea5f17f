"""The sound bound engine: an ONNX graph in, sound bounds of its tensors over input boxes out.

Shaped like auto_LiRPA: ``operators/`` holds one bound rule per operator family and the
registry ONNX op_type -> rule; :mod:`.graph` reads an ONNX model into rules;
:mod:`.propagate` propagates sound linear bounds in the input variables (forward mode, then
a backward CROWN pass for chosen output rows). It is the one bound engine of usnprune: the
builtin verifier (``verifier_specs/builtin``) searches with it, and the USN metric's bound
term (``pruner/importance/usn.py``) reads pre-activation bounds from it. It imports no stage.
"""

from .graph import Graph, read_graph
from .operators import UnsupportedModel, supported_ops
from .propagate import backward, concretize, forward

__all__ = ["Graph", "UnsupportedModel", "backward", "concretize", "forward", "read_graph", "supported_ops"]
