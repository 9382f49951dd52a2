"""MM-Former's losses (Jiao et al., NeurIPS 2022, Sec. 2.4): weighted Dice on [bg, fg] and the ranking ``co_loss``.

Total step-2 loss ``L = 10 * L_M + 6 * L_co`` (``FEWSHOT_WEIGHT = 10``, ``co_loss`` weight ``10 * 0.6``), as the
official ``MM_Former.py``; details that reimplementations get wrong (fss-methods.md section 7):

* the Dice loss applies a **sigmoid** to the already-probability output ``[1 - fg, fg]`` (a second squashing), and
  ignore pixels (255) are set to background **before** the loss;
* ``co_loss`` (Eq. 5) is a BCE on the min-max-normalised similarities (eps ``1e-8`` in the official code): the
  proposal with the highest IoU with the query ground truth -> 1, the one with the lowest IoU -> 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.proposals import IOU_EPS, proposal_iou

DICE_EPS = 1e-8
"""Clamp of the Dice denominator (official ``weighted_dice_loss``)."""
CO_LOSS_EPS = 1e-8
"""Epsilon of the min-max normalisation of the similarities in ``co_loss`` (official: ``0.00000001``)."""
DICE_WEIGHT = 10.0
"""``FEWSHOT_WEIGHT`` of the official configs (lambda_1 of the paper)."""
CO_LOSS_WEIGHT = 6.0
"""``FEWSHOT_WEIGHT * 0.6`` (lambda_2 of the paper)."""
REDUCTIONS = ("sum", "mean", "none")
DICE_VARIANTS = ("official", "plain")
"""Stage-2 Dice variants: ``"official"`` (through a second sigmoid, MM-Former's code) and ``"plain"`` (no second
sigmoid: under the official one a blend that is the same negative constant everywhere scores better than a partial
match of a small object, and a fresh matching MLP settles there: all background)."""


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def weighted_dice_loss(prediction: torch.Tensor, target: torch.Tensor, weighted_val: float = 1.0,
                       reduction: str = "sum", eps: float = DICE_EPS, apply_sigmoid: bool = True) -> torch.Tensor:
    """Squared-denominator Dice loss on the two channels ``[bg, fg]`` (the official MM-Former ``fewshot_loss``).

    ``t = [target == 0, target == 1]`` (a pixel with any other value, e.g. 255, is in **neither** channel here;
    :func:`mmformer_dice_loss` maps 255 to background first, as MM-Former does); ``p = sigmoid(prediction)``;
    per image and channel ``d = 1 - 2 sum(p t) / max(sum p^2 + sum t^2, eps)``, times ``weighted_val``.

    Args:
        prediction: ``[B, 2, H, W]`` channel 0 background, 1 foreground. MM-Former passes its *probability-like*
            output ``[1 - fg, fg]`` and the sigmoid is applied again (``apply_sigmoid=True``, official); pass
            ``apply_sigmoid=False`` to use ``prediction`` as probabilities directly.
        target: ``[B, H, W]`` integer labels (0 bg, 1 fg).
        weighted_val: multiplier of every term (1.0).
        reduction: ``"sum"`` (official default): sum of all ``2B`` terms divided by ``B``, i.e. the per-image
            bg + fg Dice sum averaged over the batch; ``"mean"``: mean of the ``2B`` terms; ``"none"``: the
            ``[2B]`` terms, ordered ``(image 0 bg, image 0 fg, image 1 bg, ...)`` (``.view(B, 2)`` for a table).
        eps: clamp of the denominator (``1e-8``).
        apply_sigmoid: see ``prediction``.

    Returns:
        scalar for ``"sum"``/``"mean"``, ``[2B]`` for ``"none"``.

    Raises:
        ValueError: ``prediction`` not ``[B, 2, H, W]``, ``target`` not ``[B, H, W]`` of the same size, or an
            unknown ``reduction``.
    """
    if not isinstance(prediction, torch.Tensor) or prediction.dim() != 4 or prediction.shape[1] != 2:
        raise ValueError(f"weighted_dice_loss: prediction must be [B, 2, H, W] ([bg, fg]); got {_shape(prediction)}")
    if not isinstance(target, torch.Tensor) or target.shape != (prediction.shape[0], *prediction.shape[2:]):
        raise ValueError(f"weighted_dice_loss: target must be [B, H, W] = {(prediction.shape[0], *prediction.shape[2:])}"
                         f"; got {_shape(target)} (resize the prediction to the label size first)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"weighted_dice_loss: unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    b = prediction.shape[0]
    t = torch.stack([target == 0, target == 1], dim=1).to(prediction.dtype).reshape(2 * b, -1)
    p = prediction.reshape(2 * b, -1)
    if apply_sigmoid:
        p = torch.sigmoid(p)
    denom = torch.clamp((p ** 2).sum(-1) + (t ** 2).sum(-1), min=eps)
    loss = (1 - 2 * (t * p).sum(-1) / denom) * weighted_val
    if reduction == "sum":
        return loss.sum() / b
    if reduction == "mean":
        return loss.mean()
    return loss


def mmformer_dice_loss(output: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                       ignore_as_background: bool = True, apply_sigmoid: bool = True, reduction: str = "sum"
                       ) -> torch.Tensor:
    """MM-Former's L_M: :func:`weighted_dice_loss` on ``[1 - fg, fg]`` with ignore pixels set to background.

    Multiply by :data:`DICE_WEIGHT` (10) for the official total.

    Args:
        output: ``[B, 2, H, W]`` from :func:`fss_lab.models.mmformer.mask_matching.blend_proposals` (at label size).
        labels: ``[B, H, W]`` query labels, 0 bg, 1 fg, ``ignore_index``.
        ignore_index: 255.
        ignore_as_background: official ``labels[labels == 255] = 0`` (True); False leaves ignore pixels out of
            both channels.
        apply_sigmoid: the official second sigmoid (True).
        reduction: as :func:`weighted_dice_loss`.

    Returns:
        scalar (or ``[2B]``).
    """
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"mmformer_dice_loss: labels must be a tensor [B, H, W]; got {_shape(labels)}")
    if ignore_as_background:
        labels = torch.where(labels == ignore_index, torch.zeros_like(labels), labels)
    return weighted_dice_loss(output, labels, reduction=reduction, apply_sigmoid=apply_sigmoid)


def min_max_normalise(similarity: torch.Tensor, eps: float = CO_LOSS_EPS) -> torch.Tensor:
    """``(S - min S) / (max S - min S + eps)`` over the proposals of each image (Sec. 2.4).

    Args:
        similarity: ``[B, N]``.

    Returns:
        ``[B, N]`` in ``[0, 1)``.
    """
    lo = similarity.min(dim=1, keepdim=True).values
    hi = similarity.max(dim=1, keepdim=True).values
    return (similarity - lo) / (hi - lo + eps)


def co_loss(similarity: torch.Tensor, proposals: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
            eps: float = CO_LOSS_EPS, iou_eps: float = IOU_EPS) -> torch.Tensor:
    """MM-Former's ranking loss L_co (Eq. 5): BCE pushing the best-IoU proposal's similarity to 1, the worst to 0.

    ``S^ = min_max_normalise(S)``; IoU of every proposal with the query foreground (:func:`proposal_iou`, detached,
    ignore as background); ``pos = argmax IoU``, ``neg = argmin IoU`` (first index on ties, as ``torch.max``);
    ``L = mean_b -(log S^_pos + log(1 - S^_neg)) / 2`` (``F.binary_cross_entropy`` on ``[S^_neg, S^_pos]`` vs
    ``[0, 1]``, its log clamped at -100). Multiply by :data:`CO_LOSS_WEIGHT` (6) for the official total.

    Args:
        similarity: ``[B, N]`` cosine similarities (:func:`~fss_lab.models.mmformer.mask_matching.
            proposal_similarity`; before the MLP).
        proposals: ``[B, N, h, w]`` soft proposals (resized to the label size for the IoU, bilinear,
            ``align_corners=False``).
        labels: ``[B, H, W]`` query labels.
        ignore_index: counted as background (official).
        eps: min-max epsilon (``1e-8``). iou_eps: IoU epsilon (``1e-7``).

    Returns:
        scalar.

    Raises:
        ValueError: ``similarity`` not ``[B, N]`` matching ``proposals``.
    """
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2 or \
            not isinstance(proposals, torch.Tensor) or proposals.shape[:2] != similarity.shape:
        raise ValueError(f"co_loss: similarity [B, N] and proposals [B, N, h, w]; got {_shape(similarity)} and "
                         f"{_shape(proposals)}")
    with torch.no_grad():
        iou = proposal_iou(proposals, labels, ignore_index=ignore_index, eps=iou_eps)
        worst, best = iou.min(dim=1).indices, iou.max(dim=1).indices
    s = min_max_normalise(similarity, eps)
    rows = torch.arange(s.shape[0], device=s.device)
    pair = torch.stack([s[rows, worst], s[rows, best]], dim=-1)          # [B, 2]
    target = torch.cat([torch.zeros_like(pair[:, :1]), torch.ones_like(pair[:, :1])], dim=-1)
    return F.binary_cross_entropy(pair, target)


def mmformer_loss(output: torch.Tensor, similarity: torch.Tensor, proposals: torch.Tensor, labels: torch.Tensor,
                  dice_weight: float = DICE_WEIGHT, co_weight: float = CO_LOSS_WEIGHT, ignore_index: int = 255,
                  dice: str = "official") -> dict[str, torch.Tensor]:
    """MM-Former's step-2 loss terms, weighted as the official code: ``{"fewshot_loss", "co_loss", "total"}``.

    Args:
        output: ``[B, 2, H, W]`` blended ``[bg, fg]`` at label size; similarity: ``[B, N]``; proposals:
            ``[B, N, h, w]``; labels: ``[B, H, W]``.
        dice_weight: 10. co_weight: 6.
        dice: ``"official"`` (the second sigmoid, :func:`mmformer_dice_loss`) or ``"plain"`` (a variant: the same
            squared-denominator Dice on ``[1 - fg, fg]`` as it is, ``apply_sigmoid=False``; its minimum is the exact
            mask, so a constant negative blend no longer beats a partial match; see :data:`DICE_VARIANTS`).

    Returns:
        dict of scalars: ``fewshot_loss = 10 * L_M``, ``co_loss = 6 * L_co``, ``total`` their sum.
    """
    if dice not in DICE_VARIANTS:
        raise ValueError(f"mmformer_loss: dice must be one of {DICE_VARIANTS}, got {dice!r}")
    dice_term = mmformer_dice_loss(output, labels, ignore_index=ignore_index, apply_sigmoid=dice == "official")
    dice = dice_term * dice_weight
    rank = co_loss(similarity, proposals, labels, ignore_index=ignore_index) * co_weight
    return {"fewshot_loss": dice, "co_loss": rank, "total": dice + rank}
