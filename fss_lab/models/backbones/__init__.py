"""Backbones with named feature levels, a timm-style registry, and the preprocessing tied to their weights.

Importing this package registers ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``,
``resnet50_dilated`` and ``resnet101_dilated``.
"""
from .base import IMAGENET_PREPROCESSING, TF_LITE_PREPROCESSING, Backbone, Preprocessing
from .registry import UnknownBackboneError, create_backbone, list_backbones, register_backbone
from .efficientnet_lite import (  # noqa: E402  (registers efficientnet_lite0/1/2)
    EfficientNetLite,
    EfficientNetLite0,
    efficientnet_lite0,
    efficientnet_lite0_classifier,
    efficientnet_lite0_weights_path,
    efficientnet_lite1,
    efficientnet_lite2,
    efficientnet_lite_classifier,
    efficientnet_lite_weights_path,
    load_lukemelas_weights,
    lukemelas_key_map,
)
from .resnet import DilatedResNet, resnet50_dilated, resnet101_dilated  # noqa: E402

__all__ = [
    "Backbone",
    "Preprocessing",
    "IMAGENET_PREPROCESSING",
    "TF_LITE_PREPROCESSING",
    "register_backbone",
    "UnknownBackboneError",
    "list_backbones",
    "create_backbone",
    "EfficientNetLite",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "efficientnet_lite0_classifier",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite_classifier",
    "efficientnet_lite_weights_path",
    "lukemelas_key_map",
    "load_lukemelas_weights",
    "DilatedResNet",
    "resnet50_dilated",
    "resnet101_dilated",
]
