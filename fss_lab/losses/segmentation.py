"""Segmentation cross-entropy with label smoothing (RePRI's base training) and PSPNet's auxiliary-loss combination.

Label smoothing follows RePRI (``src/train.py``, ``compute_loss`` with ``smoothing``): the target distribution is
``1 - eps`` on the true class and ``eps / (C - 1)`` on each other class. (PyTorch's ``label_smoothing`` puts
``eps / C`` on every class, the true one included: a slightly different target.)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX


def _check(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    if logits.dim() < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits [B, C, H, W] and target [B, H, W] do not match: got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}. Upsample the logits to the label size before the loss."
        )
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
    valid = target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[1]):
        bad = int(valid.max()) if int(valid.max()) >= logits.shape[1] else int(valid.min())
        raise ValueError(
            f"target holds class {bad} but the logits have {logits.shape[1]} classes (0..{logits.shape[1] - 1}, "
            f"{ignore_index} = ignore). Remap the labels (GFSSClassMap.base_label) or fix num_classes."
        )


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel cross-entropy, optionally label-smoothed (RePRI), averaged over the non-ignored pixels.

    ``L = -(1 / |V|) sum_{i in V} sum_c q_ic log softmax(z_i)_c`` with ``q_ic = 1 - eps`` for ``c = y_i`` and
    ``eps / (C - 1)`` otherwise (Eq. 1 of the GFSS-Capstone report with RePRI's smoothing); ``V`` = pixels whose
    target is not ``ignore_index``.

    Shape:
        logits: float ``[B, C, H, W]`` (or ``[B, C]``), unnormalised scores (not probabilities).
        target: int ``[B, H, W]`` (or ``[B]``), values in ``0..C-1`` or ``ignore_index``.
        returns: float scalar. 0 (with a gradient path) when every pixel is ignored, instead of NaN.

    Raises:
        ValueError: mismatched shapes, float targets, a target class ``>= C``, or ``eps`` outside ``[0, (C-1)/C]``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    _check(logits, target, ignore_index)
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    num_classes = logits.shape[1]
    # RePRI's target (1 - eps on y, eps / (C - 1) elsewhere) is PyTorch's smoothing with eps' = eps * C / (C - 1)
    # (PyTorch: (1 - eps') on y plus eps' / C everywhere); the fused kernel saves memory and time.
    eps = label_smoothing * num_classes / (num_classes - 1) if num_classes > 1 else 0.0
    if eps > 1.0:
        raise ValueError(f"label_smoothing {label_smoothing} with {num_classes} classes puts more mass on the other "
                         f"classes than on the true one; use at most {(num_classes - 1) / num_classes:.3f}")
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, label_smoothing=eps)


class SegmentationLoss(NamedTuple):
    """The parts of a PSPNet training loss (float scalars): ``total = main + aux_weight * aux``."""

    total: torch.Tensor
    main: torch.Tensor
    aux: torch.Tensor


def pspnet_loss(logits: torch.Tensor, target: torch.Tensor, aux_logits: torch.Tensor | None = None, *,
                aux_weight: float = 0.4, label_smoothing: float = 0.0,
                ignore_index: int = IGNORE_INDEX) -> SegmentationLoss:
    """PSPNet's deep supervision: main cross-entropy plus ``aux_weight`` times the auxiliary head's (Zhao et al.,
    CVPR 2017, Sec. 3.3: weight 0.4).

    Shape:
        logits, aux_logits: float ``[B, C, H, W]`` at the label resolution; ``aux_logits`` may be ``None``
            (no auxiliary head, e.g. a frozen backbone; then ``aux`` is 0).
        target: int ``[B, H, W]`` in ``0..C-1`` or ``ignore_index``.
        returns: :class:`SegmentationLoss` of float scalars.

    Raises:
        ValueError: as :func:`cross_entropy`; a negative ``aux_weight``.
    """
    if aux_weight < 0:
        raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
    main = cross_entropy(logits, target, label_smoothing=label_smoothing, ignore_index=ignore_index)
    if aux_logits is None or aux_weight == 0:
        aux = main.new_zeros(())
    else:
        aux = cross_entropy(aux_logits, target, label_smoothing=label_smoothing, ignore_index=ignore_index)
    return SegmentationLoss(main + aux_weight * aux, main, aux)


__all__ = ["cross_entropy", "pspnet_loss", "SegmentationLoss"]
