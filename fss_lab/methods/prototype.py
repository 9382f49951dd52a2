"""The prototype baseline: masked average pooling + cosine similarity (PANet / PFENet / RePRI lineage)."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..data.base import IGNORE_INDEX
from .base import FewShotMethod, check_support


def downsample_masks(masks: torch.Tensor, size: tuple[int, int], ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Soft one-hot masks at feature resolution by area averaging.

    Args:
        masks: int64 ``[K, H, W]`` with labels ``0..C-1`` and ``ignore_index``.
        size: ``(h, w)`` feature resolution.

    Returns:
        float32 ``[K, C, h, w]``: the fraction of each feature cell covered by each label (ignore pixels count for
        no label, so a cell half covered by ignore sums to 0.5). ``C = max label + 1`` (at least 2).
    """
    valid = masks != ignore_index
    n_classes = max(2, int(masks[valid].max()) + 1) if valid.any() else 2
    onehot = F.one_hot(torch.where(valid, masks, 0), n_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    return F.adaptive_avg_pool2d(onehot, size) if onehot.shape[-2:] != size else onehot


def masked_average_pooling(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Masked average pooling (MAP): one prototype per mask channel and image.

    Args:
        features: float ``[K, D, h, w]``.
        weights: float ``[K, C, h, w]`` non-negative pixel weights (soft masks).

    Returns:
        float ``[K, C, D]``: ``sum_x w(x) f(x) / (sum_x w(x) + eps)`` (PANet, Wang et al. 2019, Eq. 1).
    """
    num = torch.einsum("kchw,kdhw->kcd", weights, features)  # k: shot, c: label, d: channel
    return num / (weights.sum((-2, -1))[..., None] + eps)


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """``temperature * cos(f(x), p_c)`` for every pixel and prototype.

    Args:
        features: ``[Q, D, h, w]``; prototypes: ``[C, D]``.

    Returns:
        logits ``[Q, C, h, w]`` (scaled cosine similarities; PANet Eq. 2 with alpha = temperature).
    """
    f = F.normalize(features, dim=1)
    p = F.normalize(prototypes, dim=1)
    return temperature * torch.einsum("qdhw,cd->qchw", f, p)


class PrototypeBaseline(FewShotMethod):
    """1-way K-shot prototype baseline: background and foreground prototypes by masked average pooling, then
    cosine similarity with a temperature; K-shot by averaging the K per-shot prototypes (PFENet).

    Training-free and inductive: the query is not used to fit.

    Args:
        temperature: scale of the cosine similarities (20 as in PANet/RePRI); it changes the logits' sharpness,
            not the argmax.

    After :meth:`fit`, ``prototypes`` holds ``[2, D]`` (background, foreground).
    """

    name: ClassVar[str] = "prototype"

    def __init__(self, temperature: float = 20.0):
        self.temperature = temperature
        self.prototypes: torch.Tensor | None = None

    def fit(self, support_features, support_masks, query_features=None) -> "PrototypeBaseline":
        check_support(support_features, support_masks)
        weights = downsample_masks(support_masks, tuple(support_features.shape[-2:]))[:, :2]
        per_shot = masked_average_pooling(support_features, weights)  # [K, 2, D]
        self.prototypes = per_shot.mean(0)
        return self

    def predict(self, query_features, size):
        if self.prototypes is None:
            raise RuntimeError("call fit() with a support set before predict()")
        if query_features.dim() != 4 or query_features.shape[1] != self.prototypes.shape[1]:
            raise ValueError(
                f"query_features must be [Q, {self.prototypes.shape[1]}, h, w] like the supports, "
                f"got {tuple(query_features.shape)}"
            )
        logits = cosine_logits(query_features, self.prototypes, self.temperature)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
