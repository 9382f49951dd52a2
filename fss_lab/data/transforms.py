"""Resize / pad / normalise transforms for (image, label) pairs, following the RePRI/DIaM/BAM test-time recipe.

Images are resized bilinearly, labels with nearest neighbour. Padding goes bottom/right: image pixels get 0 in raw
pixel space (black, as RePRI/DIaM/BAM pad at test time) and label pixels get 255 (ignore), so padding never counts
in a loss or an IoU. Normalisation is tied to the backbone's weights (ImageNet mean/std for torchvision ResNets,
mean = std = 0.5 for the TF-Lite EfficientNet weights): pass ``backbone.preprocessing``'s values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import IGNORE_INDEX
from .episode import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class PairTransform:
    """Resize (and optionally pad) an image/label pair and normalise the image.

    Args:
        size: ``(H, W)`` of the output in pixels.
        mode: ``"resize"`` stretches to exactly ``(H, W)``; ``"long_side_pad"`` scales the image so its longer side
            fits ``(H, W)`` keeping the aspect ratio, then pads bottom/right (label 255, image 0 before
            normalisation) as in RePRI/DIaM (fss-methods.md section 6).
        mean / std: RGB normalisation applied to pixels scaled to ``[0, 1]``.

    Call:
        ``transform(image, label)`` with ``image`` uint8 ``[H0, W0, 3]`` and ``label`` uint8 ``[H0, W0]`` returns
        ``(image float32 [3, H, W], label int64 [H, W])``. ``label`` may be ``None`` (then ``None`` is returned).

    Raises:
        ValueError: a bad ``size``/``mode``, or an image that is not ``[H, W, 3]``.
    """

    size: tuple[int, int] = (240, 320)
    mode: str = "resize"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (H, W) with both >= 8 pixels, got {self.size!r}")
        if self.mode not in ("resize", "long_side_pad"):
            raise ValueError(f"mode must be 'resize' or 'long_side_pad', got {self.mode!r}")

    @property
    def key(self) -> str:
        """A short string identifying the transform (used in feature-cache keys)."""
        return f"{self.mode}{self.size[0]}x{self.size[1]}_m{','.join(f'{v:g}' for v in self.mean)}"

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the resized content (before padding) for an input of ``height x width`` pixels."""
        if self.mode == "resize":
            return self.size
        scale = min(self.size[0] / height, self.size[1] / width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None):
        return self.image(image), (None if label is None else self.label(label))

    def image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H0, W0, 3]`` RGB -> normalised float32 ``[3, H, W]`` (bilinear, antialiased; black padding)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        h, w = self.resized_size(*image.shape[:2])
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        x = _pad(x, self.size, value=0.0)  # black in raw pixel space, as RePRI/DIaM pad at test time
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def label(self, label: np.ndarray) -> torch.Tensor:
        """Integer ``[H0, W0]`` label -> int64 ``[H, W]`` (nearest neighbour; padding 255)."""
        if label.ndim != 2:
            raise ValueError(f"expected a label [H, W], got shape {label.shape}")
        h, w = self.resized_size(*label.shape)
        y = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        y = F.interpolate(y[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        return _pad(y, self.size, value=IGNORE_INDEX)


def _pad(t: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims of ``t`` bottom/right to ``size``."""
    dh, dw = size[0] - t.shape[-2], size[1] - t.shape[-1]
    if dh == 0 and dw == 0:
        return t
    return F.pad(t, (0, dw, 0, dh), value=value)


def binary_episode_label(label: torch.Tensor, class_id: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """FSS episode label: ``class_id`` -> 1, every other class (and background) -> 0, ignore kept.

    Args:
        label: integer ``[..., H, W]`` dataset label (uint8 or int64).
        class_id: the episode class (dataset id).

    Returns:
        ``[..., H, W]`` of ``label``'s dtype in ``{0, 1, 255}`` (PFENet / RePRI convention, fss-methods.md section 2 step 3).
    """
    out = (label == class_id).to(label.dtype)
    return out.masked_fill_(label == ignore_index, ignore_index)
