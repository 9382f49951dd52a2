"""The prototype baseline: masked average pooling + cosine similarity (PANet / PFENet / RePRI lineage)."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..data.base import IGNORE_INDEX
from .base import FewShotMethod, check_support


def downsample_masks(
    masks: torch.Tensor, size: tuple[int, int], num_classes: int | None = None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Soft one-hot masks at feature resolution by area averaging.

    Args:
        masks: int64 ``[K, H, W]`` with labels ``0..C-1`` and ``ignore_index``.
        size: ``(h, w)`` feature resolution.
        num_classes: ``C``; default ``max label + 1`` (at least 2).

    Returns:
        float32 ``[K, C, h, w]``: the fraction of each feature cell covered by each label (ignore pixels count for
        no label, so a cell half covered by ignore sums to 0.5).
    """
    if num_classes is None:
        valid = masks != ignore_index
        num_classes = max(2, int(masks[valid].max()) + 1) if valid.any() else 2
    (n, height, width), (h, w) = masks.shape, size
    if height % h == 0 and width % w == 0:  # exact blocks: count label pixels per cell on integers (cheap)
        blocks = masks.view(n, h, height // h, w, width // w)
        counts = torch.stack([(blocks == c).sum((2, 4), dtype=torch.int32) for c in range(num_classes)], 1)
        return counts.float() / ((height // h) * (width // w))
    onehot = torch.stack([masks == c for c in range(num_classes)], 1).float()  # ignore pixels match no label
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
        weights = downsample_masks(support_masks, tuple(support_features.shape[-2:]), num_classes=2)
        per_shot = masked_average_pooling(support_features, weights)  # [K, 2, D]
        self.prototypes = per_shot.mean(0)
        return self

    def fit_predict_episodes(self, support_features, support_masks, query_features, size):
        """Vectorised over E episodes: ``[E, K, D, h, w]``, ``[E, K, H, W]``, ``[E, Q, D, h, w]`` ->
        logits ``[E, Q, 2, H, W]``; equal to looping :meth:`fit_predict` (a test checks it)."""
        e, k, d, h, w = support_features.shape
        q = query_features.shape[1]
        check_support(support_features.reshape(e * k, d, h, w), support_masks.flatten(0, 1))
        weights = downsample_masks(support_masks.flatten(0, 1), (h, w), num_classes=2)
        prototypes = masked_average_pooling(support_features.reshape(e * k, d, h, w), weights).view(e, k, 2, d).mean(1)
        f = F.normalize(query_features, dim=2)
        p = F.normalize(prototypes, dim=2)
        logits = self.temperature * torch.einsum("eqdhw,ecd->eqchw", f, p)  # e: episode, q: query, c: bg/fg
        logits = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        self.prototypes = prototypes[-1]
        return logits.view(e, q, 2, *size)

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
