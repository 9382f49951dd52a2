"""PFENet's learned part: feature reduction, masked-average prototype and the Feature Enrichment Module (FEM).

Tian et al., "Prior Guided Feature Enrichment Network for Few-Shot Segmentation" (TPAMI 2020), Sec. 3.3 and the
official ``model/PFENet.py`` (fss-methods.md section 4e):

* ``down_query`` / ``down_supp``: 1x1 conv (no bias) -> ReLU -> Dropout2d(0.5), mid-level features -> ``reduce_dim``;
* prototype: PFENet's ``Weighted_GAP``: ``sum(f * m) / (sum(m) + 0.0005)`` with the support mask resized bilinearly
  (``align_corners=True``) to the feature size, per shot, then averaged over the K shots;
* FEM, for each pyramid bin (PFENet: 60, 30, 15, 8; a bin ``<= 1`` is a fraction of the feature height,
  ``int(h * bin)``, as in the official code): adaptive average pooling of the query feature, the expanded prototype
  and the prior (bilinear, ``align_corners=True``) are concatenated and merged (1x1 conv, ReLU); from the second
  bin on the previous bin's output is resized in and fused (``alpha_conv`` 1x1 conv, ReLU, residual); two 3x3
  convs with a residual (``beta_conv``); an auxiliary 2-way classifier per bin (``inner_cls``); the bins are
  resized back, concatenated, ``res1`` (1x1) + ``res2`` (two 3x3, residual) and the final 2-way classifier.
* loss: cross-entropy (ignore 255) of the final logits + ``aux_weight`` (1.0) x the mean of the per-bin auxiliary
  cross-entropies, every logit map bilinearly resized (``align_corners=True``) to the label size first.

On EfficientNet-Lite0 the mid-level feature is level ``s16`` (PFENet concatenates ResNet layer2 + layer3) and the
prior comes from ``s16`` -> ``s32`` (:mod:`fss_lab.models.pfenet_prior`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import IGNORE_INDEX

#: PFENet's ``Weighted_GAP`` epsilon on the mask area.
WEIGHTED_GAP_EPS = 0.0005
#: PFENet's pyramid bins for 473 x 473 crops (features 60 x 60); the ratio version fits any feature size.
PFENET_BINS = (60, 30, 15, 8)
PFENET_RATIO_BINS = (1.0, 0.5, 0.25, 0.125)


def weighted_gap(features: torch.Tensor, masks: torch.Tensor, eps: float = WEIGHTED_GAP_EPS) -> torch.Tensor:
    """PFENet's masked average pooling (``Weighted_GAP``): one prototype per image.

    Args:
        features: float ``[S, C, h, w]``.
        masks: float ``[S, 1, h, w]`` foreground weights at feature size (already resized).
        eps: ``0.0005`` (official).

    Returns:
        float ``[S, C]``: ``sum(f * m) / (sum(m) + eps)``.

    Raises:
        ValueError: shapes that disagree.
    """
    if features.dim() != 4 or masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[0] != features.shape[0] \
            or masks.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"weighted_gap: features [S, C, h, w] and masks [S, 1, h, w] must agree; got "
                         f"{tuple(features.shape)} and {tuple(masks.shape)}")
    return (features * masks).sum((2, 3)) / (masks.sum((2, 3)) + eps)


def bin_size(bin_: float, height: int) -> int:
    """The pooled size of a pyramid bin: ``bin`` itself when ``> 1``, else ``int(height * bin)`` (at least 1)."""
    return int(bin_) if bin_ > 1 else max(1, int(height * bin_))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _conv3(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                         nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(inplace=True))


def _classifier(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=0.1),
                         nn.Conv2d(c, 2, 1))


class PFENetFEM(nn.Module):
    """The trainable part of PFENet on frozen features (reduction, prototype, FEM, classifiers).

    Args:
        mid_channels: channels of the mid-level features (112 for EfficientNet-Lite0 ``s16``; 1536 in PFENet).
        reduce_dim: PFENet's ``reduce_dim`` (256).
        bins: pyramid bins (:data:`PFENET_BINS`; ratios ``<= 1`` as :data:`PFENET_RATIO_BINS`).
        inter_scale: the inter-scale path (``alpha_conv``) between consecutive bins (PFENet: on).

    Shapes (:meth:`forward`): query ``[B, mid_channels, h, w]``, prototype ``[B, reduce_dim]``, prior
    ``[B, 1, h, w]`` -> ``(logits [B, 2, h, w], [aux logits [B, 2, b_i, b_i] per bin])`` (logits, not
    probabilities; channel 0 background).
    """

    def __init__(self, mid_channels: int, reduce_dim: int = 256, bins: Sequence[float] = PFENET_RATIO_BINS,
                 inter_scale: bool = True):
        super().__init__()
        if not bins:
            raise ValueError("PFENetFEM needs at least one pyramid bin, e.g. bins=(1.0, 0.5)")
        self.mid_channels, self.reduce_dim, self.bins = int(mid_channels), int(reduce_dim), tuple(bins)
        self.inter_scale = inter_scale
        c = self.reduce_dim
        self.down_query = nn.Sequential(nn.Conv2d(mid_channels, c, 1, bias=False), nn.ReLU(inplace=True),
                                        nn.Dropout2d(p=0.5))
        self.down_supp = nn.Sequential(nn.Conv2d(mid_channels, c, 1, bias=False), nn.ReLU(inplace=True),
                                       nn.Dropout2d(p=0.5))
        self.init_merge = nn.ModuleList(nn.Sequential(nn.Conv2d(2 * c + 1, c, 1, bias=False), nn.ReLU(inplace=True))
                                        for _ in self.bins)
        self.alpha_conv = nn.ModuleList(nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.ReLU(inplace=True))
                                        for _ in self.bins[1:])
        self.beta_conv = nn.ModuleList(_conv3(c) for _ in self.bins)
        self.inner_cls = nn.ModuleList(_classifier(c) for _ in self.bins)
        self.res1 = nn.Sequential(nn.Conv2d(c * len(self.bins), c, 1, bias=False), nn.ReLU(inplace=True))
        self.res2 = _conv3(c)
        self.cls = _classifier(c)

    def prototype(self, support: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Reduced support features pooled under the masks, averaged over shots.

        Args:
            support: mid-level features ``[B, K, mid_channels, h, w]``.
            masks: ``[B, K, H, W]`` float foreground weights (``label == 1``) at any size.

        Returns:
            float ``[B, reduce_dim]``.
        """
        b, k = support.shape[:2]
        f = self.down_supp(support.flatten(0, 1))
        m = _resize(masks.flatten(0, 1)[:, None].float(), f.shape[-2:])
        return weighted_gap(f, m).view(b, k, -1).mean(1)

    def forward(self, query: torch.Tensor, prototype: torch.Tensor, prior: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """FEM on one batch: see the class docstring for shapes."""
        q = self.down_query(query)
        h, w = q.shape[-2:]
        prior = _resize(prior, (h, w))
        pyramid, aux = [], []
        for i, b in enumerate(self.bins):
            size = (bin_size(b, h), bin_size(b, w))  # PFENet: square (bin, bin); per side here
            q_bin = F.adaptive_avg_pool2d(q, size)
            s_bin = prototype[:, :, None, None].expand(-1, -1, *size)
            merge = self.init_merge[i](torch.cat([q_bin, s_bin, _resize(prior, size)], 1))
            if i >= 1 and self.inter_scale:
                previous = _resize(pyramid[i - 1], size)
                merge = self.alpha_conv[i - 1](torch.cat([merge, previous], 1)) + merge
            merge = self.beta_conv[i](merge) + merge
            aux.append(self.inner_cls[i](merge))
            pyramid.append(_resize(merge, (h, w)))
        out = self.res1(torch.cat(pyramid, 1))
        out = self.res2(out) + out
        return self.cls(out), aux


def pfenet_loss(logits: torch.Tensor, aux: Sequence[torch.Tensor], labels: torch.Tensor, aux_weight: float = 1.0,
                ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """PFENet's training loss: ``CE(final) + aux_weight * mean_i CE(aux_i)`` (official ``aux_weight = 1.0``).

    Args:
        logits: ``[B, 2, h, w]``; aux: per-bin ``[B, 2, b, b]``; labels: int ``[B, H, W]`` (0 / 1 / 255).
        Every logit map is resized bilinearly (``align_corners=True``) to ``(H, W)`` before its cross-entropy.

    Returns:
        ``{"total", "main", "aux"}`` scalars.
    """
    y = labels.long()
    size = tuple(y.shape[-2:])
    main = F.cross_entropy(_resize(logits.float(), size), y, ignore_index=ignore_index)
    aux_loss = torch.stack([F.cross_entropy(_resize(a.float(), size), y, ignore_index=ignore_index)
                            for a in aux]).mean() if aux else main * 0
    return {"total": main + aux_weight * aux_loss, "main": main, "aux": aux_loss}


__all__ = ["PFENetFEM", "pfenet_loss", "weighted_gap", "bin_size", "WEIGHTED_GAP_EPS", "PFENET_BINS",
           "PFENET_RATIO_BINS"]
