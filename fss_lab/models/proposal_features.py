"""Proposals as a cached "feature level": images -> N superpixel masks ``[N, h, w]`` per image, so a
:class:`~fss_lab.models.feature_cache.FeatureCache` computes them once and the evaluator hands them to a method as
``task.query("proposals")`` (MM-Former's matching reads them beside the backbone levels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .proposals import felzenszwalb_proposals, slic_proposals

#: The level name under which proposals travel in a :class:`~fss_lab.methods.task.Task`.
PROPOSAL_LEVEL = "proposals"


class ProposalExtractor(nn.Module):
    """``images [B, 3, H, W] -> proposals float32 [B, N, h, w]`` in ``[0, 1]`` (superpixels, disjoint, N fixed).

    Args:
        num_proposals: N (MM-Former: 100); the largest segments are kept, empty masks pad up to N.
        method: ``"slic"`` (scikit-image SLIC, ``n_segments = num_proposals``) or ``"felzenszwalb"``.
        stride: the masks are area-averaged to ``(H / stride, W / stride)`` (soft borders; 4 by default, the
            resolution of MM-Former's mask features).
        kwargs: passed to :func:`~fss_lab.models.proposals.slic_proposals` /
            :func:`~fss_lab.models.proposals.felzenszwalb_proposals`.

    The superpixels are computed on the (normalised) image as given: SLIC rescales it; a fixed transform gives
    the same proposals for the same image, so the cache is valid.
    """

    def __init__(self, num_proposals: int = 100, method: str = "slic", stride: int = 4, **kwargs):
        super().__init__()
        if method not in ("slic", "felzenszwalb"):
            raise ValueError(f"ProposalExtractor: method must be 'slic' or 'felzenszwalb', got {method!r}")
        self.num_proposals, self.method, self.stride, self.kwargs = int(num_proposals), method, int(stride), kwargs
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Proposals of every image (computed on the CPU with scikit-image)."""
        out = []
        for img in images.detach().float().cpu():
            if self.method == "slic":
                masks = slic_proposals(img, n_segments=self.num_proposals, max_proposals=self.num_proposals,
                                       **self.kwargs)
            else:
                masks = felzenszwalb_proposals(img, max_proposals=self.num_proposals, **self.kwargs)
            h, w = masks.shape[-2:]
            size = (max(1, h // self.stride), max(1, w // self.stride))
            out.append(F.adaptive_avg_pool2d(masks[None], size)[0] if self.stride > 1 else masks)
        return torch.stack(out).to(self.device)


__all__ = ["ProposalExtractor", "PROPOSAL_LEVEL"]
