"""Geometry of the synthetic dataset: shape polygons, seeded object layouts and their rendering to label + image.

A layout (which classes, where, how big, rotated how) comes from one generator and the appearance (texture crops,
colours, background) from another, so labels can be rendered alone, cheaply and identically
(:meth:`SyntheticShapes._compute_class_pixel_counts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_textures import TextureBank, background, material_colours, material_pattern

SHAPES = ("disc", "hexagon", "triangle", "star", "ring")
_SUPERSAMPLE = 4  # coverage is drawn at 4x and box-averaged: anti-aliased edges; label = coverage >= 1/2


@dataclass(frozen=True)
class PlacedObject:
    """One object of a layout (pixels, radians).

    Attributes:
        class_id: dataset class id (1..C); shape / material: its traits.
        cy, cx: centre; radius: circumradius before the aspect stretch; angle: rotation; aspect: x-stretch factor.
    """

    class_id: int
    shape: str
    material: str
    cy: float
    cx: float
    radius: float
    angle: float
    aspect: float


def _regular(n: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), -np.sin(t)], axis=1)


@lru_cache(maxsize=None)
def unit_shape(shape: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(outline [V, 2], hole [V', 2] or None)``: x, y vertices of ``shape`` with circumradius 1 at the origin.

    Raises:
        KeyError: ``shape`` is not in :data:`SHAPES`.
    """
    if shape == "disc":
        return _regular(72), None
    if shape == "hexagon":
        return _regular(6), None
    if shape == "triangle":
        return _regular(3), None
    if shape == "star":
        outer, inner = _regular(5), _regular(5, 0.45, np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(10, 2), None
    if shape == "ring":
        return _regular(72), _regular(72, 0.55)
    raise KeyError(f"unknown shape {shape!r}; valid: {SHAPES}")


def _polygon_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def unit_area(shape: str) -> float:
    """Area of ``shape`` at circumradius 1 (hole removed), in squared radii."""
    outline, hole = unit_shape(shape)
    return _polygon_area(outline) - (_polygon_area(hole) if hole is not None else 0.0)


def sample_layout(rng: np.random.Generator, height: int, width: int, traits: Mapping[int, tuple[str, str]],
                  n_objects: tuple[int, int] = (2, 5), area: tuple[float, float] = (0.025, 0.15)) -> list[PlacedObject]:
    """Draw the objects of one image, back to front (largest first, so small objects stay visible).

    Args:
        rng: layout generator.
        height, width: image size in pixels.
        traits: ``{class id: (shape, material)}``; each image holds distinct classes.
        n_objects: inclusive range of the number of objects.
        area: range of each object's area as a fraction of the image (log-uniform; the upper end shrinks with
            the number of objects so that crowded images do not bury their objects).

    Returns:
        the :class:`PlacedObject` list in painting order.
    """
    ids = np.array(sorted(traits))
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    chosen = rng.choice(ids, size=min(n, len(ids)), replace=False)
    hi = min(area[1], 0.4 / n)
    fractions = np.exp(rng.uniform(np.log(area[0]), np.log(max(hi, area[0])), size=len(chosen)))
    objects, centres = [], []
    for class_id, frac in sorted(zip(chosen.tolist(), fractions.tolist()), key=lambda p: -p[1]):
        shape, material = traits[class_id]
        aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        radius = float(np.sqrt(frac * height * width / (unit_area(shape) * aspect)))
        margin = 0.6 * radius
        best, best_gap = None, -np.inf
        for _ in range(8):  # a few tries for a centre that does not sit on another object
            cy, cx = rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)
            gap = min((np.hypot(cy - y, cx - x) - 0.7 * (radius + r) for y, x, r in centres), default=np.inf)
            if gap > best_gap:
                best, best_gap = (cy, cx), gap
            if gap > 0:
                break
        centres.append((*best, radius))
        objects.append(PlacedObject(int(class_id), shape, material, float(best[0]), float(best[1]), radius,
                                    float(rng.uniform(0, 2 * np.pi)), aspect))
    return objects


def _vertices(obj: PlacedObject, unit: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    x, y = unit[:, 0] * obj.radius * obj.aspect, unit[:, 1] * obj.radius
    return np.stack([obj.cx + cos * x - sin * y, obj.cy + sin * x + cos * y], axis=1)


def coverage(obj: PlacedObject, height: int, width: int) -> tuple[int, int, np.ndarray] | None:
    """Anti-aliased coverage of ``obj`` inside the image.

    Returns:
        ``(y0, x0, cov)`` with ``cov`` float32 ``[h, w]`` in [0, 1] for the box starting at pixel ``(y0, x0)``, or
        ``None`` when the object lies outside the image.
    """
    outline, hole = unit_shape(obj.shape)
    pts = _vertices(obj, outline)
    x0, y0 = max(int(np.floor(pts[:, 0].min())), 0), max(int(np.floor(pts[:, 1].min())), 0)
    x1, y1 = min(int(np.ceil(pts[:, 0].max())) + 1, width), min(int(np.ceil(pts[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    s = _SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    shift = np.array([x0, y0], dtype=np.float64)
    draw.polygon([tuple(p) for p in ((pts - shift) * s - 0.5)], fill=255)
    if hole is not None:
        draw.polygon([tuple(p) for p in ((_vertices(obj, hole) - shift) * s - 0.5)], fill=0)
    cov = np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0
    return y0, x0, cov


def render(layout: Sequence[PlacedObject], height: int, width: int, bank: TextureBank | None = None,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Paint a layout back to front.

    Args:
        layout: from :func:`sample_layout`.
        height, width: image size in pixels.
        bank, rng: texture bank and appearance generator; both ``None`` renders the label only.

    Returns:
        ``(image uint8 [H, W, 3] or None, label uint8 [H, W])``; every pixel is labelled (0 = background).
    """
    label = np.zeros((height, width), dtype=np.uint8)
    image = None if bank is None else background(bank, height, width, rng)
    if image is not None:
        light = rng.uniform(0, 2 * np.pi)
        light_dir = np.array([np.sin(light), np.cos(light)], dtype=np.float32)  # (y, x) towards the light
    for obj in layout:
        cov = coverage(obj, height, width)
        if cov is None:
            continue
        y0, x0, alpha = cov
        h, w = alpha.shape
        label[y0:y0 + h, x0:x0 + w][alpha >= 0.5] = obj.class_id
        if image is not None:
            _paint(image, obj, y0, x0, alpha, bank, rng, light_dir)
    if image is None:
        return None, label
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), label


def _paint(image: np.ndarray, obj: PlacedObject, y0: int, x0: int, alpha: np.ndarray, bank: TextureBank,
           rng: np.random.Generator, light_dir: np.ndarray) -> None:
    """Composite one object (soft drop shadow, shaded duotone texture) into ``image`` float32 [H, W, 3] in place."""
    h, w = alpha.shape
    H, W = image.shape[:2]
    offset = np.rint(-light_dir * max(2.0, 0.08 * obj.radius)).astype(int)
    sy0, sx0 = y0 + offset[0], x0 + offset[1]
    ys, xs = slice(max(sy0, 0), min(sy0 + h, H)), slice(max(sx0, 0), min(sx0 + w, W))
    if ys.stop > ys.start and xs.stop > xs.start:
        shadow = alpha[ys.start - sy0:ys.stop - sy0, xs.start - sx0:xs.stop - sx0]
        image[ys, xs] *= 1.0 - rng.uniform(0.25, 0.45) * shadow[..., None]
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    yy, xx = yy - obj.cy, xx - obj.cx
    pattern = material_pattern(bank, obj.material, yy, xx, rng)
    dark, light = material_colours(obj.material, rng)
    colour = dark + (light - dark) * pattern[..., None]
    shade = 1.0 + rng.uniform(0.1, 0.25) * (yy * light_dir[0] + xx * light_dir[1]) / obj.radius
    colour = colour * shade[..., None]
    a = alpha[..., None]
    region = image[y0:y0 + h, x0:x0 + w]
    region *= 1.0 - a
    region += a * colour
