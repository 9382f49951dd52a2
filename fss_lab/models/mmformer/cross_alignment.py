"""MM-Former's Cross-Alignment block (Jiao et al., NeurIPS 2022, Sec. 2.3 Eq. 2-3, Fig. 3).

``L`` shared layers of (cross-attention + FFN), Mask2Former-style (residual + LayerNorm, post-norm by default,
pre-norm as an option; dropout 0). Two directions through the **same** layers (official ``CrossAT``,
fss-methods.md section 7):

1. query -> support: the query features (full resolution) attend to the support features;
2. support -> query: the support features attend to the **original** query features (the input of step 1, not
   its output).

The memory (keys/values) of each direction is the other image resized so its short side is ``min_size = 15``
(long side ``int(long * 15 / short)``, bilinear, ``align_corners=False``), positional encodings resized the same way;
the queries keep their resolution. Official quirk kept: the memories are resized only when neither side of the
*query* map already equals ``min_size`` (then both memories keep their size). Per level MM-Former uses 256
channels, 4 heads, FFN 512, 2 layers. Attention weights are kept per layer and head, so widgets need no hooks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import sine_positional_encoding


def memory_size(height: int, width: int, min_size: int = 15) -> tuple[int, int]:
    """Size of a memory map whose short side is ``min_size`` (official rule: ``int(long * min_size / short)``).

    Returns:
        ``(h, w)``; e.g. ``(30, 45) -> (15, 22)``, ``(60, 60) -> (15, 15)``, ``(10, 20) -> (15, 30)``.
    """
    if height > width:
        return int(1.0 * height * min_size / width), min_size
    return min_size, int(1.0 * width * min_size / height)


def _reset_xavier(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class CrossAttentionLayer(nn.Module):
    """Multi-head cross-attention + residual + LayerNorm (Mask2Former's ``CrossAttentionLayer``, dropout 0).

    Post-norm: ``norm(tgt + MHA(tgt + query_pos, memory + pos, memory))``. Pre-norm:
    ``tgt + MHA(norm(tgt) + query_pos, memory + pos, memory)`` (the memory is not normalised). Weights: Xavier
    uniform on every matrix, as the official layer.

    Args:
        d_model: channels (256 in MM-Former).
        nhead: heads (4 in MM-Former's cross-alignment).
        pre_norm: LayerNorm before attention instead of after.
    """

    def __init__(self, d_model: int = 256, nhead: int = 4, pre_norm: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _reset_xavier(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``tgt [B, Lq, C]`` to ``memory [B, Lk, C]``.

        ``attn_mask``: optional bool ``[B * heads, Lq, Lk]``, True where attention is *not* allowed (Mask2Former's
        masked attention).

        Returns:
            ``(out [B, Lq, C], attention [B, heads, Lq, Lk] or None)``; attention rows sum to 1.
        """
        q_in = self.norm(tgt) if self.pre_norm else tgt
        q = q_in if query_pos is None else q_in + query_pos
        k = memory if pos is None else memory + pos
        out, attn = self.multihead_attn(q, k, memory, need_weights=need_weights, average_attn_weights=False,
                                        attn_mask=attn_mask)
        return (tgt + out, attn) if self.pre_norm else (self.norm(tgt + out), attn)


class FFNLayer(nn.Module):
    """Feed-forward layer + residual + LayerNorm (Mask2Former's ``FFNLayer``, ReLU, dropout 0).

    Post-norm: ``norm(x + W2 relu(W1 x))``; pre-norm: ``x + W2 relu(W1 norm(x))``.

    Args:
        d_model: channels (256). dim_feedforward: hidden width (512 in MM-Former). pre_norm: as above.
    """

    def __init__(self, d_model: int = 256, dim_feedforward: int = 512, pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _reset_xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` -> ``[B, L, C]``."""
        if self.pre_norm:
            return x + self.linear2(F.relu(self.linear1(self.norm(x))))
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


def _check4(x: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        want = f"[B, {channels}, H, W]" if channels is not None else "[B, C, H, W]"
        raise ValueError(f"CrossAlignment: {name} must be {want}; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)                                   # [B, C, H, W] -> [B, HW, C]


class CrossAlignment(nn.Module):
    """Cross-Alignment of one feature level: shared (cross-attention + FFN) layers, both directions (Eq. 2).

    Args:
        d_model: channels of the (projected) features, 256.
        nhead: attention heads, 4.
        dim_feedforward: FFN width, 512.
        num_layers: shared layers, 2.
        pre_norm: pre-LayerNorm layers (official config: ``PRE_NORM: False``, post-norm).
        min_size: short side of the memories, 15.
        keep_attention: always store the attention maps in ``last_attention`` (also stored when a forward is
            called with ``return_attention=True``).

    Attributes:
        last_attention: ``{"query_to_support": [per layer: [B, heads, Hq*Wq, hs*ws]], "support_to_query": [per
            layer: [B, heads, Hs*Ws, hq*wq]], "query_size", "support_size", "query_memory_size",
            "support_memory_size"}`` of the last forward that kept them (rows index the attending image's
            positions at full resolution, columns the other image's memory positions, row-major).
    """

    def __init__(self, d_model: int = 256, nhead: int = 4, dim_feedforward: int = 512, num_layers: int = 2,
                 pre_norm: bool = False, min_size: int = 15, keep_attention: bool = False):
        super().__init__()
        self.d_model, self.min_size, self.keep_attention = d_model, min_size, keep_attention
        self.cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d_model, nhead, pre_norm) for _ in range(num_layers))
        self.ffn_layers = nn.ModuleList(FFNLayer(d_model, dim_feedforward, pre_norm) for _ in range(num_layers))
        self.last_attention: dict | None = None

    def memories(self, query: torch.Tensor, support: torch.Tensor, query_pos: torch.Tensor,
                 support_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resize query/support maps and encodings to their memory sizes (short side ``min_size``; official rule).

        Returns:
            ``(query_memory, support_memory, query_memory_pos, support_memory_pos)``, each ``[B, C, h', w']``.
            Unchanged when one side of the query map already equals ``min_size`` (official condition).
        """
        h, w = query.shape[-2:]
        if h == self.min_size or w == self.min_size:
            return query, support, query_pos, support_pos
        qs, ss = memory_size(h, w, self.min_size), memory_size(*support.shape[-2:], self.min_size)

        def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        return _resize(query, qs), _resize(support, ss), _resize(query_pos, qs), _resize(support_pos, ss)

    def forward(self, query: torch.Tensor, support: torch.Tensor, query_pos: torch.Tensor | None = None,
                support_pos: torch.Tensor | None = None, return_attention: bool = False):
        """Align a query and a support feature map of one level.

        Args:
            query: query features ``[B, C, Hq, Wq]`` (after self-alignment and the 1x1 projection).
            support: support features ``[B, C, Hs, Ws]`` (MM-Former multiplies them, and their encoding, by the
                support mask first: :func:`mask_support_features`).
            query_pos, support_pos: positional encodings of the same shapes (default: sine encodings).
            return_attention: also return the attention maps (see ``last_attention``).

        Returns:
            ``(aligned_query [B, C, Hq, Wq], aligned_support [B, C, Hs, Ws])``, plus the attention dict when
            ``return_attention``.

        Raises:
            ValueError: a map that is not ``[B, d_model, H, W]``, or batch sizes / encoding shapes that differ.
        """
        _check4(query, "query", self.d_model)
        _check4(support, "support", self.d_model)
        if support.shape[0] != query.shape[0]:
            raise ValueError(f"CrossAlignment: query batch {query.shape[0]} != support batch {support.shape[0]} "
                             "(one support map per query; loop over shots)")
        if query_pos is None:
            query_pos = sine_positional_encoding(query, self.d_model // 2).to(query.dtype)
        if support_pos is None:
            support_pos = sine_positional_encoding(support, self.d_model // 2).to(support.dtype)
        if query_pos.shape != query.shape or support_pos.shape != support.shape:
            raise ValueError(f"CrossAlignment: query_pos {tuple(query_pos.shape)} / support_pos "
                             f"{tuple(support_pos.shape)} must match query {tuple(query.shape)} / support "
                             f"{tuple(support.shape)}")
        keep = return_attention or self.keep_attention
        b, c, hq, wq = query.shape
        hs, ws = support.shape[-2:]
        mem_q, mem_s, mem_q_pos, mem_s_pos = self.memories(query, support, query_pos, support_pos)
        mem_q_size, mem_s_size = tuple(mem_q.shape[-2:]), tuple(mem_s.shape[-2:])
        mem_q, mem_s, mem_q_pos, mem_s_pos = map(_tokens, (mem_q, mem_s, mem_q_pos, mem_s_pos))
        q, q_pos, s, s_pos = _tokens(query), _tokens(query_pos), _tokens(support), _tokens(support_pos)
        q2s, s2q = [], []
        for attn, ffn in zip(self.cross_attention_layers, self.ffn_layers):   # query -> support
            q, a = attn(q, mem_s, pos=mem_s_pos, query_pos=q_pos, need_weights=keep)
            q = ffn(q)
            q2s.append(a)
        for attn, ffn in zip(self.cross_attention_layers, self.ffn_layers):   # support -> ORIGINAL query
            s, a = attn(s, mem_q, pos=mem_q_pos, query_pos=s_pos, need_weights=keep)
            s = ffn(s)
            s2q.append(a)
        out_q = q.transpose(1, 2).reshape(b, c, hq, wq)
        out_s = s.transpose(1, 2).reshape(b, c, hs, ws)
        if keep:
            self.last_attention = {
                "query_to_support": [a.detach() for a in q2s], "support_to_query": [a.detach() for a in s2q],
                "query_size": (hq, wq), "support_size": (hs, ws),
                "query_memory_size": mem_q_size, "support_memory_size": mem_s_size,
            }
        if return_attention:
            return out_q, out_s, self.last_attention
        return out_q, out_s


def mask_support_features(support: torch.Tensor, support_pos: torch.Tensor, support_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiply support features and their positional encoding by the support mask (official ``addmask``).

    The mask (int labels: ``== 1`` foreground, 255 ignore -> 0; or float) is resized bilinearly with
    ``align_corners=False`` (the official call's default) to the feature size.

    Args:
        support: ``[B, C, h, w]``; support_pos: ``[B, C, h, w]``; support_mask: ``[B, H, W]``.

    Returns:
        ``(support * m, support_pos * m)``.

    Raises:
        ValueError: ``support_mask`` is not ``[B, H, W]`` with the features' batch size.
    """
    if not isinstance(support_mask, torch.Tensor) or support_mask.dim() != 3 or \
            support_mask.shape[0] != support.shape[0]:
        raise ValueError(f"mask_support_features: support_mask must be [B={support.shape[0]}, H, W]; got "
                         f"{tuple(support_mask.shape) if isinstance(support_mask, torch.Tensor) else support_mask}")
    m = support_mask.float() if support_mask.is_floating_point() else (support_mask == 1).float()
    m = F.interpolate(m[:, None], size=support.shape[-2:], mode="bilinear", align_corners=False).to(support.dtype)
    return support * m, support_pos * m
