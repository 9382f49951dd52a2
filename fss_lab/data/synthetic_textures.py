"""Appearance of the synthetic dataset: materials (object textures) and backgrounds.

Photo materials and backgrounds come only from images stored inside the scikit-image wheel (``brick``,
``gravel``, ``grass``, ``immunohistochemistry``, ``page``, ``hubble_deep_field``; ``coffee``, ``astronaut``, ...),
so nothing is downloaded; the other materials are procedural. Sources are decoded once per process
(:func:`load_texture_bank`, memoised: read-only data, not state) and shared by every split.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from .base import DatasetError


@dataclass(frozen=True)
class PhotoSource:
    """A grey photo texture: ``skimage.data.<name>()`` resized by ``scale``, illumination flattened, ``gamma``."""

    name: str
    scale: float = 1.0
    gamma: float = 1.0
    upper_percentile: float = 98.0


#: Materials: photo textures (:class:`PhotoSource`) or procedural patterns (``None``).
MATERIALS: dict[str, PhotoSource | None] = {
    "brick": PhotoSource("brick", scale=0.45),
    "gravel": PhotoSource("gravel", scale=0.9),
    "grass": PhotoSource("grass"),
    "tissue": PhotoSource("immunohistochemistry", scale=0.6),
    "print": PhotoSource("page", scale=0.6),
    "starry": PhotoSource("hubble_deep_field", scale=0.7, gamma=0.7, upper_percentile=99.7),
    "striped": None,
    "wavy": None,
    "dotted": None,
    "checkered": None,
}
#: Hue ranges (degrees) of photo materials; they overlap, and procedural materials take any hue.
MATERIAL_HUES: dict[str, tuple[float, float]] = {
    "brick": (-20.0, 35.0), "gravel": (15.0, 65.0), "grass": (60.0, 150.0), "tissue": (270.0, 380.0),
    "print": (170.0, 250.0), "starry": (200.0, 290.0)}
#: Fraction of objects painted with any hue, whatever their material.
ANY_HUE_PROB = 0.2
#: Background photos: none of them is a material.
BACKGROUND_SOURCES = ("coffee", "astronaut", "rocket", "chelsea", "camera", "coins", "moon", "retina")
_BACKGROUND_MAX_SIDE = 400


@dataclass(frozen=True)
class TextureBank:
    """Decoded sources.

    Attributes:
        materials: ``{photo material: float32 [S1, S2] grey texture in [0, 1]}``.
        backgrounds: RGB PIL images, longest side <= 400 pixels.
    """

    materials: dict[str, np.ndarray]
    backgrounds: tuple[Image.Image, ...]


def _skimage_image(name: str) -> Image.Image:
    """A bundled ``skimage.data`` image as PIL; :class:`DatasetError` if it does not load offline."""
    import skimage.data

    try:
        return Image.fromarray(np.asarray(getattr(skimage.data, name)()))
    except Exception as exc:  # missing attribute, or a download attempt without internet
        raise DatasetError(
            f"the synthetic dataset needs skimage.data.{name}(), which did not load offline ({exc!r}). "
            "Install scikit-image>=0.21 from a wheel (it bundles this image)."
        ) from exc


def _resized(im: Image.Image, scale: float) -> Image.Image:
    return im if scale == 1.0 else im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)


def _photo_texture(source: PhotoSource) -> np.ndarray:
    grey = np.asarray(_resized(_skimage_image(source.name).convert("L"), source.scale), dtype=np.float32)
    grey = grey - ndimage.gaussian_filter(grey, 25.0) + grey.mean()  # flatten uneven lighting
    lo, hi = np.percentile(grey, (2.0, source.upper_percentile))
    return (np.clip((grey - lo) / max(hi - lo, 1.0), 0.0, 1.0) ** source.gamma).astype(np.float32)


@lru_cache(maxsize=1)
def load_texture_bank() -> TextureBank:
    """Decode and preprocess every source once per process (well under a second).

    Raises:
        DatasetError: a bundled scikit-image photo does not load (see :func:`_skimage_image`).
    """
    materials = {name: _photo_texture(src) for name, src in MATERIALS.items() if src is not None}
    backgrounds = []
    for name in BACKGROUND_SOURCES:
        im = _skimage_image(name).convert("RGB")
        backgrounds.append(_resized(im, min(1.0, _BACKGROUND_MAX_SIDE / max(im.size))))
    return TextureBank(materials, tuple(backgrounds))


def hsv_colour(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    """float32 RGB ``[3]`` in [0, 1] of an HSV colour (hue in degrees, wrapped)."""
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value), dtype=np.float32)


def _procedural(material: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Procedural pattern in [0, 1] at rotated coordinates ``u, v`` (pixels)."""
    if material in ("striped", "wavy"):
        period = rng.uniform(5.0, 11.0)
        amplitude = rng.uniform(0.0, 1.0) if material == "striped" else rng.uniform(0.35, 0.6) * period
        u = u + amplitude * np.sin(2 * np.pi * v / rng.uniform(12.0, 24.0))
        return 0.5 + 0.5 * np.tanh(2.5 * np.sin(2 * np.pi * u / period))
    if material == "checkered":
        period = rng.uniform(9.0, 16.0)
        return 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    if material == "dotted":  # dots on a hexagonal lattice
        period = rng.uniform(7.0, 12.0)
        row_height = period * np.sqrt(3) / 2
        row = np.round(v / row_height)
        shifted = u - (row % 2) * period / 2
        dist = np.hypot(shifted - period * np.round(shifted / period), v - row * row_height)
        radius = rng.uniform(0.22, 0.36) * period
        return np.clip(radius + 0.75 - dist, 0.0, 1.5) / 1.5
    raise KeyError(f"unknown procedural material {material!r}; valid: {[m for m, s in MATERIALS.items() if s is None]}")


def material_pattern(bank: TextureBank, material: str, yy: np.ndarray, xx: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Grey pattern of ``material`` over an object, randomly rotated, zoomed and cropped.

    Args:
        bank: from :func:`load_texture_bank`.
        material: a key of :data:`MATERIALS`.
        yy, xx: float32 ``[h, w]`` pixel offsets from the object centre (image pixels).
        rng: appearance generator.

    Returns:
        float32 ``[h, w]`` in [0, 1].
    """
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * xx - sin * yy, sin * xx + cos * yy
    if MATERIALS[material] is None:
        pattern = _procedural(material, u, v, rng) + rng.normal(0.0, 0.05, size=u.shape)
    else:
        texture = bank.materials[material]
        zoom = np.exp(rng.uniform(np.log(0.7), np.log(1.6)))  # texture pixels per image pixel
        size = np.array(texture.shape, dtype=np.float64)
        reach = np.minimum(zoom * (np.abs(u).max() + np.abs(v).max() + 2), size / 2)  # stay inside when possible
        cy, cx = rng.uniform(reach, size - reach)
        pattern = ndimage.map_coordinates(texture, [cy + zoom * v, cx + zoom * u], order=1, mode="mirror")
    contrast = rng.uniform(0.75, 1.2)
    return np.clip(0.5 + (pattern - 0.5) * contrast, 0.0, 1.0).astype(np.float32)


def material_colours(material: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(dark, light)`` float32 RGB ``[3]`` duotone of one object: the material's hue range, jittered."""
    hue_range = MATERIAL_HUES.get(material, (0.0, 360.0))
    hue = rng.uniform(0.0, 360.0) if rng.random() < ANY_HUE_PROB else rng.uniform(*hue_range)
    saturation = rng.uniform(0.35, 0.85)
    dark = hsv_colour(hue + rng.uniform(-15, 15), saturation, rng.uniform(0.08, 0.35))
    light = hsv_colour(hue, saturation * rng.uniform(0.4, 0.9), rng.uniform(0.7, 1.0))
    return dark, light


def background(bank: TextureBank, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A softened random crop of a bundled photo, blended with a colour gradient.

    Returns:
        float32 ``[height, width, 3]`` RGB in [0, 1].
    """
    photo = bank.backgrounds[rng.integers(len(bank.backgrounds))]
    side = rng.uniform(0.35, 1.0) * min(photo.width / width, photo.height / height)
    crop_w, crop_h = width * side, height * side
    x0, y0 = rng.uniform(0, photo.width - crop_w), rng.uniform(0, photo.height - crop_h)
    im = photo.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 2.0)))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bg = np.asarray(im, dtype=np.float32).reshape(-1, 3) * (1.0 / 255.0)
    # One linear colour map: desaturate (saturation), pull towards the mean grey (contrast), mix with a gradient.
    saturation, contrast, mix = rng.uniform(0.3, 1.0), rng.uniform(0.45, 0.85), rng.uniform(0.15, 0.45)
    desaturate = saturation * np.eye(3, dtype=np.float32) + (1.0 - saturation) / 3.0
    c0, c1 = (hsv_colour(rng.uniform(0, 360), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.9)) for _ in range(2))
    offset = (1 - mix) * (1 - contrast) * float(bg.mean()) + mix * c0
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.linspace(0, 1, width, dtype=np.float32)[None, :] + \
        np.sin(angle) * np.linspace(0, 1, height, dtype=np.float32)[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    out = (bg @ ((1 - mix) * contrast * desaturate) + offset).reshape(height, width, 3)
    out += ramp[..., None] * (mix * (c1 - c0))
    return np.clip(out, 0.0, 1.0, out=out)
