"""Gemm and MatMul with a constant weight: ``y = x @ W + bias``.

Only the first operand may be bounded (it carries the batch dimension); a bounded weight
would make the layer bilinear.
"""

from __future__ import annotations

import numpy as np

from .base import AffineRule, NodeInfo, tensor


class _ConstantMatrix(AffineRule):
    """``x @ W`` (plus the offset) for a constant ``W``; subclasses call ``_set_matrix``."""

    def _set_matrix(self, w: np.ndarray) -> None:
        self.W = tensor(w)
        self.W_abs = self.W.abs()
        self.WT = self.W.T.contiguous()

    def apply(self, i, x):
        return x @ self.W

    def apply_abs(self, i, x):
        return x @ self.W_abs

    def apply_T(self, i, lam):
        return lam @ self.WT


class Gemm(_ConstantMatrix):
    """``alpha * A' @ B' + beta * C`` with ``A`` bounded, ``B`` and ``C`` constant."""

    op_types = ("Gemm",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        if info.attr("transA", 0):
            raise info.fail("transA=1 would transpose the batch dimension")
        if len(self.in_shapes[0]) != 1:
            raise info.fail(f"expects a [batch, k] input, got per-sample shape {self.in_shapes[0]}")
        w = info.const(1, "weight (B)").astype(np.float64)
        if w.ndim != 2:
            raise info.fail("weight B must be a matrix")
        if info.attr("transB", 0):
            w = w.T
        w = w * float(info.attr("alpha", 1.0))
        k = self.in_shapes[0][0]
        if w.shape[0] != k:
            raise info.fail(f"input has {k} features but the weight has {w.shape[0]} rows")
        self._set_matrix(w)
        if 2 in info.consts:
            c = info.consts[2].astype(np.float64) * float(info.attr("beta", 1.0))
            if c.ndim == 2:
                if c.shape[0] != 1:
                    raise info.fail("a bias C with a batch dimension other than 1 is not supported")
                c = c[0]
            self.offset = tensor(np.broadcast_to(c, (w.shape[1],)).copy())
        elif len(info.inputs) > 2 and info.inputs[2]:
            info.const(2, "bias (C)")  # raises: a bounded bias
        self.rounding = k + 2  # k products summed, bias add, alpha/beta scaling


class MatMul(_ConstantMatrix):
    """``x @ W`` with a constant matrix ``W`` (``x`` may have extra leading dimensions)."""

    op_types = ("MatMul",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        w = info.const(1, "weight").astype(np.float64)
        if w.ndim != 2:
            raise info.fail("only a 2-D constant right operand is supported")
        if not self.in_shapes[0] or self.in_shapes[0][-1] != w.shape[0]:
            raise info.fail(f"input per-sample shape {self.in_shapes[0]} does not match weight {w.shape}")
        self._set_matrix(w)
        self.rounding = w.shape[0] + 1


RULES = [Gemm, MatMul]
__all__ = ["Gemm", "MatMul", "RULES"]
