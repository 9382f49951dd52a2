"""A frozen backbone that maps images to one feature tensor (the input of prototype, RePRI and DIaM heads)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import Backbone, Preprocessing


def _resolve_device(device: torch.device | str | None, module: nn.Module) -> torch.device:
    """``None`` -> where ``module``'s parameters are; ``"auto"`` -> cuda if available else cpu; else as given."""
    if device is None:
        param = next(module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FeatureExtractor(nn.Module):
    """A frozen :class:`~fss_lab.models.backbones.Backbone` returning one feature map per image.

    Frozen as in HSNet/PFENet meta-training: every parameter has ``requires_grad=False`` and the backbone stays
    in eval mode (BatchNorm statistics fixed) even when ``.train()`` is called on this module or a parent.
    Features are computed under ``torch.no_grad()`` (not ``inference_mode``, so that methods may later use them
    as inputs of trainable layers, e.g. DIaM's per-episode classifier).

    Args:
        backbone: the backbone (e.g. ``create_backbone("efficientnet_lite0")``).
        levels: level names; the first one fixes the output size, the others are resized to it (bilinear,
            ``align_corners=False``) and concatenated along channels in the order given.
        device: ``None`` (keep the backbone where it is), ``"auto"`` (cuda if available, else cpu) or a device.

    Shapes:
        input ``[B, 3, H, W]`` float, normalised with :attr:`preprocessing`;
        output ``[B, out_channels, ceil(H / stride), ceil(W / stride)]`` float32, on :attr:`device`.

    Raises:
        KeyError: a level the backbone does not have (the message lists the valid ones).
    """

    def __init__(self, backbone: Backbone, levels: Sequence[str] = ("s16",), device: torch.device | str | None = None):
        super().__init__()
        self.levels = backbone.check_levels(levels)
        self.backbone = backbone.to(_resolve_device(device, backbone))
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Keep the frozen backbone in eval mode whatever ``mode`` is (BatchNorm statistics never change)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the backbone (and so the output) lives; follows ``.to(device)``."""
        param = next(self.backbone.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def out_channels(self) -> int:
        """D, the channel count of the output: the sum over the requested levels."""
        return sum(self.backbone.levels[lv][0] for lv in self.levels)

    @property
    def stride(self) -> int:
        """Output stride in pixels (the first level's)."""
        return self.backbone.levels[self.levels[0]][1]

    @property
    def preprocessing(self) -> Preprocessing:
        """The normalisation the backbone's weights expect."""
        return self.backbone.preprocessing

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Output spatial size ``(h, w) = (ceil(H / stride), ceil(W / stride))`` for an ``H x W`` input."""
        return self.backbone.feature_size(height, width, self.levels[0])

    def check_normalization(self, mean: Sequence[float], std: Sequence[float], where: str = "images") -> None:
        """Raise ``ValueError`` if images normalised with ``mean``/``std`` do not match :attr:`preprocessing`.

        E.g. ``extractor.check_normalization(episode.norm_mean, episode.norm_std, "episode")`` catches ImageNet-
        normalised images fed to EfficientNet-Lite0 (which expects ``[-1, 1]``).
        """
        want = self.preprocessing
        if not (_close(mean, want.mean) and _close(std, want.std)):
            raise ValueError(
                f"{where} are normalised with mean={tuple(mean)}, std={tuple(std)} but {self.backbone.name} expects "
                f"mean={want.mean}, std={want.std}; build the dataset transform with extractor.preprocessing"
            )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images`` (float ``[B, 3, H, W]``) -> float32 ``[B, D, h, w]`` on :attr:`device`."""
        Backbone.check_input(images, f"FeatureExtractor({self.backbone.name})")
        maps = self.backbone(images.to(self.device, torch.float32), levels=self.levels)
        first = maps[self.levels[0]]
        size = first.shape[-2:]
        parts = [first] + [
            F.interpolate(maps[lv], size=size, mode="bilinear", align_corners=False) if maps[lv].shape[-2:] != size
            else maps[lv]
            for lv in self.levels[1:]
        ]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.float()

    def extra_repr(self) -> str:
        return f"levels={self.levels}, out_channels={self.out_channels}, stride={self.stride}, device={self.device}"


def _close(a: Sequence[float], b: Sequence[float], tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


from .feature_cache import FeatureCache  # noqa: E402  (re-export: the cache belongs with the extractor)

__all__ = ["FeatureExtractor", "FeatureCache", "ModelFeatures"]


class ModelFeatures(nn.Module):
    """A frozen view of a trained segmentation model for :class:`~fss_lab.models.feature_cache.FeatureCache`:
    ``images [B, 3, H, W] -> features float32 [B, C, h, w]``.

    Args:
        model: a trained :class:`~fss_lab.models.pspnet.PSPNet` (kept in eval mode, no gradients).
        source: ``"bottleneck"`` (``model.features``: what the classifier sees; DIaM, RePRI, last-layer
            fine-tuning) or ``"backbone"`` (``model.backbone_features``: fine-tuning all layers after the backbone).

    Raises:
        ValueError: an unknown ``source``.
    """

    def __init__(self, model: nn.Module, source: str = "bottleneck"):
        super().__init__()
        if source not in ("bottleneck", "backbone"):
            raise ValueError(f"source must be 'bottleneck' or 'backbone', got {source!r}")
        self.model, self.source = model, source

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images`` from :attr:`source`."""
        self.model.eval()
        images = images.to(self.device)
        out = self.model.features(images) if self.source == "bottleneck" else self.model.backbone_features(images)
        return out.float()
