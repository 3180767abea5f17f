"""Gemm and MatMul with a constant weight: ``y = x @ W + bias``.

Only the first operand may be bounded (it carries the batch dimension); a bounded weight
would make the layer bilinear.

A weight is held once. Up to ``BIG`` elements it is kept in float64 with its absolute
value (speed); a larger one stays in the file's float32 -- exactly the same numbers -- and
is widened to float64 a block of ``CHUNK`` columns at a time inside every product, so a
250 MB model is not held four times over (float64 weight, its absolute value, a
transposed copy).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .base import DTYPE, AffineRule, NodeInfo, tensor

BIG = 1 << 22  # elements (32 MB in float64)
CHUNK = 1 << 20  # elements widened at a time
_scratch = threading.local()  # the widening buffer (one per thread: torch's own threads do not call back)


class _ConstantMatrix(AffineRule):
    """``x @ W`` (plus the offset) for a constant ``W``; subclasses call ``_set_matrix``."""

    def _set_matrix(self, w: np.ndarray) -> None:
        if w.size > BIG and w.dtype == np.float32:
            # float32, widened per block; the file's array itself (shared with onnxruntime's
            # session), a transposed view (Gemm transB) included
            self.W = torch.from_numpy(w)
            self.W_abs = None
            self.cols = max(1, CHUNK // max(1, w.shape[0]))
        else:
            self.W = tensor(w)
            self.W_abs = self.W.abs()

    def _blocks(self, fresh: bool = False):
        """``(j, W[:, j:j+cols] in float64)``, one block at a time in one reused buffer (use
        each block before asking for the next): a fresh 8 MB block per product left glibc's
        heap holding ~170 MB of freed blocks for a 250 MB model. ``fresh``: a new tensor per
        block, for products autograd records (it saves the block; a reused buffer would be
        overwritten under it, which autograd refuses)."""
        k, n = self.W.shape
        if fresh:
            for j in range(0, n, self.cols):
                yield j, self.W[:, j:j + self.cols].to(DTYPE)
            return
        buf = getattr(_scratch, "buf", None)
        if buf is None or buf.numel() < k * self.cols:
            buf = _scratch.buf = torch.empty(k * self.cols, dtype=DTYPE)
        for j in range(0, n, self.cols):
            w = self.W[:, j:j + self.cols]
            yield j, buf[:w.numel()].view(w.shape).copy_(w)

    def apply(self, i, x):
        if self.W.dtype == DTYPE:
            return x @ self.W
        if torch.is_grad_enabled() and x.requires_grad:
            return _Widened.apply(x, self)  # autograd would keep every widened block
        return self._widened(x)

    def _widened(self, x):
        return torch.cat([x @ w for _, w in self._blocks()], dim=-1)

    def apply_abs(self, i, x):
        if self.W_abs is not None:
            return x @ self.W_abs
        return torch.cat([x @ w.abs_() for _, w in self._blocks(_recorded(x))], dim=-1)

    def apply_T(self, i, lam):
        if self.W.dtype == DTYPE:
            return lam @ self.W.T
        out = None
        for j, w in self._blocks(_recorded(lam)):
            part = lam[..., j:j + w.shape[1]] @ w.T
            out = part if out is None else out + part
        return out


def _recorded(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class _Widened(torch.autograd.Function):
    """``x @ W`` for a float32-held ``W`` whose gradient widens ``W`` again instead of
    saving the float64 blocks (PGD and alpha-CROWN differentiate through the graph)."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.rule = rule
        return rule._widened(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.rule.apply_T(0, grad), None


class Gemm(_ConstantMatrix):
    """``alpha * A' @ B' + beta * C`` with ``A`` bounded, ``B`` and ``C`` constant."""

    op_types = ("Gemm",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        if info.attr("transA", 0):
            raise info.fail("transA=1 would transpose the batch dimension")
        if len(self.in_shapes[0]) != 1:
            raise info.fail(f"expects a [batch, k] input, got per-sample shape {self.in_shapes[0]}")
        w = info.const(1, "weight (B)")
        if w.ndim != 2:
            raise info.fail("weight B must be a matrix")
        if info.attr("transB", 0):
            w = w.T
        alpha = float(info.attr("alpha", 1.0))
        if alpha != 1.0 or w.dtype != np.float32:
            w = w.astype(np.float64) * alpha
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
        w = info.const(1, "weight")
        if w.dtype != np.float32:
            w = w.astype(np.float64)
        if w.ndim != 2:
            raise info.fail("only a 2-D constant right operand is supported")
        if not self.in_shapes[0] or self.in_shapes[0][-1] != w.shape[0]:
            raise info.fail(f"input per-sample shape {self.in_shapes[0]} does not match weight {w.shape}")
        self._set_matrix(w)
        self.rounding = w.shape[0] + 1


RULES = [Gemm, MatMul]
__all__ = ["Gemm", "MatMul", "RULES"]
