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
        self_align: apply the self-alignment (True, official; False for Tab. 3a's rows without it).
        cross: ``"learned"`` (official), ``"none"`` (no cross-alignment: projections only) or ``"nonparametric"``
            (Tab. 3a row 3: no learnable parameter at all: no projection, and per level ``num_layers`` rounds of
            single-head ``x + softmax(x m^T / sqrt(C)) m`` with ``m`` the other image's memory, short side
            ``min_size``; the support pass attends to the original query).

    Raises:
        ValueError: an unknown ``cross``.
    """

    CROSS = ("learned", "none", "nonparametric")

    def __init__(self, in_channels: Sequence[int] = (2048, 1024, 512), hidden_dim: int = 256, nhead: int = 4,
                 dim_feedforward: int = 512, num_layers: int = 2, pre_norm: bool = False, min_size: int = 15,
                 self_align_variant: str = "channel", keep_attention: bool = False, self_align: bool = True,
                 cross: str = "learned"):
        super().__init__()
        if cross not in self.CROSS:
            raise ValueError(f"FeatureAlignmentBlock: cross must be one of {self.CROSS}, got {cross!r}")
        self.hidden_dim, self.cross, self.use_self_alignment = hidden_dim, cross, bool(self_align)
        self.in_channels, self.num_layers, self.min_size = tuple(in_channels), num_layers, min_size
        self.self_alignment = SelfAlignment(self_align_variant)
        if cross == "nonparametric":
            self.projections = nn.ModuleList(nn.Identity() for _ in in_channels)
            self.cross_alignments = nn.ModuleList()
        else:
            self.projections = nn.ModuleList(nn.Conv2d(c, hidden_dim, kernel_size=1, bias=False)
                                             for c in in_channels)
            self.cross_alignments = nn.ModuleList(
                CrossAlignment(hidden_dim, nhead, dim_feedforward, num_layers, pre_norm, min_size, keep_attention)
                for _ in in_channels) if cross == "learned" else nn.ModuleList()

    def _nonparametric(self, q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameter-free cross-attention (Tab. 3a row 3), both directions, ``num_layers`` rounds."""
        import torch.nn.functional as F
        from .cross_alignment import memory_size

        def mem(x: torch.Tensor) -> torch.Tensor:
            size = memory_size(*x.shape[-2:], self.min_size)
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)

        def attend(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)
            for _ in range(self.num_layers):
                t = t + torch.softmax(t @ m.transpose(1, 2) / c ** 0.5, dim=-1) @ m
            return t.transpose(1, 2).reshape(b, c, h, w)

        return attend(q, mem(s)), attend(s, mem(q))

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
            want = self.in_channels[i]
            for name, f in (("query", fq), ("support", fs)):
                if not isinstance(f, torch.Tensor) or f.dim() != 4 or f.shape[1] != want:
                    raise ValueError(f"FeatureAlignmentBlock: {name} level {i} must be [B, {want}, H, W]; got "
                                     f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
            if self.use_self_alignment:
                fq, fs = self.self_alignment(fq), self.self_alignment(fs)
            q, s = self.projections[i](fq), self.projections[i](fs)
            if self.cross != "learned":
                if self.cross == "nonparametric":
                    s, _ = mask_support_features(s, s, support_mask)
                    q, s = self._nonparametric(q, s)
                out_q.append(q)
                out_s.append(s)
                if return_attention:
                    attn.append(None)
                continue
            q_pos = sine_positional_encoding(q, self.hidden_dim // 2).to(q.dtype)
            s_pos = sine_positional_encoding(s, self.hidden_dim // 2).to(s.dtype)
            s, s_pos = mask_support_features(s, s_pos, support_mask)
            res = self.cross_alignments[i](q, s, q_pos, s_pos, return_attention=return_attention)
            out_q.append(res[0])
            out_s.append(res[1])
            if return_attention:
                attn.append(res[2])
        return (out_q, out_s, attn) if return_attention else (out_q, out_s)
