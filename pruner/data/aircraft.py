"""The synthetic aircraft: one rendered sample (image, keypoints, visibility) from a seed.

Why synthetic: the study needs a keypoint task that is small (32x32 grayscale), learnable in
minutes on a CPU, reproducible from a seed, and still a real regression problem (pose,
perspective, occlusion, clutter), so that pruning and verification results mean something.

How an image is made (all vectorized with numpy, one image at a time):

1. The aircraft is a handful of analytic primitives in its own frame (x forward, y to its
   left, z up): a fuselage (two half-ellipsoids, so nose and tail differ), a canopy and two
   engines (ellipsoids), and flat convex plates for the wings, horizontal stabilizers and fin.
   :data:`KEYPOINT_NAMES` are fixed points on it.
2. The aircraft gets a random attitude (yaw over the full circle, pitch, roll) and is seen by
   a pinhole camera from a random elevation and distance, with a random image-plane shift.
3. Each supersampled pixel casts a ray; the nearest hit (an exact depth buffer) gives the
   coverage and a Lambertian shade from a random light. Averaging the supersamples
   anti-aliases the silhouette.
4. The background is a gradient plus smooth texture, blobs, stripes and small clutter shapes;
   the object is composited over it, a global contrast/brightness change and pixel noise
   follow, and the image is quantized to 8 bits.
5. A keypoint is visible (COCO v=2) when the ray through it meets nothing in front of it,
   occluded (v=1) when the aircraft's own body is in front, and not labelled (v=0, written
   as x=y=0) when it projects outside the image.

The dataset folder built from these samples is written by :mod:`.synthetic`.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Literal

import numpy as np

from usnprune.config import from_dict, require

GENERATOR = "usnprune.synthetic"
# Bump whenever the same seed would produce different pixels or annotations.
GENERATOR_VERSION = 1

KEYPOINT_NAMES = (
    "nose",
    "cockpit",
    "left_wing_tip",
    "right_wing_tip",
    "left_engine",
    "right_engine",
    "left_stab_tip",
    "right_stab_tip",
    "fin_tip",
    "tail",
)
# 1-based index pairs, as in COCO's categories[].skeleton.
SKELETON = (
    (1, 2),  # nose - cockpit
    (2, 10),  # cockpit - tail (fuselage spine)
    (3, 5),  # left wing tip - left engine
    (5, 6),  # left engine - right engine (across the wing)
    (6, 4),  # right engine - right wing tip
    (7, 10),  # left stab tip - tail
    (10, 8),  # tail - right stab tip
    (10, 9),  # tail - fin tip
)
CATEGORY = {
    "id": 1,
    "name": "aircraft",
    "supercategory": "vehicle",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [list(p) for p in SKELETON],
}


# ---- options --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SynthOptions:
    """How views, lighting and backgrounds are drawn (angles in degrees, lengths in body units).

    The aircraft is about 2 units long and 2 units wide; ``focal`` is the focal length as a
    multiple of the image size, so with the defaults the keypoints span roughly 60-80% of the
    frame whatever the resolution.

    The defaults are tuned so that a plain ~270k-parameter CNN trained 30 epochs on 4000
    images reaches about 95% of keypoints within 2 px at 32x32
    (benchmarks/synthetic_learnability.py): learnable, not trivial. Wider pose ranges and
    more ``clutter`` make the task harder.
    """

    supersample: int = 4  # rays per pixel along each axis (anti-aliasing)
    focal: float = 1.2
    distance: tuple[float, float] = (3.0, 3.5)
    elevation: tuple[float, float] = (20.0, 60.0)  # camera above the aircraft's horizon
    yaw: tuple[float, float] = (-180.0, 180.0)  # heading, drawn uniformly
    pitch: float = 10.0  # aircraft pitch drawn from [-pitch, pitch]
    roll: float = 15.0  # aircraft bank drawn from [-roll, roll]
    shift: float = 0.05  # image-plane shift of the centre, as a fraction of the size
    background: Literal["clutter", "plain"] = "clutter"  # plain: uniform, no noise
    clutter: float = 0.3  # scales the background's gradient, texture, blobs, stripes and shapes
    noise: tuple[float, float] = (0.004, 0.02)  # std of pixel noise, drawn per image

    def check(self, where: str = "synthetic") -> None:
        require(1 <= self.supersample <= 16, f"{where}.supersample", f"must be in 1..16, got {self.supersample}")
        require(0.3 <= self.focal <= 10, f"{where}.focal", f"must be in [0.3, 10], got {self.focal}")
        for name, lo, hi in (("distance", 2.0, 100.0), ("elevation", -90.0, 90.0), ("yaw", -360.0, 360.0), ("noise", 0.0, 0.5)):
            pair = getattr(self, name)
            require(
                len(pair) == 2 and lo <= pair[0] <= pair[1] <= hi,
                f"{where}.{name}",
                f"expected [low, high] with {lo} <= low <= high <= {hi}, got {list(pair)}",
            )
        require(0 <= self.pitch <= 90, f"{where}.pitch", f"must be in [0, 90], got {self.pitch}")
        require(0 <= self.roll <= 180, f"{where}.roll", f"must be in [0, 180], got {self.roll}")
        require(0 <= self.clutter <= 3, f"{where}.clutter", f"must be in [0, 3], got {self.clutter}")
        require(0 <= self.shift <= 0.5, f"{where}.shift", f"must be in [0, 0.5], got {self.shift}")


def make_options(**options) -> SynthOptions:
    """SynthOptions from keyword arguments; unknown names and bad values raise ConfigError."""
    return from_dict(SynthOptions, options, "synthetic")


# ---- the aircraft ---------------------------------------------------------------------
# Rays are given in the aircraft's frame as ``origin + t * dirs`` with ``dirs`` of shape
# ``[3, ...]``, scaled so that ``t`` is the camera depth.


def _dot(vec, dirs):
    return np.tensordot(vec, dirs, axes=1)


class _Ellipsoid:
    def __init__(self, center, axes, tone=1.0, half=0):
        self.center = np.asarray(center, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64)
        self.tone = tone  # multiplies the shade: the canopy is darker than the skin
        # Keep only hits with half * x >= 0: two halves of different lengths make a fuselage
        # whose nose and tail differ, and their union stays convex.
        self.half = half
        self.corners = self.center + self.axes * np.array(list(itertools.product((-1, 1), repeat=3)))

    def hit(self, origin, dirs):
        o = (origin - self.center) / self.axes
        d = dirs / self.axes.reshape((3,) + (1,) * (dirs.ndim - 1))
        a = np.einsum("i...,i...->...", d, d)
        b = _dot(o, d)
        disc = b * b - a * (o @ o - 1.0)
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        t[~(disc >= 0)] = np.inf
        if self.half:
            t[self.half * (origin[0] + t * dirs[0]) < 0] = np.inf
        return t

    def lambert(self, points, dirs, light):
        g = (points - self.center[:, None]) / (self.axes * self.axes)[:, None]  # outward normal
        return np.maximum(0.0, light @ g / np.linalg.norm(g, axis=0))


class _Plate:
    """A flat convex polygon (wing, stabilizer, fin), seen from both sides."""

    def __init__(self, vertices, tone=1.0):
        v = np.asarray(vertices, dtype=np.float64)
        self.tone = tone
        self.corners = v
        self.p0 = v[0]
        n = np.cross(v[1] - v[0], v[-1] - v[0])
        self.normal = n / np.linalg.norm(n)
        self.e1 = (v[1] - v[0]) / np.linalg.norm(v[1] - v[0])
        self.e2 = np.cross(self.normal, self.e1)
        poly = np.stack([(v - v[0]) @ self.e1, (v - v[0]) @ self.e2], axis=1)
        area = np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
        self.poly = poly if area > 0 else poly[::-1]  # counter-clockwise

    def hit(self, origin, dirs):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((self.p0 - origin) @ self.normal) / _dot(self.normal, dirs)
        q = origin - self.p0
        u = q @ self.e1 + t * _dot(self.e1, dirs)
        v = q @ self.e2 + t * _dot(self.e2, dirs)
        inside = t > 0
        for k in range(len(self.poly)):
            (ax, ay), (bx, by) = self.poly[k], self.poly[(k + 1) % len(self.poly)]
            inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0
        return np.where(inside, t, np.inf)

    def lambert(self, points, dirs, light):
        # Two-sided: the lit side is the one facing the camera.
        facing = -np.sign(self.normal @ dirs)
        return np.maximum(0.0, facing * (self.normal @ light))


def _mirror(v):
    return tuple((x, -y, z) for x, y, z in v)


def _dihedral(points2d, z0, deg):
    t = np.tan(np.radians(deg))
    return tuple((x, y, z0 + abs(y) * t) for x, y in points2d)


_LEFT_WING = _dihedral(((0.30, 0.08), (-0.12, 1.0), (-0.30, 1.0), (-0.18, 0.08)), -0.03, 6.0)
_LEFT_STAB = _dihedral(((-0.70, 0.05), (-0.90, 0.40), (-1.00, 0.40), (-0.98, 0.05)), 0.02, 0.0)

_PARTS = (
    _Ellipsoid((0.0, 0.0, 0.0), (0.95, 0.10, 0.11), half=+1),  # fuselage, front
    _Ellipsoid((0.0, 0.0, 0.0), (1.05, 0.10, 0.11), half=-1),  # fuselage, rear
    _Ellipsoid((0.55, 0.0, 0.06), (0.20, 0.065, 0.08), tone=0.55),  # canopy
    _Ellipsoid((0.08, 0.42, -0.07), (0.20, 0.065, 0.07), tone=0.85),  # left engine
    _Ellipsoid((0.08, -0.42, -0.07), (0.20, 0.065, 0.07), tone=0.85),  # right engine
    _Plate(_LEFT_WING),
    _Plate(_mirror(_LEFT_WING)),
    _Plate(_LEFT_STAB),
    _Plate(_mirror(_LEFT_STAB)),
    _Plate(((-0.62, 0.0, 0.05), (-0.92, 0.0, 0.45), (-1.04, 0.0, 0.45), (-1.02, 0.0, 0.05))),  # fin
)


def _mid(a, b):
    return tuple((np.asarray(a) + np.asarray(b)) / 2)


# Points on the surfaces above, in KEYPOINT_NAMES order.
KEYPOINTS_3D = np.array(
    [
        (0.95, 0.0, 0.0),  # nose: front tip of the fuselage
        (0.55, 0.0, 0.14),  # cockpit: top of the canopy
        _mid(_LEFT_WING[1], _LEFT_WING[2]),  # left wing tip: middle of the tip chord
        _mid(_mirror(_LEFT_WING)[1], _mirror(_LEFT_WING)[2]),
        (0.28, 0.42, -0.07),  # left engine: centre of the intake
        (0.28, -0.42, -0.07),
        _mid(_LEFT_STAB[1], _LEFT_STAB[2]),
        _mid(_mirror(_LEFT_STAB)[1], _mirror(_LEFT_STAB)[2]),
        (-0.98, 0.0, 0.45),  # fin tip: middle of the fin's top edge
        (-1.05, 0.0, 0.0),  # tail: rear tip of the fuselage
    ]
)


def _cast(origin: np.ndarray, dirs: np.ndarray, windows=None, light: np.ndarray | None = None):
    """Nearest hit of the rays: an exact depth buffer.

    ``windows`` (one index per part, into the rays' trailing dimensions) limits each part to
    the rays that can meet it. Returns the depth ``t`` (inf where a ray misses) and, when
    ``light`` is given, the shade at the hit: Lambert's ``max(0, n . light)`` times the part's
    tone (0 where a ray misses).
    """
    shape = dirs.shape[1:]
    best = np.full(shape, np.inf)
    which = np.full(shape, -1, dtype=np.int8)
    for i, part in enumerate(_PARTS):
        win = (slice(None),) if windows is None else windows[i]
        t = part.hit(origin, dirs[(slice(None),) + win])
        sub_best, sub_which = best[win], which[win]  # views: updated in place
        closer = t < sub_best
        sub_best[closer] = t[closer]
        sub_which[closer] = i
    if light is None:
        return best, None
    shade = np.zeros(shape)
    for i, part in enumerate(_PARTS):
        m = which == i
        if m.any():
            d = dirs[:, m]
            shade[m] = part.lambert(origin[:, None] + best[m] * d, d, light) * part.tone
    return best, shade


# ---- one sample -----------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """One rendered view: what :func:`generate` writes for an image."""

    image: np.ndarray  # [S, S] (or [S, S, 3] RGB) float64 in [0, 1] (before 8-bit quantization)
    keypoints: np.ndarray  # [K, 2] (x, y) pixels, also for keypoints outside the image
    flags: np.ndarray  # [K] int8, COCO v: 2 visible, 1 occluded by the aircraft, 0 outside
    coverage: np.ndarray  # [S, S] fraction of each pixel covered by the aircraft
    bbox: tuple[float, float, float, float]  # (x, y, w, h): covered pixels and labelled keypoints

    def image_u8(self) -> np.ndarray:
        return np.round(self.image * 255.0).astype(np.uint8)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Body -> world rotation: roll about x, then pitch about y, then yaw about z (radians)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def _camera(elevation: float) -> np.ndarray:
    """World -> camera rotation for a camera south of the origin, ``elevation`` above it,
    looking at the origin; camera axes are x right, y down, z forward."""
    ce, se = np.cos(elevation), np.sin(elevation)
    return np.array([[1.0, 0.0, 0.0], [0.0, -se, -ce], [0.0, ce, -se]])


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small ``[g, g]`` grid to ``[size, size]`` (smooth texture)."""
    g = grid.shape[0]
    pos = (np.arange(size) + 0.5) / size * (g - 1)
    i0 = np.minimum(pos.astype(int), g - 2)
    w = pos - i0
    rows = grid[i0] * (1 - w)[:, None] + grid[i0 + 1] * w[:, None]
    return rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w


def _background(rng: np.random.Generator, size: int, level: float, opt: SynthOptions) -> np.ndarray:
    """A textured, cluttered background around mean ``level``; sizes scale with ``size``."""
    bg = np.full((size, size), level)
    if opt.background == "plain":
        return bg
    c = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    a = rng.uniform(0, 2 * np.pi)
    k = opt.clutter  # scales every amplitude below
    bg += k * rng.uniform(0.0, 0.35) * ((xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a))
    g = int(rng.integers(3, 7))
    bg += k * rng.uniform(0.0, 0.12) * _upsample(rng.uniform(-1, 1, (g, g)), size)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, 1, 2)
        sig = rng.uniform(0.08, 0.3)
        bg += k * rng.uniform(-0.2, 0.2) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig * sig))
    if rng.uniform() < 0.35:
        b = rng.uniform(0, np.pi)
        period = rng.uniform(3, 10) / 32  # in units of the image width
        phase = (xx * np.cos(b) + yy * np.sin(b)) / period
        bg += k * rng.uniform(0.03, 0.1) * np.sin(2 * np.pi * phase + rng.uniform(0, 2 * np.pi))
    px = xx * size  # pixel units, for crisp but anti-aliased clutter edges
    py = yy * size
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, size, 2)
        hw, hh = rng.uniform(0.5, 3.5, 2) * size / 32
        th = rng.uniform(0, np.pi)
        du = (px - cx) * np.cos(th) + (py - cy) * np.sin(th)
        dv = -(px - cx) * np.sin(th) + (py - cy) * np.cos(th)
        if rng.uniform() < 0.5:  # rectangle
            dist = np.maximum(np.abs(du) - hw, np.abs(dv) - hh)
        else:  # ellipse, distance approximated in pixels
            dist = (np.sqrt((du / hw) ** 2 + (dv / hh) ** 2) - 1) * min(hw, hh)
        bg += k * rng.uniform(-0.3, 0.3) * np.clip(0.5 - dist, 0, 1)
    return bg


def render_sample(rng: np.random.Generator, size: int = 32, options: SynthOptions | None = None,
                  color_rng: np.random.Generator | None = None) -> Sample:
    """Draw one random view of the aircraft with ``rng`` and render it at ``size`` x ``size``.

    With ``color_rng`` the image is RGB: the background and the aircraft each get a colour
    tint drawn from it (each channel scaled by ``1 + 0.35 u``, ``u`` uniform in [-1, 1]), and
    the pixel noise is drawn per channel. Everything else -- view, shading, keypoints -- comes
    from ``rng`` exactly as for the grayscale image, which stays byte-identical."""
    opt = options or SynthOptions()
    ss = opt.supersample
    deg = np.radians
    rot = _rotation(deg(rng.uniform(*opt.yaw)), deg(rng.uniform(-opt.pitch, opt.pitch)), deg(rng.uniform(-opt.roll, opt.roll)))
    cam = _camera(deg(rng.uniform(*opt.elevation)))
    m = cam @ rot  # body -> camera
    dist = rng.uniform(*opt.distance)
    f = opt.focal * size
    cx, cy = size / 2 + rng.uniform(-opt.shift, opt.shift, 2) * size
    origin = -m.T @ np.array([0.0, 0.0, dist])  # the camera centre in the body frame
    el = deg(rng.uniform(25, 85))
    az = rng.uniform(0, 2 * np.pi)
    light = rot.T @ np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])

    def project(points):
        pc = points @ m.T + np.array([0.0, 0.0, dist])
        return np.stack([f * pc[:, 0] / pc[:, 2] + cx, f * pc[:, 1] / pc[:, 2] + cy], axis=1), pc[:, 2]

    # Rays only inside the projected bounding box of each part (the projection of a box's
    # corners bounds the projection of what it holds); the rest is background.
    corners = [project(part.corners)[0] for part in _PARTS]
    part_lo = np.array([c.min(axis=0) for c in corners])  # [parts, 2] (x, y)
    part_hi = np.array([c.max(axis=0) for c in corners])
    lo_px = np.clip(np.floor(part_lo.min(axis=0)).astype(int), 0, size)
    hi_px = np.clip(np.ceil(part_hi.max(axis=0)).astype(int), 0, size)
    (x0, y0), (x1, y1) = lo_px, hi_px
    coverage = np.zeros((size, size))
    shade = np.zeros((size, size))
    corners_px = []  # points the bounding box must hold
    if x1 > x0 and y1 > y0:
        h, w = y1 - y0, x1 - x0
        # per part: rows and columns of the supersampled window it can cover
        sub_lo = np.floor((part_lo - lo_px) * ss).astype(int)
        sub_hi = np.ceil((part_hi - lo_px) * ss).astype(int)
        windows = [
            (slice(max(a[1], 0), min(b[1], h * ss)), slice(max(a[0], 0), min(b[0], w * ss)))
            for a, b in zip(sub_lo, sub_hi)
        ]
        rx = (x0 + (np.arange(w * ss) + 0.5) / ss - cx) / f
        ry = (y0 + (np.arange(h * ss) + 0.5) / ss - cy) / f
        # body-frame ray directions m.T @ (rx, ry, 1), built by broadcasting: [3, h*ss, w*ss]
        dirs = m[0][:, None, None] * rx[None, None, :] + m[1][:, None, None] * ry[None, :, None] + m[2][:, None, None]
        t, lam = _cast(origin, dirs, windows, light)
        hit = np.isfinite(t)
        coverage[y0:y1, x0:x1] = hit.reshape(h, ss, w, ss).mean(axis=(1, 3))
        shade[y0:y1, x0:x1] = lam.reshape(h, ss, w, ss).mean(axis=(1, 3))
        if hit.any():
            rows, cols = np.nonzero(hit.any(1))[0], np.nonzero(hit.any(0))[0]
            corners_px += [(x0 + cols[0] / ss, y0 + rows[0] / ss), (x0 + (cols[-1] + 1) / ss, y0 + (rows[-1] + 1) / ss)]

    # Intensities: the aircraft stands out from the background's mean level by a random
    # margin, brighter or darker, and its shading spans a random range.
    level = rng.uniform(0.15, 0.85)
    bright = level < 0.4 or (level <= 0.6 and rng.uniform() < 0.5)
    gap = rng.uniform(0.25, 0.4)
    mid = level + gap if bright else level - gap
    half = rng.uniform(0.1, min(0.25, gap - 0.08))  # the darkest shade still stands out
    lo, hi = max(mid - half, 0.0), min(mid + half, 1.0)
    bg = _background(rng, size, level, opt)
    # shade is already coverage-weighted (mean over supersamples of tone * lambert)
    if color_rng is None:
        img = bg * (1.0 - coverage) + lo * coverage + (hi - lo) * shade
        ref = level
    else:
        t_bg, t_obj = 1.0 + 0.35 * color_rng.uniform(-1.0, 1.0, (2, 3))
        img = (bg[..., None] * t_bg) * (1.0 - coverage[..., None]) + (lo * coverage + (hi - lo) * shade)[..., None] * t_obj
        ref = level * t_bg
    if opt.background != "plain":
        img = ref + (img - ref) * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
        img = img + rng.normal(0.0, rng.uniform(*opt.noise), img.shape)
    img = np.clip(img, 0.0, 1.0)

    kp, depth = project(KEYPOINTS_3D)
    inside = np.all((kp >= 0) & (kp < size), axis=1)
    # The ray through each keypoint meets the keypoint itself at camera depth `depth`;
    # anything nearer by more than a sliver (0.05 of the 2-unit aircraft: less than a pixel at
    # the default scale) hides it, so a tip on the silhouette's edge still counts as visible.
    kdirs = m.T @ np.stack([(kp[:, 0] - cx) / f, (kp[:, 1] - cy) / f, np.ones(len(kp))])
    t, _ = _cast(origin, kdirs)
    occluded = t < depth - 0.05
    flags = np.where(inside, np.where(occluded, 1, 2), 0).astype(np.int8)
    # The box of the rendered pixels, grown to hold the labelled keypoints: a part seen
    # edge-on (the fin from behind) can be thinner than the supersampling step.
    pts = np.array(corners_px + list(kp[inside])).reshape(-1, 2)
    if len(pts):
        (bx0, by0), (bx1, by1) = pts.min(axis=0), pts.max(axis=0)
        bbox = (float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0))
    else:
        bbox = (0.0, 0.0, 0.0, 0.0)
    return Sample(img, kp, flags, coverage, bbox)
