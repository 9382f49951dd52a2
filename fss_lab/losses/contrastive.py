"""Supervised pixel-to-pixel contrastive loss (InfoNCE over sampled pixels) for base training.

Source: Liu, Zhang & Lu, "Towards Generalized Few-shot Segmentation: On Contrastive Learning and Background
Information Modeling" (NYU capstone report, 2022), Eq. 2-3, whose official code (hmdliu/GFSS-Capstone,
``src/contrast.py``) follows ContrastiveSeg (Wang et al., ICCV 2021) with Zhao et al.'s (ICCV 2021) hard/easy anchor
sampling. Details kept from the official code:

* labels are down-sampled to the feature grid with nearest interpolation, predictions are the argmax of the logits
  bilinearly resized to that grid (``align_corners=True``);
* per image, a class takes part only with **more than** ``max_views`` labelled pixels (ignore never takes part);
* ``n_view = min(max_samples // #(image, class) pairs, max_views)`` pixels per (image, class): half "hard" (label c,
  predicted != c) and half "easy" (predicted c) when both are available, else the other kind fills up;
* every sampled pixel is an anchor; positives = the other sampled pixels of its class (any image of the batch),
  negatives = the sampled pixels of other classes;
* each positive pair's denominator is its own term plus the negatives only (not the other positives);
* the per-anchor loss is scaled by ``temperature / base_temperature`` (0.1 / 0.07);
* background anchors: the official ``PixelContrastLoss`` defaults to background anchors **on**
  (``background_anchors=True``, the default here): background pixels are anchors like any class. The report's text
  excludes background from anchor sampling: ``background_anchors=False`` keeps background pixels as negatives for
  the other classes but drops their own anchor losses from the mean.

Deviations (documented, where the official code fails): a batch with no qualifying class gives a zero loss (the
official code crashes); anchors without any positive are left out of the mean (the official code gives NaN); the
log-denominator is computed with ``logaddexp`` (same value as the official max-subtracted form, no underflow).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..labels import IGNORE_INDEX

_NEG_FILL = -1e30  # finite "minus infinity" for masked logits: exp() is exactly 0, gradients stay finite


def contrastive_from_samples(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    anchor_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised InfoNCE over a fixed set of sampled pixels (report Eq. 2; official per-pair denominators).

    For anchor a, positive p (same label, p != a) and negatives n (other labels), with ``s_ij = f_i . f_j / t``::

        l(a) = -(t / t_base) * mean_p [ s_ap - log(exp(s_ap) + sum_n exp(s_an)) ]

    and the loss is the mean of ``l(a)`` over the anchors selected by ``anchor_mask`` that have at least one positive.

    Shape:
        features: float ``[N, D]`` pixel embeddings (the caller L2-normalises them if wanted).
        labels: int ``[N]`` class of each sampled pixel.
        anchor_mask: bool ``[N]`` (default all ``True``): which pixels act as anchors (all pixels still act as
            positives/negatives).
        Returns: float scalar, differentiable w.r.t. ``features``; ``0`` (with a graph) when no anchor has a positive.

    Raises:
        ValueError: shapes disagree.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features must be [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    n = features.shape[0]
    sim = features @ features.t() / temperature  # [N, N] anchor x contrast
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    pos, neg = same & ~eye, ~same
    neg_lse = torch.logsumexp(sim.masked_fill(~neg, _NEG_FILL), dim=1, keepdim=True)  # log sum_n exp(s_an)
    log_prob = sim - torch.logaddexp(sim, neg_lse)  # [N, N], used only at positive pairs
    n_pos = pos.sum(1)
    mean_log_prob_pos = (log_prob * pos).sum(1) / n_pos.clamp(min=1)
    keep = n_pos > 0
    if anchor_mask is not None:
        keep = keep & anchor_mask.to(device=keep.device, dtype=torch.bool)
    if not bool(keep.any()):
        return features.sum() * 0.0
    return -(temperature / base_temperature) * mean_log_prob_pos[keep].mean()


def sample_anchors(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    max_samples: int = 1024,
    max_views: int = 100,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard/easy anchor sampling per (image, class) within a batch (official ``_hard_anchor_sampling``).

    Shape:
        embeddings: float ``[B, D, h, w]``; labels, predictions: int ``[B, h, w]`` on the same grid.
        generator: CPU ``torch.Generator`` for the random picks (default: torch's global RNG).
        Returns: ``(features [T * V, D], classes [T * V])`` with ``T`` (image, class) pairs of ``V = n_view``
        pixels each, pair-major; empty ``[0, D]`` / ``[0]`` when no class has more than ``max_views`` pixels.

    Raises:
        ValueError: shapes disagree, or ``max_views``/``max_samples`` < 1.
    """
    b, d, h, w = embeddings.shape
    if labels.shape != (b, h, w) or predictions.shape != (b, h, w):
        raise ValueError(
            f"labels {tuple(labels.shape)} and predictions {tuple(predictions.shape)} must be [B, h, w] = {(b, h, w)} "
            "like the embeddings; down-sample labels with nearest interpolation first"
        )
    if max_views < 1 or max_samples < 1:
        raise ValueError(f"max_views ({max_views}) and max_samples ({max_samples}) must be >= 1")
    flat_f = embeddings.flatten(2).transpose(1, 2)  # [B, hw, D]
    flat_y, flat_p = labels.flatten(1), predictions.flatten(1)
    pairs = []  # (image, class)
    for i in range(b):
        values, counts = torch.unique(flat_y[i], return_counts=True)
        pairs += [(i, int(v)) for v, c in zip(values.tolist(), counts.tolist()) if v != ignore_index and c > max_views]
    if not pairs:
        return embeddings.new_zeros(0, d), labels.new_zeros(0)
    n_view = max(1, min(max_samples // len(pairs), max_views))
    feats, classes = [], []
    for i, c in pairs:
        is_c = flat_y[i] == c
        hard = torch.nonzero(is_c & (flat_p[i] != c)).flatten()
        easy = torch.nonzero(is_c & (flat_p[i] == c)).flatten()
        n_hard, n_easy = _hard_easy_counts(len(hard), len(easy), n_view)
        hard = hard[torch.randperm(len(hard), generator=generator)[:n_hard].to(hard.device)]
        easy = easy[torch.randperm(len(easy), generator=generator)[:n_easy].to(easy.device)]
        feats.append(flat_f[i, torch.cat([hard, easy])])
        classes.append(torch.full((n_view,), c, dtype=labels.dtype, device=labels.device))
    return torch.cat(feats), torch.cat(classes)


def _hard_easy_counts(num_hard: int, num_easy: int, n_view: int) -> tuple[int, int]:
    """How many hard and easy pixels to keep (official rule; ``num_hard + num_easy > n_view`` is guaranteed)."""
    if num_hard >= n_view / 2 and num_easy >= n_view / 2:
        return n_view // 2, n_view - n_view // 2
    if num_hard >= n_view / 2:
        return n_view - num_easy, num_easy
    return num_hard, n_view - num_hard


def pixel_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    max_samples: int = 1024,
    max_views: int = 100,
    ignore_index: int = IGNORE_INDEX,
    background_anchors: bool = True,
    background_index: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The report's pixel-to-pixel contrastive loss L_ctr (Eq. 2, summed into Eq. 3 with weight lambda).

    :func:`sample_anchors` then :func:`contrastive_from_samples`; see the module docstring for the official details.

    Shape:
        embeddings: float ``[B, D, h, w]`` pixel embeddings (L2-normalise them first, as ContrastiveSeg does, or the
            temperature 0.1 makes the dot products explode).
        labels: int ``[B, h, w]`` labels already on the feature grid (nearest down-sampling), ``ignore_index`` ignored.
        predictions: int ``[B, h, w]`` predicted classes (argmax) on the same grid; they pick hard/easy anchors.
        Returns: float scalar (0 with a graph when no class has more than ``max_views`` pixels).

    Args:
        background_anchors: ``True`` (official default): background pixels are anchors too; ``False`` (the
            report's text): background pixels are sampled as negatives but are not anchors.

    Raises:
        ValueError: shapes disagree.
    """
    feats, classes = sample_anchors(embeddings, labels, predictions, max_samples, max_views, ignore_index, generator)
    if feats.shape[0] == 0:
        return embeddings.sum() * 0.0
    anchor_mask = None if background_anchors else classes != background_index
    return contrastive_from_samples(feats, classes, temperature, base_temperature, anchor_mask)


class ContrastiveTerm(nn.Module):
    """``lambda * L_ctr`` as the base trainer's extra-loss hook (report Eq. 3: ``L_PT = L_ce + lambda L_ctr``).

    Call as ``term(features [B, D, h, w], labels [B, H, W], logits [B, C, H, W]) -> scalar``: labels are down-sampled
    to ``(h, w)`` with nearest interpolation, predictions are the argmax of the logits bilinearly resized to
    ``(h, w)`` (official), features pass through ``projection`` (if any) and are L2-normalised (``normalize=True``).

    Args:
        weight: lambda (0.1 in the official config; the report searched {0.01, 0.05, 0.1, 0.2, 0.4}).
        projection: optional module ``[B, D, h, w] -> [B, D', h, w]`` (ContrastiveSeg's projection head). It is a
            sub-module: give ``term.parameters()`` to the optimiser too.
        seed: seeds this term's own generator for anchor sampling (``None``: torch's global RNG).
        Other arguments: as :func:`pixel_contrastive_loss`.
    """

    def __init__(
        self,
        weight: float = 0.1,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = IGNORE_INDEX,
        background_anchors: bool = True,
        normalize: bool = True,
        projection: nn.Module | None = None,
        seed: int | None = 0,
    ):
        super().__init__()
        self.weight, self.temperature, self.base_temperature = weight, temperature, base_temperature
        self.max_samples, self.max_views, self.ignore_index = max_samples, max_views, ignore_index
        self.background_anchors, self.normalize, self.projection = background_anchors, normalize, projection
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"max_samples={self.max_samples}, max_views={self.max_views}, "
                f"background_anchors={self.background_anchors}, normalize={self.normalize}")

    def forward(self, features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``weight * L_ctr`` for a batch: features ``[B, D, h, w]``, labels ``[B, H, W]``, logits
        ``[B, C, H, W]`` -> float32 scalar. Raises ``ValueError`` on other shapes."""
        if features.dim() != 4 or labels.dim() != 3 or logits.dim() != 4 or not (
            features.shape[0] == labels.shape[0] == logits.shape[0]
        ):
            raise ValueError(
                "ContrastiveTerm expects features [B, D, h, w], labels [B, H, W], logits [B, C, H, W]; got "
                f"{tuple(features.shape)}, {tuple(labels.shape)}, {tuple(logits.shape)}"
            )
        size = tuple(features.shape[-2:])
        small = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        with torch.no_grad():
            pred = F.interpolate(logits.detach().float(), size=size, mode="bilinear", align_corners=True).argmax(1)
        emb = (self.projection(features) if self.projection is not None else features).float()  # fp16-safe
        if self.normalize:
            emb = F.normalize(emb, dim=1)
        loss = pixel_contrastive_loss(
            emb, small, pred, self.temperature, self.base_temperature, self.max_samples, self.max_views,
            self.ignore_index, self.background_anchors, generator=self.generator,
        )
        return self.weight * loss
