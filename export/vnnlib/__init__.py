"""VNNLIB in the VNN-COMP dialect: the property model, a writer, and a reader.

The modules read like the grammar: ``tokenizer`` (characters -> tokens with line/column),
``parser`` (tokens -> :class:`Property`), ``errors`` (what is wrong, and where), ``writer``
(keypoint properties -> text). :class:`Property` is the one in-memory form every stage and
every verifier backend of usnprune uses.
"""

from .errors import VnnlibError
from .model import Disjunct, Property
from .parser import parse_file, parse_text

__all__ = ["Disjunct", "Property", "VnnlibError", "parse_file", "parse_text"]
