"""Average pooling (linear with non-negative weights, so ``|M| = M``)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import AffineRule, NodeInfo


class AveragePool(AffineRule):
    op_types = ("AveragePool",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        if len(self.in_shapes[0]) != 3:
            raise info.fail(f"only 2-D average pooling is supported, got per-sample shape {self.in_shapes[0]}")
        self.kernel = tuple(info.attr("kernel_shape"))
        self.stride = tuple(info.attr("strides", [1] * len(self.kernel)))  # ONNX default: 1, not the kernel
        pads = list(info.attr("pads", [0, 0, 0, 0]))
        auto = info.attr("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID"):
            raise info.fail(f"auto_pad={auto!r} is not supported")
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        if info.attr("ceil_mode", 0):
            raise info.fail("ceil_mode=1 is not supported")
        if tuple(info.attr("dilations", [1, 1])) != (1, 1):
            raise info.fail("dilated pooling is not supported")
        if len(self.kernel) != 2 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise info.fail("only 2-D pooling with symmetric pads is supported")
        if pads[0] * 2 > self.kernel[0] or pads[1] * 2 > self.kernel[1]:
            raise info.fail("pads larger than half the kernel are not supported")
        self.padding = (pads[0], pads[1])
        self.include_pad = bool(info.attr("count_include_pad", 0))
        self.rounding = self.kernel[0] * self.kernel[1] + 1  # the sum, then the division

    def apply(self, i, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, False, self.include_pad)


class GlobalAveragePool(AffineRule):
    op_types = ("GlobalAveragePool",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        shape = self.in_shapes[0]
        if len(shape) < 2:
            raise info.fail(f"expects [batch, C, spatial...], got per-sample shape {shape}")
        self.dims = tuple(range(2, len(shape) + 1))
        n = 1
        for s in shape[1:]:
            n *= s
        self.count = n
        self.rounding = n + 1

    def apply(self, i, x):
        return x.mean(dim=self.dims, keepdim=True)

    def apply_T(self, i, lam):
        return (lam / self.count).expand((lam.shape[0],) + tuple(self.in_shapes[0])).contiguous()


RULES = [AveragePool, GlobalAveragePool]
__all__ = ["AveragePool", "GlobalAveragePool", "RULES"]
