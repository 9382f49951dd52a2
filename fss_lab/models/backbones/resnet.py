"""Dilated ResNet-50/101 (output stride 8), the backbone family of PSPNet-based FSS papers, from torchvision.

Differences from the papers' checkpoints, worth knowing before comparing numbers:

* PFENet, RePRI, CWT, BAM, MSANet and DIaM load PSPNet's "ResNet v2" checkpoints (``initmodel/resnet50_v2.pth``):
  a *deep stem* of three 3x3 convs (3->64 stride 2, 64->64, 64->128, each BN+ReLU) feeding layer1 with 128
  channels. torchvision's ResNet has the single 7x7 stem (64 channels), so those checkpoints do **not** load here;
  torchvision's ImageNet weights are a close but not identical starting point.
* Dilation: with ``replace_stride_with_dilation=[False, True, True]`` torchvision gives layer3 dilation 2 and
  layer4 dilation 4 with the strides removed (output stride 8, feature size ``ceil(S / 8)``, e.g. 53 for 417),
  as in the papers; the first block of each dilated layer keeps the previous dilation in its 3x3 conv, whereas
  the PSPNet code dilates every block of the layer.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from .base import IMAGENET_PREPROCESSING, Backbone, Preprocessing
from .registry import register_backbone

_LEVELS = {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 8), "layer4": (2048, 8)}


class DilatedResNet(Backbone):
    """A torchvision ResNet with layer3/layer4 dilated (output stride 8); classifier head removed.

    Levels: ``layer1`` (256 ch, stride 4), ``layer2`` (512, 8), ``layer3`` (1024, 8), ``layer4`` (2048, 8).

    Args:
        builder: ``torchvision.models.resnet50`` or ``resnet101``.
        name: registry name.
        weights: as torchvision takes it: ``None`` (random init, no download), a weights enum member, or its
            name (``"IMAGENET1K_V1"``, ``"DEFAULT"``); torchvision downloads it on first use.
        **kwargs: passed to the torchvision builder (e.g. ``progress=False``).

    Input: float ``[B, 3, H, W]`` normalised with ImageNet statistics (``self.preprocessing``).
    """

    def __init__(self, builder: Callable[..., tv_resnet.ResNet], name: str, weights: Any = None, **kwargs: Any):
        super().__init__()
        net = builder(weights=weights, replace_stride_with_dilation=[False, True, True], **kwargs)
        self.name = name
        self.levels = dict(_LEVELS)
        self.preprocessing = _preprocessing_of(weights, builder)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def _forward_levels(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name in self.levels:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
            if wanted.issubset(out):
                break
        return out


def _preprocessing_of(weights: Any, builder: Callable[..., tv_resnet.ResNet]) -> Preprocessing:
    """The mean/std of torchvision ``weights`` (ImageNet statistics when ``weights`` is ``None``)."""
    if weights is None:
        return IMAGENET_PREPROCESSING
    enum = {tv_resnet.resnet50: tv_resnet.ResNet50_Weights, tv_resnet.resnet101: tv_resnet.ResNet101_Weights}
    w = enum[builder].verify(weights) if builder in enum else weights
    tf = w.transforms()
    return Preprocessing(mean=tuple(tf.mean), std=tuple(tf.std))


@register_backbone("resnet50_dilated")
def resnet50_dilated(weights: Any = None, **kwargs: Any) -> DilatedResNet:
    """Dilated ResNet-50 (torchvision, 7x7 stem), output stride 8. ``weights=None``: no download (He et al., 2016)."""
    return DilatedResNet(tv_resnet.resnet50, "resnet50_dilated", weights=weights, **kwargs)


@register_backbone("resnet101_dilated")
def resnet101_dilated(weights: Any = None, **kwargs: Any) -> DilatedResNet:
    """Dilated ResNet-101 (torchvision, 7x7 stem), output stride 8. ``weights=None``: no download (He et al., 2016)."""
    return DilatedResNet(tv_resnet.resnet101, "resnet101_dilated", weights=weights, **kwargs)
