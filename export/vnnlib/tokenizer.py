"""Characters -> tokens, each with its 1-based line and column.

VNNLIB is a small subset of SMT-LIB: parentheses, atoms (symbols and numerals, separated by
whitespace or parentheses) and ``;`` comments that run to the end of the line. Comments are
not tokens; they are returned separately so the header of a property (network, image,
keypoint, reference) survives a read.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from .errors import VnnlibError

LPAREN = "("
RPAREN = ")"
ATOM = "atom"


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # LPAREN, RPAREN or ATOM
    text: str
    line: int  # 1-based
    column: int  # 1-based


def _scan(text: str, source: str) -> Iterator[Token | tuple[str, str]]:
    """Yields tokens, and ``("comment", text)`` pairs for comments."""
    line, col, i, n = 1, 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line, col, i = line + 1, 1, i + 1
        elif ch.isspace():
            col, i = col + 1, i + 1
        elif ch == ";":
            j = text.find("\n", i)
            j = n if j < 0 else j
            yield ("comment", text[i:j].lstrip(";").strip())
            col += j - i
            i = j
        elif ch == "(" or ch == ")":
            yield Token(LPAREN if ch == "(" else RPAREN, ch, line, col)
            col, i = col + 1, i + 1
        elif ch == "|" or ch == '"':
            # Quoted symbols and string literals never occur in VNN-COMP properties; a
            # clear error beats reading half of one as an atom.
            raise VnnlibError(f"quoted symbols and strings are not supported ({ch!r})", source, line, col)
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "();":
                j += 1
            yield Token(ATOM, text[i:j], line, col)
            col += j - i
            i = j


def tokenize(text: str, source: str = "<string>") -> tuple[list[Token], list[str]]:
    """``(tokens, comments)`` of a VNNLIB text; comments keep their order, without the ``;``."""
    tokens: list[Token] = []
    comments: list[str] = []
    for item in _scan(text, source):
        if isinstance(item, Token):
            tokens.append(item)
        else:
            comments.append(item[1])
    return tokens, comments


__all__ = ["ATOM", "LPAREN", "RPAREN", "Token", "tokenize"]
