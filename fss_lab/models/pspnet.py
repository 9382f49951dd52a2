"""PSPNet (Zhao et al., CVPR 2017): pyramid pooling + bottleneck + 1x1 classifier on any registered backbone.

The base model of the transfer-learning FSS/GFSS line (RePRI, CWT, DIaM, GFSS fine-tuning): trained on the base
classes, then frozen; methods adapt a classifier on the *bottleneck features* (:meth:`PSPNet.features`, ``D``
channels: 512 for ResNets as in the papers, 128 for the EfficientNet-Lite0 default). fss-methods.md section 6.

Layout (names follow the PSPNet code of PFENet / RePRI / DIaM): ``backbone`` -> ``ppm`` (bins 1, 2, 3, 6: adaptive
average pool -> 1x1 conv -> BN -> ReLU, upsampled bilinearly and concatenated with the input) -> ``bottleneck``
(3x3 conv -> BN -> ReLU -> Dropout2d) -> ``classifier`` (1x1 conv). An auxiliary head (3x3 conv -> BN -> ReLU ->
Dropout2d -> 1x1 conv) on an earlier level helps train the backbone; the trainer weighs its loss (0.4 in PSPNet).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, create_backbone

#: Per-backbone defaults: the level the head reads, the auxiliary level, and the bottleneck width D.
PSPNET_DEFAULTS: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {"level": "s16_expanded", "aux_level": "s8", "bottleneck_dim": 128},
    "efficientnet_lite1": {"level": "s16_expanded", "aux_level": "s8", "bottleneck_dim": 128},
    "efficientnet_lite2": {"level": "s16_expanded", "aux_level": "s8", "bottleneck_dim": 128},
    "resnet50_dilated": {"level": "layer4", "aux_level": "layer3", "bottleneck_dim": 512},
    "resnet101_dilated": {"level": "layer4", "aux_level": "layer3", "bottleneck_dim": 512},
}
_FALLBACK = {"bottleneck_dim": 256}


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module.

    Each bin ``b`` average-pools the input to ``b x b``, reduces it to ``branch_dim`` channels (1x1 conv, BN, ReLU)
    and upsamples it back (bilinear, ``align_corners=False``); the branches are concatenated after the input.

    Args:
        in_dim: input channels ``C``.
        bins: pooled grid sizes (PSPNet: 1, 2, 3, 6).
        branch_dim: channels per branch (PSPNet: ``C / len(bins)``).

    Shapes: ``[B, C, h, w]`` -> ``[B, C + len(bins) * branch_dim, h, w]``.
    """

    def __init__(self, in_dim: int, bins: Sequence[int] = (1, 2, 3, 6), branch_dim: int | None = None):
        super().__init__()
        if not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"PyramidPooling bins must be positive ints, got {tuple(bins)}")
        self.bins = tuple(int(b) for b in bins)
        self.branch_dim = branch_dim or max(1, round(in_dim / len(self.bins)))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_dim, self.branch_dim, 1)) for b in self.bins)
        self.out_dim = in_dim + len(self.bins) * self.branch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
                  for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


#: The keyword arguments of :class:`PSPNet` a training config's ``model`` section may set (``num_classes`` comes
#: from the fold); ``tests/test_pspnet.py`` checks it against the constructor.
PSPNET_ARGUMENTS = ("backbone", "weights", "level", "aux_level", "bins", "bottleneck_dim", "dropout", "freeze_backbone")


class PSPNet(nn.Module):
    """PSPNet segmentation model with its bottleneck features exposed.

    Args:
        backbone: a registered backbone name (``fss_lab.models.backbones.list_backbones()``) or a built
            :class:`Backbone`.
        num_classes: classifier outputs, ``1 + B`` (background + base classes) for base training.
        weights: backbone weights: ``"imagenet"`` (EfficientNet-Lite0: offline, from the installed package;
            dilated ResNets: torchvision's ``IMAGENET1K_V1``, downloaded on first use), a torchvision weights name,
            or ``None`` (random init, no download; what tests use). Ignored when ``backbone`` is a module.
        level / aux_level: backbone levels the head and the auxiliary head read (defaults in
            :data:`PSPNET_DEFAULTS`: ``s16_expanded`` / ``s8`` for EfficientNet-Lite0, ``layer4`` / ``layer3`` for
            ResNets).
        bins: pyramid pooling bins.
        bottleneck_dim: ``D``, the width of the features the classifier sees (128 / 512 by default).
        dropout: Dropout2d probability after the bottleneck and in the auxiliary head (0.1 in PSPNet).
        freeze_backbone: freeze every backbone parameter and keep its BatchNorm layers in eval mode, even under
            ``.train()`` (HSNet habit). A frozen model has **no auxiliary head** (``aux is None``): the auxiliary
            loss only serves to train the backbone.

    Attributes:
        backbone, ppm, bottleneck, classifier (``nn.Conv2d(D, num_classes, 1)``), aux (``nn.Sequential`` or None),
        feature_dim (``D``), level, aux_level, num_classes, config (the constructor arguments, for checkpoints),
        unreached_backbone_parameters (names of backbone parameters after ``level``, which the model never runs:
        frozen at construction, e.g. EfficientNet-Lite0's stride-32 stages).

    Forward: see :meth:`forward`. Input images are float ``[B, 3, H, W]`` normalised with
    ``model.backbone.preprocessing``.

    Raises:
        KeyError: a level the backbone does not have (lists the valid ones).
        ValueError: ``num_classes < 1`` or a bad ``bins``; UnknownBackboneError: unknown backbone name.
    """

    def __init__(self, backbone: str | Backbone = "efficientnet_lite0", num_classes: int = 16, *,
                 weights: Any = "imagenet", level: str | None = None, aux_level: str | None = None,
                 bins: Sequence[int] = (1, 2, 3, 6), bottleneck_dim: int | None = None, dropout: float = 0.1,
                 freeze_backbone: bool = False):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"PSPNet num_classes must be >= 1 (1 + number of base classes), got {num_classes}")
        if isinstance(backbone, str):
            name = backbone
            if weights == "imagenet" and name.startswith("resnet"):
                weights = "IMAGENET1K_V1"  # torchvision's name for its ImageNet weights (downloaded on first use)
            backbone = create_backbone(name, weights=weights)
        defaults = PSPNET_DEFAULTS.get(backbone.name, _FALLBACK)
        self.backbone = backbone
        self.level = backbone.check_levels(level or defaults.get("level") or list(backbone.levels)[-1])[0]
        self.aux_level = backbone.check_levels(aux_level or defaults.get("aux_level")
                                               or list(backbone.levels)[-2])[0]
        self.num_classes = int(num_classes)
        self.feature_dim = int(bottleneck_dim or defaults["bottleneck_dim"])
        self.freeze_backbone = bool(freeze_backbone)
        self.config = {"backbone": backbone.name, "num_classes": self.num_classes, "level": self.level,
                       "aux_level": self.aux_level, "bins": tuple(bins), "bottleneck_dim": self.feature_dim,
                       "dropout": dropout, "freeze_backbone": self.freeze_backbone}

        in_dim = backbone.levels[self.level][0]
        self.ppm = PyramidPooling(in_dim, bins)
        self.bottleneck = nn.Sequential(*_conv_bn_relu(self.ppm.out_dim, self.feature_dim, 3), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(self.feature_dim, self.num_classes, 1)
        self.aux: nn.Sequential | None = None
        if not self.freeze_backbone:
            aux_in, aux_dim = backbone.levels[self.aux_level][0], max(1, self.feature_dim // 2)
            self.aux = nn.Sequential(*_conv_bn_relu(aux_in, aux_dim, 3), nn.Dropout2d(dropout),
                                     nn.Conv2d(aux_dim, self.num_classes, 1))
        else:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.unreached_backbone_parameters = self._freeze_unreached()

    def _freeze_unreached(self) -> tuple[str, ...]:
        """Freeze backbone parameters the head never reaches (stages after ``level``): a probe backward on a
        small zero image in eval mode. They could not learn anyway, and DDP rejects parameters without gradients."""
        trainable = [(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad]
        if not trainable:
            return ()
        was_training = self.backbone.training
        self.backbone.eval()
        size = 2 * max(s for _, s in self.backbone.levels.values())
        probe = torch.zeros(1, 3, size, size, device=trainable[0][1].device)
        maps = self.backbone(probe, levels=tuple(dict.fromkeys((self.aux_level, self.level))))
        sum(m.sum() for m in maps.values()).backward()
        unreached = tuple(n for n, p in trainable if p.grad is None)
        for n, p in trainable:
            p.grad = None
            if n in unreached:
                p.requires_grad_(False)
        self.backbone.train(was_training)
        return unreached

    # ---- the pieces methods use -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "PSPNet":
        """Set train/eval mode; a frozen backbone stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    @property
    def preprocessing(self):
        """The input normalisation of the backbone's weights (:class:`~fss_lab.models.backbones.Preprocessing`)."""
        return self.backbone.preprocessing

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone level the head reads: float ``[B, 3, H, W]`` -> ``[B, C_level, ceil(H/s), ceil(W/s)]``.

        Computed without autograd when the backbone is frozen.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            return self.backbone(x, levels=(self.level,))[self.level]

    def head(self, backbone_feats: torch.Tensor) -> torch.Tensor:
        """PPM + bottleneck, "the features the classifier sees": ``[B, C_level, h, w]`` -> ``[B, D, h, w]``."""
        return self.bottleneck(self.ppm(backbone_feats))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``head(backbone_features(x))``: float ``[B, 3, H, W]`` -> bottleneck features ``[B, D, h, w]``."""
        return self.head(self.backbone_features(x))

    def classify(self, features: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """1x1 classifier on bottleneck features ``[B, D, h, w]`` -> logits ``[B, num_classes, *size]``.

        ``size``: ``(H, W)`` to upsample to (bilinear, ``align_corners=False``); ``None`` keeps ``(h, w)``.
        """
        logits = self.classifier(features)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Segment images.

        Args:
            x: float ``[B, 3, H, W]`` normalised with :attr:`preprocessing`.
            return_features: also return the bottleneck features.

        Returns:
            eval mode: logits ``[B, num_classes, H, W]`` (not probabilities), or ``(logits, features)``.
            train mode: ``(logits, aux_logits)`` where ``aux_logits`` is ``[B, num_classes, H, W]`` or ``None``
            (frozen backbone), or ``(logits, aux_logits, features)``; ``features`` is ``[B, D, h, w]``.

        Raises:
            ValueError: not a float ``[B, 3, H, W]`` tensor.
        """
        Backbone.check_input(x, "PSPNet")
        size = x.shape[-2:]
        use_aux = self.training and self.aux is not None and not self.freeze_backbone
        levels = (self.aux_level, self.level) if use_aux and self.aux_level != self.level else (self.level,)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            maps = self.backbone(x, levels=levels)
        feats = self.head(maps[self.level])
        logits = self.classify(feats, size)
        if not self.training:
            return (logits, feats) if return_features else logits
        aux_logits = None
        if use_aux:
            aux_logits = F.interpolate(self.aux(maps[self.aux_level]), size=size, mode="bilinear",
                                       align_corners=False)
        return (logits, aux_logits, feats) if return_features else (logits, aux_logits)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (head, classifier, aux; the backbone too unless frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def extra_repr(self) -> str:
        return (f"level={self.level!r}, aux_level={self.aux_level!r}, feature_dim={self.feature_dim}, "
                f"num_classes={self.num_classes}, freeze_backbone={self.freeze_backbone}")


def build_pspnet(config: dict, weights: Any = None) -> PSPNet:
    """Rebuild a :class:`PSPNet` from its ``config`` attribute (as stored in checkpoints), ``weights=None``.

    Raises:
        KeyError / TypeError: ``config`` lacks a field or holds an unknown one.
    """
    cfg = dict(config)
    return PSPNet(cfg.pop("backbone"), cfg.pop("num_classes"), weights=weights, **cfg)
