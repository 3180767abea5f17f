"""The brightness/contrast perturbation model, used everywhere.

``x'(c, b) = clip(c * x + b, 0, 1)`` with ``c in [1 - eps_c, 1 + eps_c]`` and
``b in [-eps_b, eps_b]``; the identity is ``(c, b) = (1, 0)``. Training augmentation, USN
scoring, export, evaluation and falsification all use this one module, so the meaning of
``eps_c`` and ``eps_b`` cannot drift between stages.

A perturbation ``theta`` is a pair ``(c, b)``; arrays of perturbations have shape ``[n, 2]``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch

from usnprune.config import require

IDENTITY = (1.0, 0.0)


def check_eps(eps_c: float, eps_b: float, where: str) -> None:
    """0 <= eps_c < 1 (the contrast must stay positive) and eps_b >= 0, else ConfigError."""
    for name, v in (("eps_c", eps_c), ("eps_b", eps_b)):
        require(isinstance(v, (int, float)) and bool(np.isfinite(v)), f"{where}.{name}", f"expected a finite number, got {v!r}")
        require(v >= 0, f"{where}.{name}", f"must be >= 0, got {v}")
    require(eps_c < 1, f"{where}.eps_c", f"must be < 1 (the contrast must stay positive), got {eps_c}")
    # beyond 2 every pixel saturates whatever the contrast (c x < 2), and float32 overflows near 1e38
    require(eps_b <= 2, f"{where}.eps_b", f"must be <= 2 (a larger brightness saturates every pixel), got {eps_b}")


@dataclasses.dataclass(frozen=True)
class Box:
    """The (contrast, brightness) box: the one perturbation value every configuration carries
    (``perturbation: {eps_c: 0.1, eps_b: 0.1}`` in YAML). It is validated where it enters,
    by :func:`usnprune.config.from_dict` (which calls :meth:`check` with the key's place) or
    :meth:`make`; code that receives a Box can rely on it."""

    eps_c: float = 0.1
    eps_b: float = 0.1

    def check(self, where: str = "perturbation") -> None:
        check_eps(self.eps_c, self.eps_b, where)

    @classmethod
    def make(cls, eps_c: float, eps_b: float, where: str = "perturbation") -> "Box":
        """A validated box (ConfigError naming ``where`` otherwise)."""
        box = cls(eps_c, eps_b)
        box.check(where)
        return box

    @property
    def lower(self) -> np.ndarray:
        return np.array([1.0 - self.eps_c, -self.eps_b])

    @property
    def upper(self) -> np.ndarray:
        return np.array([1.0 + self.eps_c, self.eps_b])

    def contains(self, theta: np.ndarray, tol: float = 0.0) -> np.ndarray:
        t = np.atleast_2d(theta)
        return np.all((t >= self.lower - tol) & (t <= self.upper + tol), axis=1)

    # ---- sampling -------------------------------------------------------------------

    def corners(self) -> np.ndarray:
        """The four corners, ``[4, 2]``."""
        return np.array(list(itertools.product(*zip(self.lower, self.upper))), dtype=np.float64)

    def identity(self) -> np.ndarray:
        return np.array([IDENTITY], dtype=np.float64)

    def uniform(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` perturbations drawn uniformly from the box, ``[n, 2]``."""
        return rng.uniform(self.lower, self.upper, size=(n, 2))

    def grid(self, n_c: int, n_b: int | None = None) -> np.ndarray:
        """A ``n_c x n_b`` grid including the corners (and the identity when both are odd)."""
        n_b = n_c if n_b is None else n_b
        cs = np.linspace(self.lower[0], self.upper[0], n_c) if n_c > 1 else np.array([1.0])
        bs = np.linspace(self.lower[1], self.upper[1], n_b) if n_b > 1 else np.array([0.0])
        return np.array(list(itertools.product(cs, bs)), dtype=np.float64)

    def calibration(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Identity first, then the four corners, then uniform samples: ``[max(n, 5), 2]``.

        The identity is always row 0, which USN scoring relies on.
        """
        extra = max(n - 5, 0)
        return np.concatenate([self.identity(), self.corners(), self.uniform(extra, rng)])


def apply(images, theta):
    """Apply perturbations to images.

    ``images``: ``[n, ...]`` (numpy or torch) with pixels in [0, 1]; ``theta``: ``[n, 2]`` or
    ``[2]`` (one perturbation for all). Returns ``clip(c * x + b, 0, 1)`` of the same type.
    """
    if isinstance(images, torch.Tensor):
        t = torch.as_tensor(theta, dtype=images.dtype, device=images.device)
        if t.ndim == 1:
            t = t.unsqueeze(0).expand(images.shape[0], 2)
        shape = (-1,) + (1,) * (images.ndim - 1)
        return torch.clamp(t[:, 0].reshape(shape) * images + t[:, 1].reshape(shape), 0.0, 1.0)
    x = np.asarray(images)
    t = np.asarray(theta, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    if t.ndim == 1:
        t = np.broadcast_to(t, (x.shape[0], 2))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return np.clip(t[:, 0].reshape(shape) * x + t[:, 1].reshape(shape), 0.0, 1.0)


def pairs(images: torch.Tensor, thetas: np.ndarray) -> torch.Tensor:
    """Every (image, perturbation) pair: ``[n_img * n_theta, ...]``, image-major.

    Row ``i * n_theta + j`` is image ``i`` under perturbation ``j``; this is the batched
    layout USN scoring and robust evaluation use instead of a Python loop per sample.
    """
    n, m = images.shape[0], len(thetas)
    rep = images.repeat_interleave(m, dim=0)
    t = torch.as_tensor(np.tile(thetas, (n, 1)), dtype=images.dtype, device=images.device)
    return apply(rep, t)


def augment(images: torch.Tensor, box: Box, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: one uniform (c, b) from the box per image."""
    n = images.shape[0]
    u = torch.rand(n, 2, generator=generator, dtype=images.dtype).to(images.device)
    lo = torch.tensor(box.lower, dtype=images.dtype, device=images.device)
    hi = torch.tensor(box.upper, dtype=images.dtype, device=images.device)
    return apply(images, lo + u * (hi - lo))
