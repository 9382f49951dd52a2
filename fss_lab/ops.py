"""Shared tensor operations of the few-shot methods: label resizing, masked average pooling, classifier extension.

Each concept is written once here; methods and losses pass their official variant explicitly (the resize mode, the
epsilon), so a reader sees in one line which convention a method follows (fss-methods.md section 7).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .labels import IGNORE_INDEX

#: Label resize modes of :func:`resize_labels`.
RESIZE_MODES = ("nearest", "area", "bilinear")


def resize_labels(labels: torch.Tensor, size: tuple[int, int], mode: str = "nearest", *,
                  num_classes: int | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Label maps at another resolution, in one of the three conventions the official codes use.

    Args:
        labels: integer ``[N, H, W]`` (labels ``0..C-1`` and ``ignore_index``, or a 0/1 valid mask).
        size: ``(h, w)`` target size in pixels.
        mode: ``"nearest"``: ``F.interpolate(mode="nearest")`` (DIaM, RePRI, GFSS-Capstone) -> int64 ``[N, h, w]``;
            ``"area"``: soft one-hot, the fraction of each target cell covered by each label (ignore pixels count
            for no label) -> float32 ``[N, C, h, w]``; ``"bilinear"``: one-hot channels resized bilinearly with
            ``align_corners=True`` (PFENet, MM-Former masks; ignore pixels are 0 in every channel) -> float32
            ``[N, C, h, w]``.
        num_classes: ``C`` for the soft modes (default ``max label + 1``, at least 2).

    Returns:
        As listed for ``mode``.

    Raises:
        ValueError: ``labels`` not ``[N, H, W]`` or an unknown mode.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [N, H, W], got shape {tuple(labels.shape)}")
    if mode == "nearest":
        return F.interpolate(labels[None].float(), size=size, mode="nearest")[0].long()
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    if num_classes is None:
        valid = labels != ignore_index
        num_classes = max(2, int(labels[valid].max()) + 1) if valid.any() else 2
    (n, height, width), (h, w) = labels.shape, tuple(size)
    if mode == "bilinear":
        onehot = torch.stack([labels == c for c in range(num_classes)], 1).float()
        return F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=True)
    if height % h == 0 and width % w == 0:  # exact blocks: count label pixels per cell on integers (cheap)
        bh, bw = height // h, width // w
        # the row of each cell first (contiguous, uint8 while a row's count fits), then the rows: exact integer
        # counts, so the same values as one sum over both block dimensions, in a fraction of the time
        inner = torch.uint8 if bw <= 255 else torch.int32
        blocks = labels.contiguous().view(n, h, bh, w, bw)
        counts = torch.stack([(blocks == c).view(torch.uint8).sum(4, dtype=inner).sum(2, dtype=torch.int32)
                              for c in range(num_classes)], 1)
        return counts.float() / (bh * bw)
    onehot = torch.stack([labels == c for c in range(num_classes)], 1).float()  # ignore pixels match no label
    return F.adaptive_avg_pool2d(onehot, (h, w)) if onehot.shape[-2:] != (h, w) else onehot


def masked_average_pooling(features: torch.Tensor, weights: torch.Tensor, eps: float, *,
                           pool_shots: bool = False) -> torch.Tensor:
    """Masked average pooling (MAP): one prototype per mask channel, per image or pooled over all images.

    Args:
        features: float ``[K, D, h, w]``.
        weights: float ``[K, C, h, w]`` non-negative pixel weights (hard or soft masks at feature resolution).
        eps: added to the mask area, passed explicitly by each method (the prototype baseline 1e-6; DIaM and RePRI
            1e-10; PFENet / MM-Former as their official code).
        pool_shots: ``False``: one prototype per image and channel, ``[K, C, D]`` (PANet / PFENet, then averaged
            over shots by the caller); ``True``: the pixels of all K images pooled, ``[C, D]`` (DIaM, RePRI).

    Returns:
        float ``[K, C, D]`` or ``[C, D]``: ``sum_x w(x) f(x) / (sum_x w(x) + eps)`` (PANet, Wang et al. 2019,
        Eq. 1), the sums running over the pixels of one image or of all images.

    Raises:
        ValueError: shapes that do not match.
    """
    if features.dim() != 4 or weights.dim() != 4 or weights.shape[0] != features.shape[0] \
            or weights.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"features [K, D, h, w] and weights [K, C, h, w] must agree in K, h, w; got "
                         f"{tuple(features.shape)} and {tuple(weights.shape)}")
    if pool_shots:  # per class, exactly the official (mask * f).sum((0, 2, 3)) / (mask.sum((0, 2, 3)) + eps)
        return torch.stack([(weights[:, c:c + 1] * features).sum(dim=(0, 2, 3))
                            / (weights[:, c:c + 1].sum(dim=(0, 2, 3)) + eps) for c in range(weights.shape[1])])
    num = torch.einsum("kchw,kdhw->kcd", weights, features)  # k: shot, c: label, d: channel
    return num / (weights.sum((-2, -1))[..., None] + eps)


def base_classifier(model_or_classifier) -> nn.Conv2d:
    """The base model's 1x1 classifier: ``model.classifier`` or the ``nn.Conv2d`` itself.

    Raises:
        TypeError: not a 1x1 ``nn.Conv2d`` (names what was found).
    """
    clf = getattr(model_or_classifier, "classifier", model_or_classifier)
    if not isinstance(clf, nn.Conv2d) or clf.kernel_size != (1, 1):
        raise TypeError(f"expected a 1x1 nn.Conv2d classifier (or a model with .classifier), got {type(clf).__name__}"
                        + (f" with kernel {clf.kernel_size}" if isinstance(clf, nn.Conv2d) else ""))
    return clf


def classifier_rows(model_or_classifier) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Detached copies of a 1x1 classifier's ``weight [1 + B, D]`` and ``bias [1 + B]`` (``None`` without bias).

    Raises:
        TypeError: as :func:`base_classifier`.
    """
    clf = base_classifier(model_or_classifier)
    bias = None if clf.bias is None else clf.bias.detach().clone()
    return clf.weight.detach()[:, :, 0, 0].clone(), bias


def extend_classifier(base_weight: torch.Tensor, base_bias: torch.Tensor | None, novel_weight: torch.Tensor,
                      novel_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``1 + B + N``-way classifier: base rows first (as they are), novel rows appended.

    Args:
        base_weight: ``[1 + B, D]``; base_bias: ``[1 + B]`` or ``None`` (zeros).
        novel_weight: ``[N, D]``; novel_bias: ``[N]`` or ``None`` (zeros).

    Returns:
        ``(weight [1 + B + N, D], bias [1 + B + N])`` on ``novel_weight``'s device.

    Raises:
        ValueError: the rows disagree in ``D``.
    """
    if base_weight.dim() != 2 or novel_weight.dim() != 2 or base_weight.shape[1] != novel_weight.shape[1]:
        raise ValueError(f"base_weight [1+B, D] and novel_weight [N, D] must share D; got "
                         f"{tuple(base_weight.shape)} and {tuple(novel_weight.shape)}")
    dev = novel_weight.device
    zeros = lambda n: torch.zeros(n, dtype=novel_weight.dtype, device=dev)  # noqa: E731
    bb = zeros(base_weight.shape[0]) if base_bias is None else base_bias.to(dev)
    bn = zeros(novel_weight.shape[0]) if novel_bias is None else novel_bias.to(dev)
    return torch.cat([base_weight.to(dev), novel_weight]), torch.cat([bb, bn])


def class_ids_present(labels: torch.Tensor, class_ids: Sequence[int]) -> list[int]:
    """The ids of ``class_ids`` that occur in integer ``labels`` (any shape)."""
    return [int(c) for c in class_ids if bool((labels == c).any())]
