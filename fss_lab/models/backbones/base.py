"""The ``Backbone`` interface (named feature levels) and the ``Preprocessing`` tied to a backbone's weights."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation that belongs to a set of weights (as torchvision's weights objects carry theirs).

    A backbone expects ``(image - mean) / std`` per channel, where ``image`` is RGB float in ``[0, 1]``.

    Attributes:
        mean: per-channel mean, RGB order, in ``[0, 1]`` units.
        std: per-channel standard deviation, RGB order, in ``[0, 1]`` units.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"Preprocessing needs 3 RGB values for mean and std; got mean={self.mean}, std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing std must be positive; got {self.std}")

    def _stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() < 3 or images.shape[-3] != 3:
            raise ValueError(f"expected RGB images [..., 3, H, W]; got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"expected float images in [0, 1]; got dtype {images.dtype}. Convert uint8 images with x.float() / 255."
            )
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(3, 1, 1)
        return mean, std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB float ``[..., 3, H, W]`` in ``[0, 1]`` -> normalised backbone input of the same shape and dtype.

        Raises:
            ValueError: not 3 channels in dim ``-3``, or not a float tensor.
        """
        mean, std = self._stats(images)
        return (images - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: backbone input ``[..., 3, H, W]`` -> RGB float in ``[0, 1]`` (for figures)."""
        mean, std = self._stats(images)
        return images * std + mean


IMAGENET_PREPROCESSING = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
"""torchvision's ImageNet statistics (ResNets, PSPNet codebases)."""

TF_LITE_PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
"""Inputs scaled to ``[-1, 1]``: the TF-Lite convention of the EfficientNet-Lite weights."""


class Backbone(nn.Module):
    """A CNN that returns named feature maps ("levels").

    Subclasses set ``levels`` (level name -> ``(channels, stride)``, in network order), ``preprocessing`` and
    ``name``, and implement :meth:`_forward_levels`.

    Attributes:
        levels: ``{level: (channels, stride)}``; a level of stride ``s`` has spatial size ``ceil(H / s)``.
        preprocessing: the normalisation the weights expect (:class:`Preprocessing`).
        name: the registry name.
    """

    levels: dict[str, tuple[int, int]]
    preprocessing: Preprocessing
    name: str = "backbone"

    def check_levels(self, levels: Sequence[str] | None) -> tuple[str, ...]:
        """Validate requested level names (``None`` -> all levels); raise ``KeyError`` listing the valid ones."""
        if levels is None:
            return tuple(self.levels)
        if isinstance(levels, str):
            levels = (levels,)
        if len(levels) == 0:
            raise ValueError(f"{self.name}: no levels requested; choose from {list(self.levels)}")
        bad = [lv for lv in levels if lv not in self.levels]
        if bad:
            raise KeyError(f"{self.name} has no level(s) {bad}; valid levels: {list(self.levels)}")
        return tuple(levels)

    def feature_size(self, height: int, width: int, level: str) -> tuple[int, int]:
        """Spatial size ``(h, w)`` of ``level`` for an ``H x W`` input: ``(ceil(H / s), ceil(W / s))``."""
        stride = self.levels[self.check_levels((level,))[0]][1]
        return -(-height // stride), -(-width // stride)

    @staticmethod
    def check_input(x: torch.Tensor, who: str) -> None:
        """Raise ``ValueError`` unless ``x`` is a float tensor ``[B, 3, H, W]``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{who} expects images [B, 3, H, W]; got {shape}. Add a batch dim with x[None].")
        if not x.is_floating_point():
            raise ValueError(
                f"{who} expects float images normalised with .preprocessing; got dtype {x.dtype}. "
                "Use backbone.preprocessing.normalize(x.float() / 255)."
            )

    def forward(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Compute feature maps.

        Args:
            x: float ``[B, 3, H, W]``, normalised with ``self.preprocessing``.
            levels: level names to return (``None``: all). Only the layers they need are run.

        Returns:
            ``{level: Tensor [B, channels, ceil(H / stride), ceil(W / stride)]}`` in the order requested.

        Raises:
            ValueError: bad input shape/dtype. KeyError: unknown level (the message lists the valid ones).
        """
        self.check_input(x, self.name)
        wanted = self.check_levels(levels)
        out = self._forward_levels(x, set(wanted))
        return {lv: out[lv] for lv in wanted}

    def _forward_levels(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError
