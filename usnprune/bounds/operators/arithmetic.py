"""Add, Sub, Mul, Div, Neg: with a constant operand, or (Add/Sub) between two bounded tensors.

Constants follow ONNX broadcasting against the full tensor ``[batch, *shape]``; a constant
of full rank must have a leading 1 (one sample), and one of higher rank is rejected since it
would add dimensions in front of the batch. ``Mul``/``Div`` of two bounded tensors are not
linear and are rejected.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import AffineRule, NodeInfo, per_sample_const, tensor, unbroadcast


class _Elementwise(AffineRule):
    var_inputs = (0, 1)
    rounding = 1

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        rank = 1 + max(len(s) for s in self.in_shapes)
        self.const: torch.Tensor | None = None
        shapes = [tuple(s) for s in self.in_shapes]
        for pos in info.consts:
            if pos < 2:
                c = per_sample_const(info, pos, rank)
                self.const = tensor(c)
                shapes.append(tuple(c.shape))
        try:  # numpy's: torch.broadcast_shapes imports sympy (over a second)
            self.out_shape = tuple(int(d) for d in np.broadcast_shapes(*shapes))
        except ValueError:
            raise info.fail(f"shapes {shapes} do not broadcast") from None
        self.positions = list(info.var_pos)  # ONNX position of each bounded input

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) == self.out_shape:
            return x
        return x.expand((x.shape[0],) + self.out_shape)

    def sign(self, i: int) -> float:
        return 1.0

    def apply(self, i, x):
        return self.expand(x) if self.sign(i) > 0 else -self.expand(x)

    def apply_abs(self, i, x):
        return self.expand(x)

    def apply_T(self, i, lam):
        g = unbroadcast(lam, tuple(self.in_shapes[i]))
        return g if self.sign(i) > 0 else -g


class Add(_Elementwise):
    op_types = ("Add",)

    def __init__(self, info):
        super().__init__(info)
        if self.const is not None:
            self.offset = self.const.expand(self.out_shape).contiguous()


class Sub(_Elementwise):
    op_types = ("Sub",)

    def __init__(self, info):
        super().__init__(info)
        if self.const is not None:
            c = self.const.expand(self.out_shape).contiguous()
            self.offset = -c if 1 in info.consts else c  # x - c, or c - x

    def sign(self, i):
        return -1.0 if self.positions[i] == 1 else 1.0


class Neg(_Elementwise):
    op_types = ("Neg",)
    var_inputs = (0,)
    rounding = 0  # negation is exact

    def sign(self, i):
        return -1.0


class _Scale(AffineRule):
    """``x * c`` (Mul) or ``x / c`` (Div) for a constant ``c``."""

    var_inputs = (0, 1)
    rounding = 1

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        if len(info.var_pos) != 1:
            raise info.fail(f"{info.op_type} of two non-constant tensors is not linear")
        pos = 1 - info.var_pos[0]
        if info.op_type == "Div" and info.var_pos[0] != 0:
            raise info.fail("division by a non-constant tensor is not linear")
        rank = 1 + len(self.in_shapes[0])
        c = per_sample_const(info, pos, rank)
        if info.op_type == "Div":
            if np.any(c == 0):
                raise info.fail("division by zero")
            c = 1.0 / c
        self.c = tensor(c)
        self.c_abs = self.c.abs()
        try:
            self.out_shape = tuple(int(d) for d in np.broadcast_shapes(tuple(self.in_shapes[0]), tuple(c.shape)))
        except ValueError:
            raise info.fail(f"shapes {tuple(self.in_shapes[0])} and {tuple(c.shape)} do not broadcast") from None

    def apply(self, i, x):
        return x * self.c

    def apply_abs(self, i, x):
        return x * self.c_abs

    def apply_T(self, i, lam):
        return unbroadcast(lam * self.c, tuple(self.in_shapes[0]))


class Mul(_Scale):
    op_types = ("Mul",)


class Div(_Scale):
    op_types = ("Div",)


RULES = [Add, Sub, Mul, Div, Neg]
__all__ = ["Add", "Div", "Mul", "Neg", "RULES", "Sub"]
