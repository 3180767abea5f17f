"""VNN-LIB 1.0 (the VNN-COMP dialect) and 2.0: one model of a query, readers, writers.

The modules read like the grammar: ``tokenizer`` (characters -> tokens with line/column),
``parser`` (1.0 tokens -> :class:`Property`), ``parser2`` (2.0 text -> :class:`Property`
through the standard's ``vnnlib`` package), ``reader`` (either, by the version the file
declares), ``errors`` (what is wrong, and where), ``writer`` (keypoint properties -> text
of either version). :class:`Property` is the one in-memory form every stage and every
verifier backend of usnprune uses.
"""

from .errors import VnnlibError
from .model import VERSION_1, VERSION_2, VERSIONS, Disjunct, Network, Property, Variable
from .reader import file_version, parse_file, parse_text, text_version

__all__ = ["VERSION_1", "VERSION_2", "VERSIONS", "Disjunct", "Network", "Property", "Variable", "VnnlibError",
           "file_version", "parse_file", "parse_text", "text_version"]
