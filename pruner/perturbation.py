"""The lighting model, used everywhere: a family of linear maps of k parameters.

A *family* maps parameters ``theta`` (k numbers) to an image::

    x'(theta) = clip(x + sum_i (theta_i - theta0_i) * d_i(x), 0, 1)

where each direction ``d_i`` is either a *gain* (``d_i(x) = x`` on the channels it acts on,
0 elsewhere) or a *bias* (``d_i(x) = 1`` on its channels), and ``theta0`` (gains 1, biases
0) is the identity. Built in (docs/method.md):

* ``brightness_contrast`` (k = 2, the default): ``theta = (c, b)``, ``x' = clip(c*x + b)``
  on every channel -- the parametrization the toolkit has always used;
* ``channel_gain_bias`` (k = 6, RGB): ``(c_r, c_g, c_b, b_r, b_g, b_b)``, per-channel
  contrast and brightness, ``x'_ch = clip(c_ch*x_ch + b_ch)``;
* ``channel_gain`` (k = 3, RGB): ``(c_r, c_g, c_b)``, ``x'_ch = clip(c_ch*x_ch)``.

Every channel has at most one gain and one bias parameter, so the map is
``clip(g(theta) * x + beta(theta))`` per channel and computes exactly what the ONNX front
(one Gemm from the k inputs, :mod:`.onnx_graph`) computes.

The box: every gain in ``[1 - eps_c, 1 + eps_c]``, every bias in ``[-eps_b, eps_b]``.
Training augmentation, USN scoring, export, evaluation and falsification all use this one
module, so the meaning of a family and of ``eps_c``/``eps_b`` cannot drift between stages.
Arrays of perturbations have shape ``[n, k]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

from usnprune.config import require

IDENTITY = (1.0, 0.0)  # of the default family
DEFAULT_FAMILY = "brightness_contrast"
CORNER_CAP = 64  # at most this many corners are drawn anywhere (all of them up to k = 6)
GRID_CAP = 1024  # evaluation grids over more than 2 parameters keep to about this many points


@dataclasses.dataclass(frozen=True)
class Direction:
    """One parameter of a family: a gain (``d(x) = x``) or a bias (``d(x) = 1``) on one
    channel, or on every channel (``channel is None``)."""

    name: str
    kind: str  # "gain" | "bias"
    channel: int | None = None

    @property
    def identity(self) -> float:
        return 1.0 if self.kind == "gain" else 0.0


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    directions: tuple[Direction, ...]
    channels: int | None = None  # the image channels it needs (None: any)
    doc: str = ""

    def __post_init__(self) -> None:
        for kind in ("gain", "bias"):  # at most one gain and one bias per channel: the map stays g*x + beta
            chans = [d.channel for d in self.directions if d.kind == kind]
            assert (None not in chans or len(chans) == 1) and len(set(chans)) == len(chans), self.name

    @property
    def k(self) -> int:
        return len(self.directions)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.directions]

    @property
    def identity(self) -> np.ndarray:
        return np.array([d.identity for d in self.directions], dtype=np.float64)

    def check_channels(self, channels: int, where: str) -> None:
        """ConfigError when the family cannot act on images with ``channels`` channels."""
        require(self.channels is None or self.channels == channels, where,
                f"family {self.name} needs {self.channels}-channel (RGB) images; the network takes "
                f"{channels} channel{'s' if channels != 1 else ''}")

    def _param(self, kind: str, ch: int) -> int | None:
        for i, d in enumerate(self.directions):
            if d.kind == kind and d.channel in (None, ch):
                return i
        return None

    def directions_matrix(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(D [k, P], base [P])`` for one image ``[C, H, W]`` so that
        ``x'(theta) = clip(theta @ D + base, 0, 1)`` (flattened): ``D`` holds the directions
        ``d_i(x)``, ``base = x - sum_i theta0_i d_i(x)`` (zero for the built-in families)."""
        img = np.asarray(image, dtype=np.float64)
        if img.ndim == 2:
            img = img[None]
        c = img.shape[0]
        self.check_channels(c, "perturbation.family")
        rows = []
        for d in self.directions:
            mask = np.zeros_like(img)
            if d.channel is None:
                mask[:] = 1.0
            else:
                mask[d.channel] = 1.0
            rows.append((img * mask if d.kind == "gain" else mask).reshape(-1))
        D = np.stack(rows)
        return D, img.reshape(-1) - self.identity @ D

    def gain_bias(self, theta, channels: int, like):
        """Per-sample, per-channel gain and bias ``[n, channels]`` from ``theta [n, k]``
        (numpy or torch, following ``like``): the value of the channel's own parameter,
        never ``1 + (c - 1)``, so ``brightness_contrast`` computes exactly ``c*x + b``."""
        n = theta.shape[0]
        gains, biases = [], []
        for ch in range(channels):
            for kind, out in (("gain", gains), ("bias", biases)):
                i = self._param(kind, ch)
                if i is not None:
                    out.append(theta[:, i])
                elif isinstance(like, torch.Tensor):
                    out.append(torch.full((n,), 1.0 if kind == "gain" else 0.0, dtype=theta.dtype, device=theta.device))
                else:
                    out.append(np.full(n, 1.0 if kind == "gain" else 0.0, dtype=theta.dtype))
        stack = torch.stack if isinstance(like, torch.Tensor) else np.stack
        return stack(gains, 1), stack(biases, 1)


_RGB = "rgb"
FAMILIES: dict[str, Family] = {
    "brightness_contrast": Family(
        "brightness_contrast", (Direction("c", "gain"), Direction("b", "bias")), None,
        "contrast c and brightness b of the whole image: clip(c*x + b)"),
    "channel_gain_bias": Family(
        "channel_gain_bias",
        tuple(Direction(f"c_{n}", "gain", i) for i, n in enumerate(_RGB))
        + tuple(Direction(f"b_{n}", "bias", i) for i, n in enumerate(_RGB)), 3,
        "per-channel contrast and brightness of an RGB image: clip(c_ch*x_ch + b_ch)"),
    "channel_gain": Family(
        "channel_gain", tuple(Direction(f"c_{n}", "gain", i) for i, n in enumerate(_RGB)), 3,
        "per-channel gain of an RGB image (white balance, exposure): clip(c_ch*x_ch)"),
}


def family(name: str | Family, where: str = "perturbation.family") -> Family:
    """The family called ``name`` (ConfigError naming the known ones otherwise)."""
    if isinstance(name, Family):
        return name
    require(isinstance(name, str) and name in FAMILIES, where,
            f"unknown family {name!r} (known: {', '.join(f'{n} (k={f.k})' for n, f in FAMILIES.items())})")
    return FAMILIES[name]


def check_eps(eps_c: float, eps_b: float, where: str) -> None:
    """Finite half-widths: ``0 <= eps_c < 1`` (gains stay positive), ``0 <= eps_b <= 1``
    (a brightness beyond +-1 saturates every pixel), else ConfigError."""
    for name, v in (("eps_c", eps_c), ("eps_b", eps_b)):
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v)), f"{where}.{name}",
                f"expected a finite number, got {v!r}")
        require(v >= 0, f"{where}.{name}", f"must be >= 0 (a negative half-width leaves the box empty), got {v}")
    require(eps_c < 1, f"{where}.eps_c", f"must be < 1 (the contrast must stay positive), got {eps_c}")
    # beyond 2 every pixel saturates whatever the contrast (c x < 2), and float32 overflows near 1e38
    require(eps_b <= 2, f"{where}.eps_b", f"must be <= 2 (a larger brightness saturates every pixel), got {eps_b}")


@dataclasses.dataclass(frozen=True)
class Box:
    """The lighting box: the one perturbation value every configuration carries
    (``perturbation: {eps_c: 0.1, eps_b: 0.1, family: brightness_contrast}`` in YAML).
    Gains lie in ``[1 - eps_c, 1 + eps_c]``, biases in ``[-eps_b, eps_b]``. It is validated
    where it enters, by :func:`usnprune.config.from_dict` (which calls :meth:`check` with the
    key's place) or :meth:`make`; code that receives a Box can rely on it."""

    eps_c: float = 0.1
    eps_b: float = 0.1
    family: str = DEFAULT_FAMILY

    def check(self, where: str = "perturbation") -> None:
        family(self.family, f"{where}.family")
        check_eps(self.eps_c, self.eps_b, where)

    @classmethod
    def make(cls, eps_c: float, eps_b: float, family: str = DEFAULT_FAMILY, where: str = "perturbation") -> "Box":
        """A validated box (ConfigError naming ``where`` otherwise)."""
        box = cls(eps_c, eps_b, family)
        box.check(where)
        return box

    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]

    @property
    def k(self) -> int:
        return self.fam.k

    @property
    def names(self) -> list[str]:
        return self.fam.names

    @property
    def lower(self) -> np.ndarray:
        return np.array([1.0 - self.eps_c if d.kind == "gain" else -self.eps_b for d in self.fam.directions])

    @property
    def upper(self) -> np.ndarray:
        return np.array([1.0 + self.eps_c if d.kind == "gain" else self.eps_b for d in self.fam.directions])

    def contains(self, theta: np.ndarray, tol: float = 0.0) -> np.ndarray:
        t = np.atleast_2d(theta)
        return np.all((t >= self.lower - tol) & (t <= self.upper + tol), axis=1)

    def describe(self) -> str:
        """``c in [0.9, 1.1], b in [-0.1, 0.1]`` -- for READMEs and VNNLIB comments."""
        return ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, lo, hi in zip(self.names, self.lower, self.upper))

    # ---- sampling -------------------------------------------------------------------

    def corners(self, limit: int = CORNER_CAP) -> np.ndarray:
        """The ``2^k`` corners ``[2^k, k]`` (product order), or, above ``limit``, the two
        extreme corners and a fixed (seed 0) draw of other distinct corners, ``limit`` in all."""
        k = self.k
        lo, hi = self.lower, self.upper
        if 2**k <= limit:
            return np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)
        picks = [0, 2**k - 1]
        rest = np.random.default_rng(0).permutation(np.arange(1, 2**k - 1))[: max(limit - 2, 0)]
        bits = (np.asarray(picks + sorted(rest.tolist()))[:, None] >> np.arange(k - 1, -1, -1)) & 1
        return np.where(bits == 1, hi, lo).astype(np.float64)[:limit]

    def identity(self) -> np.ndarray:
        return self.fam.identity[None].copy()

    def uniform(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` perturbations drawn uniformly from the box, ``[n, k]``."""
        return rng.uniform(self.lower, self.upper, size=(n, self.k))

    def grid(self, n_c: int, n_b: int | None = None) -> np.ndarray:
        """Evaluation points. ``k = 2``: the ``n_c x n_b`` grid (corners included, and the
        identity when both are odd). Other k: the full ``n^k`` grid while it has at most
        ``GRID_CAP`` points; beyond, an ``m^k`` grid with ``m = floor(GRID_CAP^(1/k)) >= 2``
        (corners included) plus the identity and ``n`` points along each axis through it."""
        lo, hi, ident = self.lower, self.upper, self.fam.identity
        if self.k == 2:
            n_b = n_c if n_b is None else n_b
            axes = [np.linspace(lo[i], hi[i], n) if n > 1 else np.array([ident[i]]) for i, n in enumerate((n_c, n_b))]
            return np.array(list(itertools.product(*axes)), dtype=np.float64)
        n = n_c

        def axes(m):
            return [np.linspace(lo[i], hi[i], m) if m > 1 else np.array([ident[i]]) for i in range(self.k)]

        if n ** self.k <= GRID_CAP:
            return np.array(list(itertools.product(*axes(n))), dtype=np.float64)
        m = max(2, int(math.floor(GRID_CAP ** (1.0 / self.k) + 1e-9)))
        pts = [np.array(list(itertools.product(*axes(m)))), ident[None]]
        for i, ax in enumerate(axes(n)):
            line = np.repeat(ident[None], len(ax), 0)
            line[:, i] = ax
            pts.append(line)
        return np.concatenate(pts).astype(np.float64)

    def calibration(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Identity first, then corners, then uniform samples: ``[max(n, 1 + corners), k]``.

        Corners: all ``2^k`` while they fit in ``max(4, (n - 1) // 2)`` (for k = 2 always the
        four), else that many (:meth:`corners`). The identity is always row 0, which USN
        scoring relies on.
        """
        corners = self.corners(min(CORNER_CAP, max(4, (n - 1) // 2)))
        extra = max(n - 1 - len(corners), 0)
        return np.concatenate([self.identity(), corners, self.uniform(extra, rng)])


def _family_of(fam) -> Family:
    if isinstance(fam, Box):
        return fam.fam
    return family(fam)


def apply(images, theta, fam: str | Family | Box = DEFAULT_FAMILY):
    """Apply perturbations of family ``fam`` to images.

    ``images``: ``[n, C, ...]`` (numpy or torch) with pixels in [0, 1]; ``theta``: ``[n, k]``
    or ``[k]`` (one perturbation for all). Returns ``clip(g*x + beta, 0, 1)`` of the same type.
    For a family that acts on every channel alike (``brightness_contrast``) any layout works.
    """
    f = _family_of(fam)
    is_torch = isinstance(images, torch.Tensor)
    if is_torch:
        t = torch.as_tensor(theta, dtype=images.dtype, device=images.device)
        if t.ndim == 1:
            t = t.unsqueeze(0).expand(images.shape[0], f.k)
    else:
        x = np.asarray(images)
        t = np.asarray(theta, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
        if t.ndim == 1:
            t = np.broadcast_to(t, (x.shape[0], f.k))
        images = x
    if t.shape[-1] != f.k:
        raise ValueError(f"family {f.name} has {f.k} parameters, got perturbations of shape {tuple(t.shape)}")
    if f.channels is None:  # one gain and one bias for every pixel: exactly c*x + b
        shape = (-1,) + (1,) * (images.ndim - 1)
        g, b = f.gain_bias(t, 1, images)
        y = g.reshape(shape) * images + b.reshape(shape)
    else:
        if images.ndim < 2 or images.shape[1] != f.channels:
            raise ValueError(f"family {f.name} needs images [n, {f.channels}, ...], got {tuple(images.shape)}")
        shape = (images.shape[0], f.channels) + (1,) * (images.ndim - 2)
        g, b = f.gain_bias(t, f.channels, images)
        y = g.reshape(shape) * images + b.reshape(shape)
    return torch.clamp(y, 0.0, 1.0) if is_torch else np.clip(y, 0.0, 1.0)


def pairs(images: torch.Tensor, thetas: np.ndarray, fam: str | Family | Box = DEFAULT_FAMILY) -> torch.Tensor:
    """Every (image, perturbation) pair: ``[n_img * n_theta, ...]``, image-major.

    Row ``i * n_theta + j`` is image ``i`` under perturbation ``j``; this is the batched
    layout USN scoring and robust evaluation use instead of a Python loop per sample.
    """
    n, m = images.shape[0], len(thetas)
    rep = images.repeat_interleave(m, dim=0)
    t = torch.as_tensor(np.tile(thetas, (n, 1)), dtype=images.dtype, device=images.device)
    return apply(rep, t, fam)


def augment(images: torch.Tensor, box: Box, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: one uniform perturbation from the box per image."""
    n = images.shape[0]
    u = torch.rand(n, box.k, generator=generator, dtype=images.dtype).to(images.device)
    lo = torch.tensor(box.lower, dtype=images.dtype, device=images.device)
    hi = torch.tensor(box.upper, dtype=images.dtype, device=images.device)
    return apply(images, lo + u * (hi - lo), box.fam)
