"""Small trained-like keypoint networks and verification instances for tests and benchmarks.

Random weights give unrealistic bounds (outputs barely move, or bounds explode), so tests
also use networks trained for a few seconds on a synthetic task: a bright quadrilateral on
a textured dark background, keypoints = its 4 corners and 4 edge midpoints, with the same
brightness/contrast augmentation as the real pipeline. Everything is seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from usnprune.export.onnx_model import build_model, simplify
from usnprune.pruner import perturbation
from usnprune.pruner.models import KeypointNet, arch_from

NUM_KEYPOINTS = 8


def synthetic(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``[n, 1, size, size]`` in [0, 1] and keypoints ``[n, 16]`` (u, v) in pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    imgs = np.zeros((n, 1, size, size), dtype=np.float32)
    kps = np.zeros((n, 2 * NUM_KEYPOINTS), dtype=np.float32)
    for i in range(n):
        # smooth texture for the background
        bg = rng.random((4, 4))
        bg = np.kron(bg, np.ones((size // 4, size // 4)))
        img = 0.05 + 0.25 * bg
        cx, cy = rng.uniform(0.35, 0.65, 2) * size
        w, h = rng.uniform(0.15, 0.3, 2) * size
        th = rng.uniform(-0.5, 0.5)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ R.T + [cx, cy]
        inside = np.ones((size, size), dtype=bool)
        for a, b in zip(corners, np.roll(corners, -1, axis=0)):
            inside &= (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0]) >= 0
        shade = 0.6 + 0.4 * (xx - cx + size) / (2 * size)
        img = np.where(inside, shade, img)
        imgs[i, 0] = np.clip(img, 0, 1)
        mids = (corners + np.roll(corners, -1, axis=0)) / 2
        kps[i] = np.concatenate([corners, mids]).reshape(-1)
    return imgs, kps


def trained_net(arch: str | dict = "small", steps: int = 200, seed: int = 0, eps: float = 0.1,
                batch: int = 32) -> KeypointNet:
    """A KeypointNet trained for ``steps`` Adam steps on the synthetic task (on one thread:
    these tensors are too small for OpenMP hand-offs to pay on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(arch, steps, seed, eps, batch)
    finally:
        torch.set_num_threads(threads)


def _train(arch, steps, seed, eps, batch) -> KeypointNet:
    torch.manual_seed(seed)
    a = arch_from(arch, num_keypoints=NUM_KEYPOINTS)
    net = KeypointNet(a)
    imgs, kps = synthetic(512, a.input_size, seed)
    x_all, y_all = torch.as_tensor(imgs), torch.as_tensor(kps)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    box = perturbation.Box(eps, eps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x = perturbation.augment(x_all[idx], box, g)
        loss = (((net(x) - y_all[idx]) / a.input_size) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def random_net(arch: str | dict = "small", seed: int = 0) -> KeypointNet:
    torch.manual_seed(seed)
    return KeypointNet(arch_from(arch, num_keypoints=NUM_KEYPOINTS)).eval()


def instance_model(net: KeypointNet, image: np.ndarray) -> onnx.ModelProto:
    return simplify(build_model(image, net.to_plain()))


def property_text(ref: tuple[float, float], keypoint: int, n_outputs: int, delta: float,
                  eps_c: float = 0.1, eps_b: float = 0.1, comment: str = "") -> str:
    """The usnprune keypoint property (unsafe: the keypoint leaves the delta box)."""
    u, v = ref
    lines = ["; usnprune keypoint property"] + ([f"; {comment}"] if comment else [])
    lines += ["(declare-const X_0 Real)", "(declare-const X_1 Real)"]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    lines += [f"(assert (>= X_0 {1 - eps_c!r}))", f"(assert (<= X_0 {1 + eps_c!r}))",
              f"(assert (>= X_1 {-eps_b!r}))", f"(assert (<= X_1 {eps_b!r}))"]
    ju, jv = 2 * keypoint, 2 * keypoint + 1
    lines += ["(assert (or",
              f"    (and (>= Y_{ju} {u + delta!r}))",
              f"    (and (<= Y_{ju} {u - delta!r}))",
              f"    (and (>= Y_{jv} {v + delta!r}))",
              f"    (and (<= Y_{jv} {v - delta!r}))",
              "))"]
    return "\n".join(lines) + "\n"
