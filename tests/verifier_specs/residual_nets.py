"""A small residual keypoint backbone with the lighting front, exported by torch.onnx.export.

conv stem -> ReLU -> MaxPool -> two residual blocks (conv-ReLU-conv, Add skip, ReLU) -> a
Concat of the second block with a 1x1 side branch of the first -> optional zero Pad ->
Flatten -> Linear head (2K coordinates). The front is the exported one's
(``Relu(z) - Relu(z - 1)``, ``z`` and ``z - 1`` from two separate Gemms), so the graph is
what a user's residual network looks like after usnprune prepends the lighting front.

``marabou=True`` gives the variant Marabou's ONNX reader reads faithfully: its MaxPool
ignores pads, and it has no Pad, so that variant pools 2x2 without pads and skips the Pad.
The legacy TorchScript exporter (``dynamo=False``) is used: the torch.export-based one
needs onnxscript, which usnprune does not depend on.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

import keypoint_nets


class Block(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(w, w, 3, padding=1)
        self.c2 = nn.Conv2d(w, w, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.c2(torch.relu(self.c1(x))))


class Backbone(nn.Module):
    """Image ``[N, 1, size, size]`` -> ``2 * keypoints`` pixel coordinates."""

    def __init__(self, width: int = 4, size: int = 8, keypoints: int = 3, marabou: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2) if marabou else nn.MaxPool2d(3, 2, 1)
        self.b1, self.b2 = Block(width), Block(width)
        self.side = nn.Conv2d(width, width, 1)
        self.pad = not marabou
        h = size // 2 + (1 if self.pad else 0)
        self.head = nn.Linear(2 * width * h * h, 2 * keypoints)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        a = self.b1(x)
        y = torch.cat([self.b2(a), self.side(a)], 1)
        if self.pad:
            y = F.pad(y, (0, 1, 0, 1))
        return self.head(torch.flatten(y, 1))


class WithFront(nn.Module):
    """``X = (c, b)`` -> ``backbone(clip(c * image + b, 0, 1))``."""

    def __init__(self, net: nn.Module, image: np.ndarray) -> None:
        super().__init__()
        self.net, self.shape = net, tuple(image.shape)
        front = torch.tensor(np.stack([image.reshape(-1), np.ones(image.size)]), dtype=torch.float32).T
        self.z, self.z1 = nn.Linear(2, image.size), nn.Linear(2, image.size)
        with torch.no_grad():
            self.z.weight.copy_(front)
            self.z.bias.zero_()
            self.z1.weight.copy_(front)
            self.z1.bias.fill_(-1.0)

    def forward(self, X):
        pixels = torch.relu(self.z(X)) - torch.relu(self.z1(X))
        return self.net(pixels.reshape((-1,) + self.shape))


def trained(steps: int = 150, seed: int = 0, **kw) -> Backbone:
    """A backbone trained for ``steps`` Adam steps on the synthetic task (first keypoints)."""
    net = Backbone(**kw)
    size, k = kw.get("size", 8), kw.get("keypoints", 3)
    imgs, kps = keypoint_nets.synthetic(256, size, seed=seed + 1)
    x, y = torch.as_tensor(imgs), torch.as_tensor(kps[:, :2 * k])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,))
            loss = (((net(x[idx]) - y[idx]) / size) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def instance_model(net: Backbone, image: np.ndarray) -> onnx.ModelProto:
    """The exported ONNX of ``WithFront(net, image)``, as torch writes it (not simplified)."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(WithFront(net, np.asarray(image, dtype=np.float32)).eval(), (torch.zeros(1, 2),), buf,
                          dynamo=False, opset_version=13, input_names=["X"], output_names=["Y"],
                          dynamic_axes={"X": {0: "batch"}, "Y": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())
