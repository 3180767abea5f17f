"""2-D convolution with constant weights; its transpose is ``conv_transpose2d``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import AffineRule, NodeInfo, tensor


class Conv(AffineRule):
    op_types = ("Conv",)

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        shape = self.in_shapes[0]
        if len(shape) != 3:
            raise info.fail(f"only 2-D convolution ([batch, C, H, W]) is supported, got per-sample shape {shape}")
        w = info.const(1, "weight").astype(np.float64)
        if w.ndim != 4:
            raise info.fail("only 2-D convolution kernels are supported")
        self.groups = int(info.attr("group", 1))
        if shape[0] != w.shape[1] * self.groups:
            raise info.fail(f"input has {shape[0]} channels, the kernel expects {w.shape[1] * self.groups}")
        kh, kw = w.shape[2:]
        self.stride = tuple(info.attr("strides", [1, 1]))
        self.dilation = tuple(info.attr("dilations", [1, 1]))
        pads = list(info.attr("pads", [0, 0, 0, 0]))
        auto = info.attr("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for d, (n, k) in enumerate(zip(shape[1:], (kh, kw))):
                total = max((math.ceil(n / self.stride[d]) - 1) * self.stride[d] + (k - 1) * self.dilation[d] + 1 - n, 0)
                small, big = total // 2, total - total // 2
                pads[d], pads[d + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto != "NOTSET":
            raise info.fail(f"auto_pad={auto!r} is not supported")
        if len(pads) != 4 or len(self.stride) != 2 or len(self.dilation) != 2:
            raise info.fail("pads/strides/dilations do not describe a 2-D convolution")
        self.symmetric = pads[0] == pads[2] and pads[1] == pads[3]
        self.pads = pads  # [top, left, bottom, right]
        self.W = tensor(w)
        self.W_abs = self.W.abs()
        if 2 in info.consts:
            self.offset = tensor(info.consts[2]).reshape(-1, 1, 1)
        elif len(info.inputs) > 2 and info.inputs[2]:
            info.const(2, "bias")
        self.in_hw = tuple(shape[1:])
        self.rounding = w.shape[1] * kh * kw + 1

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t, l, b, r = self.pads
        if self.symmetric:
            return F.conv2d(x, w, None, self.stride, (t, l), self.dilation, self.groups)
        return F.conv2d(F.pad(x, (l, r, t, b)), w, None, self.stride, 0, self.dilation, self.groups)

    def apply(self, i, x):
        return self._conv(x, self.W)

    def apply_abs(self, i, x):
        return self._conv(x, self.W_abs)

    def apply_T(self, i, lam):
        t, l, b, r = self.pads
        pad = (t, l) if self.symmetric else (0, 0)
        target = self.in_hw if self.symmetric else (self.in_hw[0] + t + b, self.in_hw[1] + l + r)
        kh, kw = self.W.shape[2:]
        out_pad = []
        for d, k in enumerate((kh, kw)):
            made = (lam.shape[2 + d] - 1) * self.stride[d] - 2 * pad[d] + self.dilation[d] * (k - 1) + 1
            out_pad.append(target[d] - made)
        g = F.conv_transpose2d(lam, self.W, None, self.stride, pad, tuple(out_pad), self.groups, self.dilation)
        if not self.symmetric:
            g = g[:, :, t:t + self.in_hw[0], l:l + self.in_hw[1]]
        return g


RULES = [Conv]
__all__ = ["Conv", "RULES"]
