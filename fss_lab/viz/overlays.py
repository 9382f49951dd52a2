"""Pixel-level helpers for figures: undo normalisation, a fixed label palette, mask overlays."""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch

from ..labels import IGNORE_INDEX

__all__ = ["denormalize", "label_colors", "image_to_hwc", "overlay_mask", "BACKGROUND_COLOR", "IGNORE_COLOR"]

BACKGROUND_COLOR = (0.17, 0.18, 0.21)  # dark slate: label 0 in legends and mask-only views
IGNORE_COLOR = (0.78, 0.78, 0.78)  # light grey, drawn hatched over ignore (255) pixels
# A fixed list of well-separated colours (hand-ordered so the first few also look good on photos); grey is
# left out because it marks ignore pixels. Beyond it, label_colors() continues with spread-out hues.
_PALETTE_HEX = (
    "#ff7f2a", "#3d7dd8", "#2fb36b", "#e6194b", "#9b51e0", "#27c6d9", "#ffd21f", "#f032e6", "#a8d93b",
    "#3a9a8f", "#a0632a", "#f7a8c4", "#1f2a8a", "#9cf2c0", "#808000", "#cdb5ff", "#800000", "#ffd3a8",
)


def _hex_to_rgb(h: str) -> tuple[float, float, float]:
    return tuple(int(h[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def label_colors(n: int) -> np.ndarray:
    """Distinct RGB colours for labels ``0..n-1``; label 0 (background) is a dark neutral.

    Deterministic: the same ``n`` always gives the same colours, and ``label_colors(n)[:m] == label_colors(m)``.

    Args:
        n: number of labels (background included), ``>= 1``.

    Returns:
        float64 array ``[n, 3]`` with values in ``[0, 1]``.

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"label_colors needs n >= 1, got {n}")
    colors = [BACKGROUND_COLOR] + [_hex_to_rgb(h) for h in _PALETTE_HEX]
    k = 0
    while len(colors) < n:  # golden-angle hues, alternating lightness, for very many classes (COCO: 81)
        hue = (0.11 + k * 0.618033988749895) % 1.0
        colors.append(colorsys.hls_to_rgb(hue, 0.45 if k % 2 else 0.62, 0.75))
        k += 1
    return np.asarray(colors[:n], dtype=np.float64)


def denormalize(
    images: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor | np.ndarray:
    """Undo ``(x - mean) / std`` channel normalisation for display.

    Args:
        images: float ``[..., 3, H, W]`` normalised images (torch tensor or numpy array).
        mean, std: the 3 per-channel values used to normalise (e.g. ``episode.norm_mean`` / ``norm_std``).

    Returns:
        Same type and shape, ``images * std + mean`` clipped to ``[0, 1]``.

    Raises:
        ValueError: the channel dimension (third from last) is not 3, or ``mean`` / ``std`` do not have 3 values.
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"denormalize expects images [..., 3, H, W]; got shape {tuple(images.shape)}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B); got mean={tuple(mean)}, std={tuple(std)}")
    if isinstance(images, np.ndarray):
        m = np.asarray(mean, dtype=images.dtype).reshape(3, 1, 1)
        s = np.asarray(std, dtype=images.dtype).reshape(3, 1, 1)
        return np.clip(images * s + m, 0.0, 1.0)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


def image_to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as a float ``[H, W, 3]`` numpy array in ``[0, 1]``, ready for ``imshow``.

    Args:
        image: uint8 ``[H, W, 3]``, float ``[H, W, 3]`` in ``[0, 1]``, float ``[3, H, W]`` in ``[0, 1]``
            (torch tensors are read as CHW when their first dimension is 3), or grey ``[H, W]``.

    Returns:
        float64 ``[H, W, 3]``.

    Raises:
        ValueError: no channel dimension of size 3, or float values outside ``[0, 1]`` (normalised images:
            call :func:`denormalize` first).
    """
    is_tensor = isinstance(image, torch.Tensor)
    arr = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[0] == 3 and (is_tensor or arr.shape[-1] != 3):
        arr = arr.transpose(1, 2, 0)
    elif not (arr.ndim == 3 and arr.shape[-1] == 3):
        raise ValueError(f"image has shape {arr.shape}; expected [H, W, 3], [3, H, W] or [H, W]")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float image values span [{lo:.2f}, {hi:.2f}]; expected [0, 1]. For a normalised image call "
            "denormalize(image, mean, std) first; for 0..255 floats divide by 255 or pass uint8."
        )
    return np.clip(arr, 0.0, 1.0)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels whose label differs from a 4-neighbour (the image border does not count as a change)."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    return edge


def overlay_mask(
    image: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    colors: np.ndarray | Sequence[Sequence[float]] | None = None,
    ignore_index: int = IGNORE_INDEX,
    contour: bool = True,
) -> np.ndarray:
    """Tint the labelled pixels of an image with their label colour.

    Background (label 0) pixels are left unchanged; each label ``k >= 1`` is blended with ``colors[k]``;
    ignore pixels get grey diagonal hatching; with ``contour`` the inner boundary of each labelled region is
    drawn in the full label colour. Only pixels with a non-zero mask value change.

    Args:
        image: see :func:`image_to_hwc` (uint8 HWC, float HWC or float CHW in ``[0, 1]``).
        mask: integer labels ``[H, W]`` (binary or multi-class, ``ignore_index`` allowed), same H, W as image.
        alpha: opacity of the tint, in ``[0, 1]``.
        colors: ``[n, 3]`` RGB in ``[0, 1]`` for labels ``0..n-1``; default :func:`label_colors`.
        ignore_index: label drawn hatched grey.
        contour: draw region boundaries (1 pixel) in full colour.

    Returns:
        float64 ``[H, W, 3]`` in ``[0, 1]``.

    Raises:
        ValueError: mask not 2-D / size differs from the image, ``alpha`` outside ``[0, 1]``, a label with no
            colour (pass ``colors=label_colors(max_label + 1)``), or a bad image (see :func:`image_to_hwc`).
    """
    img = image_to_hwc(image)
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2 or m.shape != img.shape[:2]:
        raise ValueError(f"mask has shape {m.shape}; expected [H, W] = {img.shape[:2]} (the image's size)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = m.astype(np.int64)
    ignore = m == ignore_index
    labelled = (m != 0) & ~ignore
    max_label = int(m[labelled].max()) if labelled.any() else 0
    palette = label_colors(max(max_label + 1, 2)) if colors is None else np.asarray(colors, dtype=np.float64)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"colors must be [n, 3] RGB values in [0, 1]; got shape {palette.shape}")
    if max_label >= len(palette) or (labelled.any() and int(m[labelled].min()) < 0):
        raise ValueError(
            f"mask holds label {max_label} but colors has only {len(palette)} entries; "
            f"pass colors=label_colors({max_label + 1}) or check the mask"
        )
    out = img.copy()
    out[labelled] = (1 - alpha) * img[labelled] + alpha * palette[m[labelled]]
    if ignore.any():
        yy, xx = np.indices(m.shape)
        stripe = ((yy + xx) // 3) % 2 == 0
        grey = np.asarray(IGNORE_COLOR)
        out[ignore] = (1 - alpha / 2) * img[ignore] + alpha / 2 * grey
        hatch = ignore & stripe
        out[hatch] = 0.25 * img[hatch] + 0.75 * grey
    if contour:
        edge = _boundary(m) & labelled
        out[edge] = palette[m[edge]]
    return out
