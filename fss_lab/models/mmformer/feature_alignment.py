"""MM-Former's Feature Alignment Block (Jiao et al., NeurIPS 2022, Sec. 2.3, Fig. 3): self- then cross-alignment.

Composes :mod:`.self_alignment` and :mod:`.cross_alignment` over the backbone levels in the official order.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .cross_alignment import CrossAlignment, mask_support_features
from .position_encoding import sine_positional_encoding
from .self_alignment import SelfAlignment


class FeatureAlignmentBlock(nn.Module):
    """MM-Former's Feature Alignment Block over several levels: self-alignment, 1x1 projection, cross-alignment.

    Per level ``i`` (official order): ``self_alignment`` on the backbone features (query and support apart), 1x1
    conv without bias to ``hidden_dim``, sine positional encoding, support features and encoding multiplied by the
    support mask (:func:`mask_support_features`), then the level's :class:`CrossAlignment`. The 1x1 convs are
    shared by query and support.

    Args:
        in_channels: backbone channels per level (MM-Former, ResNet-50 res5/res4/res3: ``(2048, 1024, 512)``;
            EfficientNet-Lite0 ``s32/s16/s8``: ``(320, 112, 40)``).
        hidden_dim: 256. nhead: 4. dim_feedforward: 512. num_layers: 2. pre_norm: False. min_size: 15.
        self_align_variant: ``"channel"`` (official) or ``"spatial_residual"``.
        keep_attention: keep every level's attention maps (``cross_alignments[i].last_attention``).
    """

    def __init__(self, in_channels: Sequence[int] = (2048, 1024, 512), hidden_dim: int = 256, nhead: int = 4,
                 dim_feedforward: int = 512, num_layers: int = 2, pre_norm: bool = False, min_size: int = 15,
                 self_align_variant: str = "channel", keep_attention: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.self_alignment = SelfAlignment(self_align_variant)
        self.projections = nn.ModuleList(nn.Conv2d(c, hidden_dim, kernel_size=1, bias=False) for c in in_channels)
        self.cross_alignments = nn.ModuleList(
            CrossAlignment(hidden_dim, nhead, dim_feedforward, num_layers, pre_norm, min_size, keep_attention)
            for _ in in_channels)

    def forward(self, query_feats: Sequence[torch.Tensor], support_feats: Sequence[torch.Tensor],
                support_mask: torch.Tensor, return_attention: bool = False):
        """Align one query with one support shot, level by level.

        Args:
            query_feats: per level ``[B, C_i, h_i, w_i]`` (same order as ``in_channels``).
            support_feats: per level ``[B, C_i, hs_i, ws_i]``.
            support_mask: ``[B, H, W]`` support labels (``== 1`` foreground) or float mask.
            return_attention: also return the list of per-level attention dicts.

        Returns:
            ``(aligned_query, aligned_support)``: lists of ``[B, hidden_dim, h_i, w_i]`` (and the attention list).

        Raises:
            ValueError: wrong number of levels or channels (names the level).
        """
        n = len(self.projections)
        if len(query_feats) != n or len(support_feats) != n:
            raise ValueError(f"FeatureAlignmentBlock: expected {n} levels, got {len(query_feats)} query and "
                             f"{len(support_feats)} support maps")
        out_q, out_s, attn = [], [], []
        for i, (fq, fs) in enumerate(zip(query_feats, support_feats)):
            want = self.projections[i].in_channels
            for name, f in (("query", fq), ("support", fs)):
                if not isinstance(f, torch.Tensor) or f.dim() != 4 or f.shape[1] != want:
                    raise ValueError(f"FeatureAlignmentBlock: {name} level {i} must be [B, {want}, H, W]; got "
                                     f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
            q = self.projections[i](self.self_alignment(fq))
            s = self.projections[i](self.self_alignment(fs))
            q_pos = sine_positional_encoding(q, self.hidden_dim // 2).to(q.dtype)
            s_pos = sine_positional_encoding(s, self.hidden_dim // 2).to(s.dtype)
            s, s_pos = mask_support_features(s, s_pos, support_mask)
            res = self.cross_alignments[i](q, s, q_pos, s_pos, return_attention=return_attention)
            out_q.append(res[0])
            out_s.append(res[1])
            if return_attention:
                attn.append(res[2])
        return (out_q, out_s, attn) if return_attention else (out_q, out_s)
