"""Triplet loss on pixel embeddings: the regulariser of GFSS fine-tuning (Myers-Dean et al., arXiv 2112.10982).

The paper adds a triplet loss (anchor and positive pixels of the same class, a negative pixel of another class,
a margin) to fine-tuning and reports that it narrows the gap between base and novel mIoU. Its sampling, distance,
margin and weight are not public (fss-methods.md section 4b). The choices made here, and why:

* **Class-balanced pixel sampling** (``max_per_class=64`` pixels per class and batch, drawn with a seeded
  generator): background and large base regions would otherwise supply almost every anchor, while the point of
  the regulariser is to separate the few novel pixels from the base classes; the cap also bounds the cost to
  ``(C * max_per_class)^2`` distances.
* **Labels at feature resolution by nearest-neighbour** down-sampling (as DIaM down-samples support masks);
  ignore pixels (255) are never sampled.
* **Cosine distance on L2-normalised embeddings** (``1 - cos``): PSPNet bottleneck features are post-ReLU with
  arbitrary norms; a scale-free distance makes one margin meaningful across backbones and training stages.
  ``distance="euclidean"`` (on normalised embeddings, in ``[0, 2]``) is offered too.
* **Batch-hard mining** (Hermans et al., "In Defense of the Triplet Loss", 2017): each anchor's farthest positive
  and closest negative; with few shots the hard pairs are the informative ones (novel vs the look-alike base
  class). ``mining="random"`` draws one positive and one negative per anchor uniformly (seeded).
* **Margin 0.3** on the cosine distance (range ``[0, 2]``, ``[0, 1]`` for non-negative features): large enough to
  act, small enough not to fight the cross-entropy. The loss weight (suggested 0.1 - 1) belongs to the caller
  (:class:`fss_lab.methods.finetune.FineTuneGFSS`'s ``triplet_weight``).

Equation (Schroff et al. 2015, FaceNet Eq. 1; batch-hard form of Hermans et al. Eq. 5), over the valid anchors
``a`` (those with at least one positive and one negative)::

    L = mean_a max(0, d(a, p(a)) - d(a, n(a)) + margin)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX

MINING = ("batch_hard", "random")
DISTANCES = ("cosine", "euclidean")


def pairwise_distances(embeddings: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Distances between L2-normalised embeddings.

    Shape:
        embeddings ``[M, D]`` float -> ``[M, M]`` float: ``1 - cos`` (``"cosine"``, in ``[0, 2]``) or
        ``||u - v||_2`` of the normalised vectors (``"euclidean"``; ``sqrt`` clamped at 1e-12 so the gradient
        stays finite for identical vectors).

    Raises:
        ValueError: an unknown ``distance``.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    u = F.normalize(embeddings, dim=1)
    cos = u @ u.t()
    if distance == "cosine":
        return 1.0 - cos
    return (2.0 - 2.0 * cos).clamp_min(1e-12).sqrt()


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    mining: str = "batch_hard",
    distance: str = "cosine",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Triplet margin loss over a set of labelled embeddings (see the module docstring for the equation).

    Shape:
        embeddings: float ``[M, D]``; labels: integer ``[M]`` (any ids). Returns a scalar tensor (0 with a
        gradient path when no anchor has both a positive and a negative, e.g. a single class).

    Args:
        margin: ``m >= 0`` in distance units.
        mining: ``"batch_hard"`` (farthest positive, closest negative) or ``"random"`` (one of each, uniformly,
            drawn with ``generator``).
        distance: ``"cosine"`` or ``"euclidean"`` (:func:`pairwise_distances`).

    Raises:
        ValueError: shapes that do not match, a negative margin, an unknown ``mining`` or ``distance``.
    """
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be [M, D] and labels [M]; got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
    dist = pairwise_distances(embeddings, distance)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg = ~same
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    if mining == "batch_hard":
        d_ap = dist.masked_fill(~pos, float("-inf")).max(1).values
        d_an = dist.masked_fill(~neg, float("inf")).min(1).values
    else:  # uniform among the valid partners: argmax of uniform noise restricted to them
        noise_device = generator.device if generator is not None else dist.device
        noise = torch.rand(dist.shape, generator=generator, device=noise_device).to(dist.device)
        d_ap = dist.gather(1, noise.masked_fill(~pos, -1.0).argmax(1, keepdim=True))[:, 0]
        d_an = dist.gather(1, noise.masked_fill(~neg, -1.0).argmax(1, keepdim=True))[:, 0]
    return F.relu(d_ap - d_an + margin)[valid].mean()


def sample_pixels(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_per_class: int = 64,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced pixel sample: up to ``max_per_class`` pixels of every class present, uniformly, seeded.

    Shape:
        features: float ``[B, D, h, w]``; labels: integer ``[B, H, W]`` at any resolution (nearest-neighbour
        resized to ``h x w``). Returns ``(embeddings [M, D], labels [M])`` with classes in ascending order.

    Raises:
        ValueError: mismatched batch sizes or ``max_per_class < 1``.
    """
    if features.dim() != 4 or labels.dim() != 3 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be [B, D, h, w] and labels [B, H, W] with the same B; got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    h, w = features.shape[-2:]
    small = labels if labels.shape[-2:] == (h, w) else \
        F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    flat_labels = small.reshape(-1).to(features.device)
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    chosen = []
    for c in torch.unique(flat_labels).tolist():
        if c == ignore_index:
            continue
        where = torch.nonzero(flat_labels == c).flatten()
        if len(where) > max_per_class:
            perm = torch.randperm(len(where), generator=generator, device=generator.device if generator else "cpu")
            where = where[perm[:max_per_class].to(where.device)]
        chosen.append(where)
    if not chosen:
        return flat[:0], flat_labels[:0]
    idx = torch.cat(chosen)
    return flat[idx], flat_labels[idx]


def pixel_triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    max_per_class: int = 64,
    mining: str = "batch_hard",
    distance: str = "cosine",
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Triplet loss on pixel embeddings: :func:`sample_pixels` then :func:`triplet_loss` (module docstring).

    Shape:
        features: float ``[B, D, h, w]`` (e.g. the PSPNet bottleneck output); labels: integer ``[B, H, W]``
        (255 ignored). Returns a scalar tensor.

    Raises:
        ValueError: see :func:`sample_pixels` and :func:`triplet_loss`.
    """
    emb, lab = sample_pixels(features, labels, max_per_class=max_per_class, ignore_index=ignore_index,
                             generator=generator)
    if len(lab) == 0:
        return features.sum() * 0.0
    return triplet_loss(emb, lab, margin=margin, mining=mining, distance=distance, generator=generator)
