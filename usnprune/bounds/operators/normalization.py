"""BatchNormalization in inference mode: a per-channel affine map."""

from __future__ import annotations

import numpy as np

from .base import AffineRule, NodeInfo, tensor


class BatchNormalization(AffineRule):
    op_types = ("BatchNormalization",)
    # sub mean, divide by sqrt(var + eps), scale, add bias: a few float32 roundings
    rounding = 6

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        if info.attr("training_mode", 0):
            raise info.fail("training_mode=1 (batch statistics) is not supported")
        shape = self.in_shapes[0]
        if not shape:
            raise info.fail("expects [batch, C, ...]")
        scale, bias, mean, var = (info.const(k, what).astype(np.float64)
                                  for k, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
        eps = float(info.attr("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        view = (-1,) + (1,) * (len(shape) - 1)
        self.s = tensor(s).reshape(view)
        self.s_abs = self.s.abs()
        self.offset = tensor(bias - mean * s).reshape(view).expand(tuple(shape)).contiguous()

    def apply(self, i, x):
        return x * self.s

    def apply_abs(self, i, x):
        return x * self.s_abs

    def apply_T(self, i, lam):
        return lam * self.s


RULES = [BatchNormalization]
__all__ = ["BatchNormalization", "RULES"]
