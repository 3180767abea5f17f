"""Pooling: average pooling (linear with non-negative weights, so ``|M| = M``) and max
pooling (a :class:`~.base.MaxRule`: the maximum of each window, relaxed by selection)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import AffineRule, MaxRule, NodeInfo


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


def _max_pads(info: NodeInfo, hw: tuple[int, int], kernel, stride, dilation) -> list[int]:
    """``[top, left, bottom, right]`` from ``pads`` / ``auto_pad`` (as for Conv)."""
    auto = info.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for d in range(2):
            total = max((math.ceil(hw[d] / stride[d]) - 1) * stride[d] + (kernel[d] - 1) * dilation[d] + 1 - hw[d], 0)
            small, big = total // 2, total - total // 2
            pads[d], pads[d + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        return pads
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto != "NOTSET":
        raise info.fail(f"auto_pad={auto!r} is not supported")
    pads = [int(p) for p in info.attr("pads", [0, 0, 0, 0])]
    if len(pads) != 4 or min(pads) < 0:
        raise info.fail(f"pads {pads} do not describe 2-D pooling")
    return pads


class MaxPool(MaxRule):
    """2-D max pooling: ``kernel_shape``, ``strides``, ``pads`` (any, padding never wins),
    ``dilations``, ``auto_pad``; ``ceil_mode`` only where it gives the floor-mode shape; the
    optional ``Indices`` output is refused."""

    op_types = ("MaxPool",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        shape = self.in_shapes[0]
        if len(shape) != 3:
            raise info.fail(f"only 2-D max pooling ([batch, C, H, W]) is supported, got per-sample shape {shape}")
        if len(info.outputs) > 1 and info.outputs[1]:
            raise info.fail("the Indices output is not supported")
        kernel = tuple(int(k) for k in info.attr("kernel_shape", []))
        if len(kernel) != 2:
            raise info.fail("kernel_shape must have 2 entries")
        stride = tuple(int(s) for s in info.attr("strides", [1, 1]))
        dilation = tuple(int(d) for d in info.attr("dilations", [1, 1]))
        if len(stride) != 2 or len(dilation) != 2 or min(stride + dilation + kernel) < 1:
            raise info.fail("strides/dilations/kernel_shape do not describe 2-D pooling")
        hw = tuple(shape[1:])
        pads = _max_pads(info, hw, kernel, stride, dilation)
        out = [(hw[d] + pads[d] + pads[d + 2] - (kernel[d] - 1) * dilation[d] - 1) // stride[d] + 1 for d in range(2)]
        if info.attr("ceil_mode", 0):
            ceil = [math.ceil((hw[d] + pads[d] + pads[d + 2] - (kernel[d] - 1) * dilation[d] - 1) / stride[d]) + 1
                    for d in range(2)]
            if ceil != out:
                raise info.fail("ceil_mode=1 with a partial last window is not supported")
        if min(out) < 1:
            raise info.fail(f"the kernel {kernel} does not fit the padded input {hw}")
        self.kernel, self.stride, self.dilation, self.pads = kernel, stride, dilation, pads
        self.out_shape = (shape[0], out[0], out[1])
        self.in_size = hw[0] * hw[1]
        # flat input index of every window position; padded positions get -1
        ids = torch.arange(self.in_size, dtype=torch.float64).reshape(1, 1, *hw)
        win = self._unfold(ids, -1.0)[0, 0]  # [L, W]
        if bool((win < 0).all(-1).any()):
            raise info.fail("a window lies entirely in the padding")
        self.index = win.clamp(min=0).to(torch.int64)

    def _pad(self, x: torch.Tensor, value: float) -> torch.Tensor:
        t, l, b, r = self.pads
        return F.pad(x, (l, r, t, b), value=value) if any(self.pads) else x

    def _unfold(self, v: torch.Tensor, pad_value: float) -> torch.Tensor:
        N, C = v.shape[:2]
        cols = F.unfold(self._pad(v, pad_value), self.kernel, self.dilation, 0, self.stride)  # [N, C*W, L]
        W = self.kernel[0] * self.kernel[1]
        return cols.reshape(N, C, W, -1).transpose(2, 3)

    def windows(self, v):
        return self._unfold(v, -torch.inf)

    def forward(self, x):
        return F.max_pool2d(self._pad(x, -torch.inf), self.kernel, self.stride, 0, self.dilation)


class GlobalMaxPool(MaxRule):
    """The maximum over all spatial positions of each channel."""

    op_types = ("GlobalMaxPool",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        shape = self.in_shapes[0]
        if len(shape) < 2:
            raise info.fail(f"expects [batch, C, spatial...], got per-sample shape {shape}")
        self.in_size = 1
        for s in shape[1:]:
            self.in_size *= s
        self.out_shape = (shape[0],) + (1,) * (len(shape) - 1)
        self.index = torch.arange(self.in_size).reshape(1, -1)

    def windows(self, v):
        return v.reshape(v.shape[0], v.shape[1], 1, -1)

    def forward(self, x):
        return x.reshape(x.shape[0], x.shape[1], -1).max(-1).values.reshape((x.shape[0],) + self.out_shape)


RULES = [AveragePool, GlobalAveragePool, MaxPool, GlobalMaxPool]
__all__ = ["AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxPool", "RULES"]
