"""PFENet's training-free prior mask (Tian et al., "Prior Guided Feature Enrichment Network", TPAMI 2020, Sec. 3.2).

The prior tells, for every query position, how well it matches *some* foreground position of the support, using
high-level (layer-4) features of a frozen backbone, without any learned parameter:

1. support layer-4 features come from the **mask-multiplied** support layer-3 features
   (:func:`masked_layer4_features`), and are masked again by the support mask resized to layer-4 size;
2. cosine similarity (eps ``1e-7`` added to the product of the two norms) of every query position with every
   support position; max over **all** support positions (masked ones give 0; the soft border pixels of the
   bilinearly resized mask take part);
3. per-image min-max normalisation to ``[0, 1]`` (eps ``1e-7``), **per shot**;
4. average over shots (K-shot), resized to the target size (bilinear, ``align_corners=True``).

These follow the official code (``model/PFENet.py``) and ``fss-methods.md`` sections 4e and 7.

Which backbone stages play "layer 3" and "layer 4" (:data:`PRIOR_LEVELS`):

* dilated ResNet (``resnet50_dilated``, ``resnet101_dilated``; PFENet's own): ``layer3`` (1024 ch) and ``layer4``
  (2048 ch), both at stride 8, so no resize between them.
* EfficientNet-Lite0 (``efficientnet_lite0``, timm ``tf_efficientnet_lite0``): "layer 3" = level ``s16`` (112 ch,
  stride 16; output of ``blocks[4]``, the last stride-16 stage), "layer 4" = level ``s32`` (320 ch, stride 32;
  ``blocks[5]`` then ``blocks[6]``). Unlike PFENet's dilated ResNet the prior is then computed on a stride-32 grid
  and upsampled; ``size=`` sets the grid it is returned on (e.g. the ``s16`` size, as PFENet returns it on the
  layer-3 grid).

Use alone as a training-free FSS baseline (:func:`prior_mask` then :func:`prior_fss_logits`) or as an input of a
model (PFENet's FEM, BAM, MSANet concatenate it with the query features).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PRIOR_EPS = 1e-7
"""Epsilon of the official PFENet prior: in the cosine denominator and in the min-max normalisation."""

PRIOR_LEVELS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("s16", "s32"),
    "resnet50_dilated": ("layer3", "layer4"),
    "resnet101_dilated": ("layer3", "layer4"),
}
"""Backbone registry name -> (level playing "layer 3", level playing "layer 4") for the prior mask."""


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def foreground_weights(masks: torch.Tensor) -> torch.Tensor:
    """Foreground weights of support masks, as PFENet builds them: ``(label == 1)`` as float.

    Args:
        masks: integer labels (0 background, 1 foreground, 255 ignore; any shape) -> ``label == 1``, so ignore
            counts as background, as in the official code; or float masks in ``[0, 1]``, returned as they are.

    Returns:
        float tensor of the same shape.
    """
    if masks.is_floating_point():
        return masks
    return (masks == 1).float()


def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize float masks ``[..., H, W]`` to ``size`` with ``align_corners=True`` (PFENet's mode).

    Returns:
        float ``[..., h, w]`` (values stay in ``[0, 1]``; border pixels become fractional).
    """
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=True)
    return out.reshape(*lead, *out.shape[-2:])


def masked_layer4_features(layer3: torch.Tensor, masks: torch.Tensor,
                           layer4: Callable[[torch.Tensor], torch.Tensor] | nn.Module) -> torch.Tensor:
    """Support layer-4 features computed from mask-multiplied layer-3 features (PFENet's support path).

    ``layer4(layer3 * resize(mask))``: the mask (``label == 1``) is resized bilinearly with ``align_corners=True``
    to the layer-3 size, multiplies the layer-3 features, and the rest of the backbone runs on the product, so the
    background never reaches layer 4. The official code does this under ``torch.no_grad()`` (frozen backbone); wrap
    the call the same way. Get ``layer4`` for a fss_lab backbone with :func:`layer4_path`.

    Args:
        layer3: support layer-3 features, float ``[S, C3, h3, w3]`` (S support images, e.g. ``B * K`` flattened).
        masks: support masks ``[S, H, W]`` (int labels: ``== 1`` is foreground, 255 ignore -> 0; or float in
            ``[0, 1]``).
        layer4: the module/callable mapping layer-3 features to layer-4 features.

    Returns:
        float ``[S, C4, h4, w4]``: pass them (reshaped to ``[B, K, C4, h4, w4]``) to :func:`prior_mask`.

    Raises:
        ValueError: ``layer3`` is not 4-D, or ``masks`` is not ``[S, H, W]`` with the same ``S``.
    """
    if not isinstance(layer3, torch.Tensor) or layer3.dim() != 4:
        raise ValueError(f"masked_layer4_features: layer3 must be [S, C, h, w]; got {_shape(layer3)}")
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3 or masks.shape[0] != layer3.shape[0]:
        raise ValueError(f"masked_layer4_features: masks must be [S, H, W] with S = {layer3.shape[0]} "
                         f"(layer3 {tuple(layer3.shape)}); got {_shape(masks)}")
    weights = resize_masks(foreground_weights(masks), layer3.shape[-2:]).unsqueeze(1).to(layer3.dtype)
    return layer4(layer3 * weights)


def layer4_path(backbone: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The part of a fss_lab backbone that maps its "layer 3" level to its "layer 4" level (:data:`PRIOR_LEVELS`).

    * ``EfficientNetLite0``: ``s16 -> s32`` is ``blocks[5]`` then ``blocks[6]``.
    * ``DilatedResNet``: ``layer3 -> layer4`` is ``backbone.layer4``.

    Raises:
        TypeError: a backbone with no known layer-3 -> layer-4 path (pass your own callable to
            :func:`masked_layer4_features`).
    """
    name = getattr(backbone, "name", type(backbone).__name__)
    if name == "efficientnet_lite0" and hasattr(backbone, "blocks"):
        return nn.Sequential(backbone.blocks[5], backbone.blocks[6])
    if hasattr(backbone, "layer4") and name in PRIOR_LEVELS:
        return backbone.layer4
    raise TypeError(f"layer4_path: no known layer-3 -> layer-4 path for backbone {name!r}; known: "
                    f"{sorted(PRIOR_LEVELS)}. Pass a callable to masked_layer4_features instead.")


def prior_mask(query_feat: torch.Tensor, support_feats: torch.Tensor, support_masks: torch.Tensor,
               size: Sequence[int] | None = None, eps: float = PRIOR_EPS, per_shot: bool = False) -> torch.Tensor:
    """PFENet prior mask: max cosine to the masked support, min-max normalised per shot, averaged over shots.

    For shot k: ``s = support_feats[:, k] * resize(mask_k)`` (bilinear, ``align_corners=True``, to the support
    layer-4 size); ``cos(i, j) = <s_j, q_i> / (|s_j| |q_i| + eps)``; ``p_k(i) = max_j cos(i, j)`` over **all**
    support positions j; ``p_k = (p_k - min p_k) / (max p_k - min p_k + eps)`` per image; resized to ``size``
    (bilinear, ``align_corners=True``); prior ``= mean_k p_k``. Source: PFENet (TPAMI 2020) Eq. 2-3 and the
    official code (``cosine_eps = 1e-7``; fss-methods.md section 7 "PFENet prior").

    Args:
        query_feat: query layer-4 features, float ``[B, C, h, w]``.
        support_feats: support layer-4 features from mask-multiplied layer-3 features
            (:func:`masked_layer4_features`), float ``[B, K, C, hs, ws]``.
        support_masks: support masks ``[B, K, H, W]`` at any resolution: int labels (``== 1`` foreground; 255
            ignore counts as background) or float weights in ``[0, 1]``.
        size: ``(H', W')`` of the output (default: the query feature size ``(h, w)``).
        eps: ``1e-7`` (official) in the cosine denominator and the min-max denominator.
        per_shot: return the per-shot priors ``[B, K, H', W']`` instead of their mean.

    Returns:
        float ``[B, 1, H', W']`` in ``[0, 1]`` (a score, not a logit or a calibrated probability); with
        ``per_shot=True``, ``[B, K, H', W']``.

    Raises:
        ValueError: a tensor of the wrong rank, or batch/shot/channel counts that disagree (the message names the
            tensor and its shape).
    """
    if not isinstance(query_feat, torch.Tensor) or query_feat.dim() != 4:
        raise ValueError(f"prior_mask: query_feat must be [B, C, h, w]; got {_shape(query_feat)}")
    b, c, h, w = query_feat.shape
    if not isinstance(support_feats, torch.Tensor) or support_feats.dim() != 5 or support_feats.shape[0] != b \
            or support_feats.shape[2] != c:
        raise ValueError(f"prior_mask: support_feats must be [B={b}, K, C={c}, hs, ws]; got {_shape(support_feats)}"
                         " (one shot: add the K axis with support_feats[:, None])")
    k = support_feats.shape[1]
    if not isinstance(support_masks, torch.Tensor) or support_masks.dim() != 4 or \
            tuple(support_masks.shape[:2]) != (b, k):
        raise ValueError(f"prior_mask: support_masks must be [B={b}, K={k}, H, W]; got {_shape(support_masks)}")
    out_size = (h, w) if size is None else tuple(int(s) for s in size)
    hs, ws = support_feats.shape[-2:]
    weights = resize_masks(foreground_weights(support_masks), (hs, ws)).to(support_feats.dtype)  # [B, K, hs, ws]
    q = query_feat.reshape(b, c, h * w)                                   # [B, C, Nq]
    q_norm = q.norm(dim=1, keepdim=True)                                  # [B, 1, Nq]
    priors = []
    for shot in range(k):
        s = (support_feats[:, shot] * weights[:, shot, None]).reshape(b, c, hs * ws)  # [B, C, Ns]
        s_norm = s.norm(dim=1, keepdim=True)                              # [B, 1, Ns]
        # cos[b, j, i]: support position j vs query position i; eps on the product of norms (official)
        cos = torch.bmm(s.transpose(1, 2), q) / (torch.bmm(s_norm.transpose(1, 2), q_norm) + eps)
        best = cos.max(dim=1).values                                      # [B, Nq]
        lo, hi = best.min(dim=1, keepdim=True).values, best.max(dim=1, keepdim=True).values
        best = (best - lo) / (hi - lo + eps)
        p = best.reshape(b, 1, h, w)
        if (h, w) != out_size:
            p = F.interpolate(p, size=out_size, mode="bilinear", align_corners=True)
        priors.append(p)
    stacked = torch.cat(priors, dim=1)                                    # [B, K, H', W']
    return stacked if per_shot else stacked.mean(dim=1, keepdim=True)


def prior_fss_logits(prior: torch.Tensor, threshold: float = 0.5, background: torch.Tensor | None = None,
                     size: Sequence[int] | None = None) -> torch.Tensor:
    """Two-way FSS scores from a prior mask: a training-free baseline (argmax -> background / foreground).

    * ``background=None``: ``[threshold, prior]``, so the argmax says foreground exactly where
      ``prior > threshold`` (ties go to background).
    * ``background`` given (e.g. a prior computed with the *background* as support, or ``1 - prior``):
      ``[background, prior]``; argmax compares the two scores.

    Args:
        prior: ``[B, 1, H, W]`` in ``[0, 1]`` (:func:`prior_mask`).
        threshold: constant background score (0.5 default; the prior is min-max normalised, so 0.5 is mid-range).
        background: optional ``[B, 1, H, W]`` background score.
        size: optional output ``(H', W')``; both maps are resized bilinearly (``align_corners=True``).

    Returns:
        float ``[B, 2, H', W']``, channel 0 background, 1 foreground. These are scores in ``[0, 1]``, not
        calibrated logits: use them for the argmax (prediction = ``out.argmax(1)``), not for a softmax.

    Raises:
        ValueError: ``prior`` (or ``background``) is not ``[B, 1, H, W]`` / shapes differ.
    """
    if not isinstance(prior, torch.Tensor) or prior.dim() != 4 or prior.shape[1] != 1:
        raise ValueError(f"prior_fss_logits: prior must be [B, 1, H, W]; got {_shape(prior)}")
    if background is None:
        background = torch.full_like(prior, float(threshold))
    elif not isinstance(background, torch.Tensor) or background.shape != prior.shape:
        raise ValueError(f"prior_fss_logits: background must have the prior's shape {tuple(prior.shape)}; "
                         f"got {_shape(background)}")
    out = torch.cat([background, prior], dim=1)
    if size is not None and tuple(size) != tuple(out.shape[-2:]):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)
    return out


def prior_from_backbone(backbone: nn.Module, query_images: torch.Tensor, support_images: torch.Tensor,
                        support_masks: torch.Tensor, size: Sequence[int] | str | None = "layer3",
                        eps: float = PRIOR_EPS) -> torch.Tensor:
    """The whole PFENet prior from images with a frozen fss_lab backbone (runs under ``torch.no_grad()``).

    Query: layer-4 features of the image. Support: layer-3 features, multiplied by the mask, through the rest of
    the backbone (:func:`masked_layer4_features`), then :func:`prior_mask`. Levels from :data:`PRIOR_LEVELS`.

    Args:
        backbone: a fss_lab backbone listed in :data:`PRIOR_LEVELS` (call ``.eval()`` first for frozen BN).
        query_images: ``[B, 3, H, W]`` normalised with ``backbone.preprocessing``.
        support_images: ``[B, K, 3, H, W]``.
        support_masks: ``[B, K, H, W]`` labels (1 foreground, 255 ignore) or float masks.
        size: ``"layer3"`` (default, PFENet returns the prior on the layer-3 grid), ``None`` (the layer-4 grid)
            or an explicit ``(h, w)``.
        eps: ``1e-7``.

    Returns:
        ``[B, 1, h, w]`` in ``[0, 1]``.

    Raises:
        ValueError: images or masks of the wrong shape. TypeError/KeyError: unknown backbone.
    """
    name = getattr(backbone, "name", type(backbone).__name__)
    if name not in PRIOR_LEVELS:
        raise KeyError(f"prior_from_backbone: no prior levels for backbone {name!r}; known: {sorted(PRIOR_LEVELS)}")
    l3, l4 = PRIOR_LEVELS[name]
    if not isinstance(support_images, torch.Tensor) or support_images.dim() != 5:
        raise ValueError(f"prior_from_backbone: support_images must be [B, K, 3, H, W]; got {_shape(support_images)}")
    b, k = support_images.shape[:2]
    if not isinstance(support_masks, torch.Tensor) or tuple(support_masks.shape[:2]) != (b, k) or \
            support_masks.dim() != 4:
        raise ValueError(f"prior_from_backbone: support_masks must be [B={b}, K={k}, H, W]; got "
                         f"{_shape(support_masks)}")
    with torch.no_grad():
        q = backbone(query_images, levels=(l3, l4))
        s3 = backbone(support_images.flatten(0, 1), levels=(l3,))[l3]
        s4 = masked_layer4_features(s3, support_masks.flatten(0, 1), layer4_path(backbone))
        s4 = s4.reshape(b, k, *s4.shape[1:])
        out_size = tuple(q[l3].shape[-2:]) if size == "layer3" else size
        return prior_mask(q[l4], s4, support_masks, size=out_size, eps=eps)
