"""MM-Former's Learnable Matching block and Mask Matching (MM) module (Jiao et al., NeurIPS 2022, Sec. 2.3, Eq. 4).

Few-to-few matching: one support prototype (masked average pooling of the aligned support features, eps ``1e-7``,
labels resized bilinearly with ``align_corners=True``) against N proposal embeddings (mask pooling of the aligned
query features under each soft proposal, **no epsilon**), levels concatenated; cosine per proposal ``S [B, N]``;
an MLP that mixes **across the N proposals** (``N -> 5N -> N``, ReLU; 100 -> 500 -> 100 in the paper) turns
``S`` into blending weights; foreground ``= sum_n w_n M_n`` (proposals resized to the output size, bilinear,
``align_corners=False``), background ``= 1 - foreground``. K shots: proposal embeddings and prototypes are averaged
over shots before the cosine. All as in the official ``MM_Former.py`` (fss-methods.md section 7).

Also the two reference selectors of the paper's ablations: the heuristic matching baseline (the proposal with the
highest cosine, Tab. 3a row 1) and the oracle (the proposal with the highest IoU with the query ground truth).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..proposals import proposal_iou
from .feature_alignment import FeatureAlignmentBlock
from .self_alignment import self_alignment

MAP_EPS = 1e-7
"""Epsilon of the support prototype's masked average pooling (official ``get_sup_propotype``)."""


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def support_prototype(features: torch.Tensor, mask: torch.Tensor, eps: float = MAP_EPS) -> torch.Tensor:
    """Support prototype by masked average pooling: ``sum_p f_p m_p / (sum_p m_p + eps)``.

    Args:
        features: aligned support features, float ``[B, C, h, w]``.
        mask: ``[B, H, W]`` int labels (``== 1`` foreground; 255 ignore -> 0, as the official ``label==255 -> 0``)
            or float weights; resized to ``(h, w)`` bilinearly with ``align_corners=True``.
        eps: ``1e-7`` (official).

    Returns:
        ``[B, C]``.

    Raises:
        ValueError: ``features`` not 4-D or ``mask`` not ``[B, H, W]``.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"support_prototype: features must be [B, C, h, w]; got {_shape(features)}")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.shape[0] != features.shape[0]:
        raise ValueError(f"support_prototype: mask must be [B={features.shape[0]}, H, W]; got {_shape(mask)}")
    m = mask.float() if mask.is_floating_point() else (mask == 1).float()
    m = F.interpolate(m[:, None], size=features.shape[-2:], mode="bilinear", align_corners=True).to(features.dtype)
    return (features * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + eps)


def proposal_embeddings(features: torch.Tensor, proposals: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Proposal embeddings by mask pooling: ``P_n = sum_p f_p M_n(p) / sum_p M_n(p)`` (official: no epsilon).

    Args:
        features: aligned query features, float ``[B, C, h, w]``.
        proposals: soft proposal masks (sigmoid probabilities) ``[B, N, Hm, Wm]``, resized to ``(h, w)``
            bilinearly with ``align_corners=True``.
        eps: added to the denominator; 0 (official) makes an empty proposal give NaN, so pass e.g. ``1e-7`` when
            proposals may be empty (padded superpixel sets).

    Returns:
        ``[B, N, C]``.

    Raises:
        ValueError: shapes that are not ``[B, C, h, w]`` / ``[B, N, H, W]`` with the same B.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"proposal_embeddings: features must be [B, C, h, w]; got {_shape(features)}")
    if not isinstance(proposals, torch.Tensor) or proposals.dim() != 4 or proposals.shape[0] != features.shape[0]:
        raise ValueError(f"proposal_embeddings: proposals must be [B={features.shape[0]}, N, H, W]; got "
                         f"{_shape(proposals)}")
    m = F.interpolate(proposals.to(features.dtype), size=features.shape[-2:], mode="bilinear", align_corners=True)
    # einsum axes: b batch, n proposal, c channel, h/w positions
    pooled = torch.einsum("bchw,bnhw->bnc", features, m)
    return pooled / (m.sum(dim=(2, 3))[..., None] + eps)


def proposal_similarity(embeddings: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every proposal embedding with the support prototype, ``S`` of Eq. 4.

    ``F.cosine_similarity`` (its eps ``1e-8``), as the official code.

    Args:
        embeddings: ``[B, N, D]``; prototype: ``[B, D]``.

    Returns:
        ``[B, N]`` in ``[-1, 1]``.

    Raises:
        ValueError: shapes disagree.
    """
    if embeddings.dim() != 3 or prototype.dim() != 2 or prototype.shape != (embeddings.shape[0], embeddings.shape[2]):
        raise ValueError(f"proposal_similarity: embeddings [B, N, D] and prototype [B, D]; got "
                         f"{_shape(embeddings)} and {_shape(prototype)}")
    return F.cosine_similarity(embeddings, prototype[:, None, :].expand_as(embeddings), dim=2)


MIXING = ("across", "per_proposal")
"""Matching MLP variants: ``"across"`` (official: one MLP over the vector of N similarities) and
``"per_proposal"`` (a variant: one small MLP shared by all proposals, permutation-equivariant)."""


class MatchingMLP(nn.Module):
    """The MLP of Eq. 4 that turns the N similarities into N blending weights.

    ``mixing="across"`` (official): ``S [B, N] -> Linear(N, 5N) -> ReLU -> Linear(5N, N)``; its input is the vector
    of the N similarities, so every output weight depends on all proposals (it can merge parts); proposal ``n``'s
    weight is read from slot ``n``, which presumes that slot ``n`` means the same thing in every image (true of a
    POS's learned queries; not of superpixels, whose order is arbitrary).

    ``mixing="per_proposal"`` (a variant, not in the paper): the same small MLP for every proposal, on
    ``[S_n, S_n - max S, (S_n - min S) / (max S - min S + 1e-8)]`` (3 -> ``hidden`` -> 1, ReLU): still sees the other
    proposals through the max and min, but a permutation of the proposals permutes the weights (no slot identity).

    Outputs are raw weights (no softmax, as the official code).

    Args:
        num_proposals: N (100 in MM-Former). hidden: width (default ``5 * N``, i.e. 500, for ``"across"``; 32 for
            ``"per_proposal"``). mixing: ``"across"`` (official) or ``"per_proposal"``.

    Raises:
        ValueError: an unknown ``mixing``.
    """

    def __init__(self, num_proposals: int = 100, hidden: int | None = None, mixing: str = "across"):
        super().__init__()
        if mixing not in MIXING:
            raise ValueError(f"MatchingMLP: mixing must be one of {MIXING}, got {mixing!r}")
        self.num_proposals, self.mixing = num_proposals, mixing
        if mixing == "across":
            self.fc1 = nn.Linear(num_proposals, hidden or 5 * num_proposals)
            self.fc2 = nn.Linear(hidden or 5 * num_proposals, num_proposals)
        else:
            self.fc1 = nn.Linear(3, hidden or 32)
            self.fc2 = nn.Linear(hidden or 32, 1)

    @torch.no_grad()
    def init_threshold(self, offset: float, scale: float = 10.0, seed: int = 0) -> "MatchingMLP":
        """Start at a training-free thresholding rule instead of PyTorch's default initialisation (a variant).

        ``"across"``: ``w_n = 0.5 + scale * (S_n - mean_m S_m - offset)`` (the mean over the N proposals is linear,
        so the official MLP expresses it exactly: hidden units ``2n`` / ``2n+1`` carry ``relu(+-x_n)``); with
        superpixels every pixel belongs to about one proposal, so the prediction ``fg > 0.5`` keeps the proposals
        whose similarity is more than ``offset`` above the image's mean. ``"per_proposal"``: ``w_n = 0.5 + scale *
        (S_n - max_m S_m + offset)``, i.e. the proposals within ``offset`` of the best one (``offset -> 0`` is the
        heuristic pick). The hidden units the rule does not use keep small random weights (x0.01), so they train.

        Args:
            offset: threshold in cosine units (see above). scale: slope of the weights around the threshold.
            seed: seed of the small random weights.

        Returns:
            ``self``.
        """
        if self.mixing == "across" and self.fc1.out_features < 2 * self.num_proposals:
            raise ValueError(f"MatchingMLP.init_threshold: the rule needs a hidden width >= 2N = "
                             f"{2 * self.num_proposals}; this MLP has {self.fc1.out_features}")
        gen = torch.Generator().manual_seed(seed)
        for lin in (self.fc1, self.fc2):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.01 / lin.weight.shape[1] ** 0.5)
            lin.bias.zero_()
        if self.mixing == "across":
            n = self.num_proposals
            centre = torch.eye(n) - 1.0 / n                              # x = S - mean(S) - offset
            self.fc1.weight[0:2 * n:2] = centre
            self.fc1.weight[1:2 * n:2] = -centre
            self.fc1.bias[0:2 * n:2], self.fc1.bias[1:2 * n:2] = -offset, offset
            self.fc2.weight[:, 0:2 * n:2] = scale * torch.eye(n)
            self.fc2.weight[:, 1:2 * n:2] = -scale * torch.eye(n)
            self.fc2.bias.fill_(0.5)
        else:                                                             # inputs [S, S - max S, normalised]
            self.fc1.weight[0], self.fc1.weight[1] = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 0.0])
            self.fc1.bias[0], self.fc1.bias[1] = offset, -offset
            self.fc2.weight[0, 0], self.fc2.weight[0, 1] = scale, -scale
            self.fc2.bias.fill_(0.5)
        return self

    def forward(self, similarity: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` similarities -> ``[B, N]`` blending weights.

        Raises:
            ValueError: the last axis is not ``num_proposals``.
        """
        if similarity.dim() != 2 or similarity.shape[1] != self.num_proposals:
            raise ValueError(f"MatchingMLP: similarity must be [B, {self.num_proposals}]; got {_shape(similarity)}")
        if self.mixing == "across":
            return self.fc2(F.relu(self.fc1(similarity)))
        hi = similarity.max(dim=1, keepdim=True).values
        lo = similarity.min(dim=1, keepdim=True).values
        x = torch.stack([similarity, similarity - hi, (similarity - lo) / (hi - lo + 1e-8)], dim=-1)
        return self.fc2(F.relu(self.fc1(x)))[..., 0]


def blend_proposals(weights: torch.Tensor, proposals: torch.Tensor, size: Sequence[int] | None = None
                    ) -> torch.Tensor:
    """Final MM-Former map: ``fg = sum_n w_n M_n``, ``bg = 1 - fg``.

    Args:
        weights: ``[B, N]`` (:class:`MatchingMLP` output, or one-hot for a selector).
        proposals: ``[B, N, h, w]`` soft masks in ``[0, 1]``.
        size: output ``(H, W)``; proposals are resized first, bilinearly with ``align_corners=False`` (official).

    Returns:
        ``[B, 2, H, W]``: channel 0 background, 1 foreground. Probability-like but not clipped to ``[0, 1]``
        (learned weights can overshoot); MM-Former's Dice loss takes it as is (:func:`fss_lab.losses.mmformer.
        mmformer_dice_loss`); predict with ``argmax(1)``.

    Raises:
        ValueError: shapes disagree.
    """
    if weights.dim() != 2 or proposals.dim() != 4 or proposals.shape[:2] != weights.shape:
        raise ValueError(f"blend_proposals: weights [B, N] and proposals [B, N, h, w]; got {_shape(weights)} and "
                         f"{_shape(proposals)}")
    if size is not None and tuple(size) != tuple(proposals.shape[-2:]):
        proposals = F.interpolate(proposals, size=tuple(size), mode="bilinear", align_corners=False)
    fg = torch.einsum("bn,bnhw->bhw", weights.to(proposals.dtype), proposals)[:, None]
    return torch.cat([1 - fg, fg], dim=1)


def heuristic_matching(similarity: torch.Tensor, proposals: torch.Tensor, size: Sequence[int] | None = None
                       ) -> torch.Tensor:
    """Heuristic matching baseline (MM-Former Tab. 3a, row 1): keep the proposal with the highest cosine.

    Args:
        similarity: ``[B, N]`` (:func:`proposal_similarity`); proposals: ``[B, N, h, w]``; size: output size.

    Returns:
        ``[B, 2, H, W]`` ``[1 - M_best, M_best]``.
    """
    one_hot = F.one_hot(similarity.argmax(dim=1), similarity.shape[1]).to(proposals.dtype)
    return blend_proposals(one_hot, proposals, size)


def oracle_matching(proposals: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Oracle (MM-Former Sec. 3.3 "Oracle Analysis"): the proposal with the highest IoU with the query ground truth.

    IoU as :func:`fss_lab.models.proposals.proposal_iou` (soft proposals resized to the label size, ignore
    counted as background, eps ``1e-7``).

    Args:
        proposals: ``[B, N, h, w]``; labels: ``[B, H, W]`` query labels (1 foreground).
        ignore_index: label counted as background.

    Returns:
        ``[B, 2, H, W]`` ``[1 - M_best, M_best]`` at the label size.
    """
    iou = proposal_iou(proposals, labels, ignore_index=ignore_index)
    one_hot = F.one_hot(iou.argmax(dim=1), iou.shape[1]).to(proposals.dtype)
    return blend_proposals(one_hot, proposals, labels.shape[-2:])


def heuristic_mask_matching(query_feats: Sequence[torch.Tensor], support_feats: Sequence[Sequence[torch.Tensor]],
                            support_masks: torch.Tensor, proposals: torch.Tensor, self_align: bool = True,
                            size: Sequence[int] | None = None, proposal_eps: float = 1e-7
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-free mask matching: the paper's parameter-free ablation rows (Tab. 3a rows 1-2) on raw features.

    Optional parameter-free :func:`~.self_alignment.self_alignment` of every level, support prototypes
    (:func:`support_prototype`) and proposal embeddings (:func:`proposal_embeddings`, with ``proposal_eps`` so
    padded empty proposals do not give NaN) concatenated over levels and averaged over shots, cosine, then the
    proposal with the highest similarity (:func:`heuristic_matching`). Works with any proposal source
    (:mod:`fss_lab.models.proposals`) and any frozen backbone.

    Args:
        query_feats: per level ``[B, C_i, h_i, w_i]``.
        support_feats: per shot, per level ``[B, C_i, hs_i, ws_i]``.
        support_masks: ``[B, K, H, W]`` labels (1 foreground) or float masks.
        proposals: ``[B, N, hm, wm]`` in ``[0, 1]``.
        self_align: apply the self-alignment first (row 2) or not (row 1).
        size: output size (default: the proposals' size).
        proposal_eps: denominator epsilon of the proposal pooling.

    Returns:
        ``(out [B, 2, H, W] = [bg, fg], similarity [B, N])``.

    Raises:
        ValueError: the number of shots disagrees with ``support_masks``.
    """
    k = len(support_feats)
    if support_masks.dim() != 4 or support_masks.shape[1] != k:
        raise ValueError(f"heuristic_mask_matching: support_masks must be [B, K={k}, H, W]; got "
                         f"{_shape(support_masks)}")
    align = self_alignment if self_align else (lambda x: x)
    emb = torch.cat([proposal_embeddings(align(f), proposals, eps=proposal_eps) for f in query_feats], dim=2)
    proto = 0.0
    for shot in range(k):
        proto = proto + torch.cat([support_prototype(align(f), support_masks[:, shot]) for f in support_feats[shot]],
                                  dim=1)
    similarity = proposal_similarity(emb, proto / k)
    return heuristic_matching(similarity, proposals, size), similarity


class MaskMatching(nn.Module):
    """MM-Former's Mask Matching (MM) module: Feature Alignment Block + Learnable Matching block, K shots.

    For each shot: align query and support (:class:`~.feature_alignment.FeatureAlignmentBlock`), support
    prototype per level (:func:`support_prototype`) and proposal embeddings per level (:func:`proposal_embeddings`
    of the aligned query), levels concatenated; both averaged over shots; cosine (:func:`proposal_similarity`);
    :class:`MatchingMLP`; :func:`blend_proposals`.

    Args:
        in_channels: backbone channels per level (official ``(2048, 1024, 512)`` for res5/res4/res3).
        num_proposals: N (100).
        mixing: :class:`MatchingMLP` variant (``"across"``, official).
        matching: ``"learned"`` (the MLP blend, official) or ``"heuristic"`` (the proposal with the highest cosine
            of the aligned features: Tab. 3a rows without the learnable matching; only ``co_loss`` trains them).
        alignment: keyword arguments of :class:`FeatureAlignmentBlock` (hidden_dim, nhead, pre_norm, ...).

    Attributes:
        last_similarity: ``[B, N]`` cosine similarities of the last forward (for ``co_loss`` and widgets).
    """

    def __init__(self, in_channels: Sequence[int] = (2048, 1024, 512), num_proposals: int = 100,
                 mixing: str = "across", matching: str = "learned", **alignment):
        super().__init__()
        if matching not in ("learned", "heuristic"):
            raise ValueError(f"MaskMatching: matching must be 'learned' or 'heuristic', got {matching!r}")
        self.matching = matching
        self.alignment = FeatureAlignmentBlock(in_channels, **alignment)
        self.matching_mlp = MatchingMLP(num_proposals, mixing=mixing)
        self.last_similarity: torch.Tensor | None = None

    def forward(self, query_feats: Sequence[torch.Tensor], support_feats: Sequence[Sequence[torch.Tensor]],
                support_masks: torch.Tensor, proposals: torch.Tensor, size: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend the query proposals guided by the support shots.

        Args:
            query_feats: per level ``[B, C_i, h_i, w_i]``.
            support_feats: per shot, per level ``[B, C_i, hs_i, ws_i]``.
            support_masks: ``[B, K, H, W]`` support labels (``== 1`` foreground) or float masks.
            proposals: ``[B, N, hm, wm]`` soft proposals (sigmoid) from the POS or another source.
            size: output size (default: the proposals' size).

        Returns:
            ``(out [B, 2, H, W] = [bg, fg], similarity [B, N])``.

        Raises:
            ValueError: the number of shots disagrees with ``support_masks``.
        """
        k = len(support_feats)
        if support_masks.dim() != 4 or support_masks.shape[1] != k:
            raise ValueError(f"MaskMatching: support_masks must be [B, K={k}, H, W]; got {_shape(support_masks)}")
        emb, proto = 0.0, 0.0
        for shot in range(k):
            aligned_q, aligned_s = self.alignment(query_feats, support_feats[shot], support_masks[:, shot])
            emb = emb + torch.cat([proposal_embeddings(f, proposals) for f in aligned_q], dim=2)
            proto = proto + torch.cat([support_prototype(f, support_masks[:, shot]) for f in aligned_s], dim=1)
        similarity = proposal_similarity(emb / k, proto / k)
        self.last_similarity = similarity
        if self.matching == "heuristic":
            return heuristic_matching(similarity, proposals, size or proposals.shape[-2:]), similarity
        weights = self.matching_mlp(similarity)
        return blend_proposals(weights, proposals, size or proposals.shape[-2:]), similarity
