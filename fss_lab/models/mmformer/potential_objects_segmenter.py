"""MM-Former's Potential Objects Segmenter (POS, Jiao et al., NeurIPS 2022, Sec. 2.2 and 2.4; Mask2Former, Cheng
et al., CVPR 2022): a class-agnostic set predictor of N soft mask proposals, trained with Hungarian matching.

N learnable queries pass transformer-decoder layers (masked cross-attention to one feature level at a time,
round robin coarse -> fine, then self-attention, then FFN); after each layer the decoder-normalised queries go
through a 3-layer MLP to mask embeddings, dotted with per-pixel embeddings (stride 4) to give mask logits; the
sigmoid of the previous prediction (< 0.5 -> blocked) masks the next cross-attention. No classifier (MM-Former
removes it to avoid class-specific proposals). Losses: Hungarian matching of predictions to ground-truth masks on
the cost ``5 * sigmoid-BCE + 5 * Dice`` (``scipy.optimize.linear_sum_assignment``), then sigmoid-BCE and Dice on
the matched pairs, each divided by the number of target masks, weights 5 and 5, on every layer's prediction
(deep supervision).

Simplifications, said plainly: the pixel decoder is a small FPN (:class:`SimplePixelDecoder`), not Mask2Former's
multi-scale deformable attention; losses and costs use all pixels (predictions resized to the target size), not
Mask2Former's 12,544 sampled points. Proposals for the Mask Matching module: ``pred_masks.sigmoid()``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .cross_alignment import CrossAttentionLayer, FFNLayer
from .position_encoding import sine_positional_encoding


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention over the queries + residual + LayerNorm (Mask2Former's, dropout 0).

    Args:
        d_model: channels. nhead: heads. pre_norm: LayerNorm first.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, C]``."""
        x = self.norm(tgt) if self.pre_norm else tgt
        qk = x if query_pos is None else x + query_pos
        out = self.self_attn(qk, qk, x, need_weights=False)[0]
        return tgt + out if self.pre_norm else self.norm(tgt + out)


class SimplePixelDecoder(nn.Module):
    """A small FPN pixel decoder: multi-scale features for the decoder and stride-4 per-pixel embeddings.

    Top-down: ``y_i = lateral_i(x_i) + upsample(y_{i-1})``, then 3x3 conv + GroupNorm + ReLU, for the three
    decoder levels (coarse -> fine); the stride-4 map gets the same treatment and a 1x1 conv to ``mask_dim``.

    Args:
        in_channels: channels of the three decoder levels, coarse -> fine (ResNet-50 res5/res4/res3:
            ``(2048, 1024, 512)``; EfficientNet-Lite0 s32/s16/s8: ``(320, 112, 40)``).
        mask_in_channels: channels of the stride-4 level (ResNet res2: 256; EfficientNet-Lite0 s4: 24).
        hidden_dim: 256. mask_dim: 256.
    """

    def __init__(self, in_channels: Sequence[int] = (2048, 1024, 512), mask_in_channels: int = 256,
                 hidden_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        groups = 32 if hidden_dim % 32 == 0 else 1
        chans = list(in_channels) + [mask_in_channels]
        self.lateral = nn.ModuleList(nn.Conv2d(c, hidden_dim, 1) for c in chans)
        self.output = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
                          nn.GroupNorm(groups, hidden_dim), nn.ReLU()) for _ in chans)
        self.mask_features = nn.Conv2d(hidden_dim, mask_dim, 1)

    def forward(self, features: Sequence[torch.Tensor], mask_feature: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Args: ``features`` (three ``[B, C_i, h_i, w_i]``, coarse -> fine), ``mask_feature`` ``[B, C, H/4, W/4]``.

        Returns:
            ``(multi_scale [3 x [B, hidden_dim, h_i, w_i]], mask_features [B, mask_dim, H/4, W/4])``.
        """
        outs, prev = [], None
        for i, x in enumerate(list(features) + [mask_feature]):
            y = self.lateral[i](x)
            if prev is not None:
                y = y + F.interpolate(prev, size=y.shape[-2:], mode="bilinear", align_corners=False)
            prev = self.output[i](y)
            outs.append(prev)
        return outs[:-1], self.mask_features(outs[-1])


class PotentialObjectsSegmenter(nn.Module):
    """Class-agnostic Mask2Former-style decoder producing N mask-proposal logits (MM-Former's POS).

    Args:
        in_channels: three decoder levels, coarse -> fine (see :class:`SimplePixelDecoder`).
        mask_in_channels: channels of the stride-4 level.
        num_queries: N proposals (100).
        hidden_dim: 256. nhead: 8. dim_feedforward: 2048 (official config). dec_layers: decoder layers (official
            config 9 = ``DEC_LAYERS - 1``; the paper's Eq. 1 describes 3, one per level). pre_norm: False.
        mask_dim: per-pixel embedding size (256).
        keep_attention: keep every layer's cross-attention ``[B, heads, N, h_i * w_i]`` in ``last_attention``.

    Attributes:
        last_attention: list of per-layer cross-attention maps of the last forward (when kept).
    """

    def __init__(self, in_channels: Sequence[int] = (2048, 1024, 512), mask_in_channels: int = 256,
                 num_queries: int = 100, hidden_dim: int = 256, nhead: int = 8, dim_feedforward: int = 2048,
                 dec_layers: int = 9, pre_norm: bool = False, mask_dim: int = 256, keep_attention: bool = False):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"PotentialObjectsSegmenter: in_channels must list 3 levels; got {in_channels}")
        self.num_queries, self.nhead, self.hidden_dim, self.keep_attention = num_queries, nhead, hidden_dim, \
            keep_attention
        self.pixel_decoder = SimplePixelDecoder(in_channels, mask_in_channels, hidden_dim, mask_dim)
        self.cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nhead, pre_norm) for _ in range(dec_layers))
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nhead, pre_norm) for _ in range(dec_layers))
        self.ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(3, hidden_dim)
        self.mask_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                                        nn.Linear(hidden_dim, mask_dim))
        self.last_attention: list[torch.Tensor] | None = None

    def _predict(self, output: torch.Tensor, mask_features: torch.Tensor, size: Sequence[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits ``[B, N, H4, W4]`` and the next layer's attention mask ``[B * heads, N, h * w]`` (bool)."""
        emb = self.mask_embed(self.decoder_norm(output))
        masks = torch.einsum("bnc,bchw->bnhw", emb, mask_features)       # n query, c channel, h/w pixel
        small = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
        blocked = (small.sigmoid().flatten(2) < 0.5).detach()           # True = not allowed
        blocked = blocked.repeat_interleave(self.nhead, dim=0)
        return masks, blocked

    def forward(self, features: Sequence[torch.Tensor], mask_feature: torch.Tensor) -> dict:
        """Predict N class-agnostic mask proposals.

        Args:
            features: three backbone levels ``[B, C_i, h_i, w_i]``, coarse -> fine (e.g. strides 32, 16, 8).
            mask_feature: the stride-4 level ``[B, C, H/4, W/4]``.

        Returns:
            ``{"pred_masks": logits [B, N, H/4, W/4] (last layer), "aux_outputs": [{"pred_masks": ...}, ...]}``
            (the initial and intermediate predictions, for deep supervision). Proposals = ``pred_masks.sigmoid()``.

        Raises:
            ValueError: not three levels.
        """
        if len(features) != 3:
            raise ValueError(f"PotentialObjectsSegmenter: expected 3 feature levels; got {len(features)}")
        multi, mask_features = self.pixel_decoder(features, mask_feature)
        b = mask_feature.shape[0]
        src = [_t(m) + self.level_embed.weight[i] for i, m in enumerate(multi)]
        pos = [_t(sine_positional_encoding(m, self.hidden_dim // 2).to(m.dtype)) for m in multi]
        sizes = [m.shape[-2:] for m in multi]
        output = self.query_feat.weight[None].expand(b, -1, -1)
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        predictions = []
        masks, blocked = self._predict(output, mask_features, sizes[0])
        predictions.append(masks)
        attention = []
        for i, (cross, self_attn, ffn) in enumerate(
                zip(self.cross_attention_layers, self.self_attention_layers, self.ffn_layers)):
            level = i % 3
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)       # a fully blocked row attends everywhere
            output, attn = cross(output, src[level], pos=pos[level], query_pos=query_pos,
                                 need_weights=self.keep_attention, attn_mask=blocked)
            if attn is not None:
                attention.append(attn.detach())
            output = ffn(self_attn(output, query_pos))
            masks, blocked = self._predict(output, mask_features, sizes[(i + 1) % 3])
            predictions.append(masks)
        if self.keep_attention:
            self.last_attention = attention
        return {"pred_masks": predictions[-1], "aux_outputs": [{"pred_masks": p} for p in predictions[:-1]]}


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise Dice cost ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)``, ``p = sigmoid(logits)`` (Mask2Former).

    Args:
        logits: ``[N, P]`` predicted mask logits (P pixels); targets: ``[M, P]`` binary masks.

    Returns:
        ``[N, M]``.
    """
    p = logits.sigmoid()
    num = 2 * p @ targets.T
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def sigmoid_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean sigmoid-BCE cost between every prediction and every target (Mask2Former).

    Args:
        logits: ``[N, P]``; targets: ``[M, P]``.

    Returns:
        ``[N, M]``: ``mean_p BCE(logit_n(p), t_m(p))``.
    """
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def hungarian_matching(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment (``scipy.optimize.linear_sum_assignment``).

    Args:
        cost: ``[N, M]`` (predictions x targets); with N > M only M predictions are matched.

    Returns:
        ``(pred_idx, target_idx)`` int64 tensors of length ``min(N, M)``, sorted by ``pred_idx``.

    Raises:
        ValueError: ``cost`` is not 2-D or holds NaN.
    """
    if cost.dim() != 2:
        raise ValueError(f"hungarian_matching: cost must be [N, M]; got {tuple(cost.shape)}")
    if torch.isnan(cost).any():
        raise ValueError("hungarian_matching: cost holds NaN (check the predicted masks)")
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def match_proposals(pred_masks: torch.Tensor, target_masks: torch.Tensor, cost_mask: float = 5.0,
                    cost_dice: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of one image's predicted mask logits to its target masks (MM-Former's POS matcher).

    Args:
        pred_masks: ``[N, h, w]`` logits (resized to the target size, bilinear, ``align_corners=False``).
        target_masks: ``[M, H, W]`` binary.
        cost_mask, cost_dice: weights of the BCE and Dice costs (official 5 and 5; no class cost).

    Returns:
        ``(pred_idx, target_idx)`` as :func:`hungarian_matching`.
    """
    with torch.no_grad():
        logits = _resize_logits(pred_masks, target_masks.shape[-2:]).flatten(1).float()
        targets = target_masks.flatten(1).float()
        cost = cost_mask * sigmoid_bce_cost(logits, targets) + cost_dice * dice_cost(logits, targets)
    return hungarian_matching(cost)


def _resize_logits(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def dice_mask_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over matched pairs of ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)``, divided by ``num_masks``.

    Args:
        logits: ``[K, P]`` matched predictions; targets: ``[K, P]``; num_masks: normaliser (targets in batch).
    """
    p = logits.sigmoid()
    loss = 1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)
    return loss.sum() / num_masks


def sigmoid_bce_mask_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Per matched pair the mean sigmoid-BCE over pixels, summed and divided by ``num_masks`` (Mask2Former).

    Args:
        logits: ``[K, P]``; targets: ``[K, P]``; num_masks: normaliser.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def pos_set_loss(outputs: dict, targets: Sequence[torch.Tensor], mask_weight: float = 5.0,
                 dice_weight: float = 5.0) -> dict[str, torch.Tensor]:
    """POS training loss: Hungarian matching per image and layer, then weighted sigmoid-BCE + Dice.

    Args:
        outputs: :class:`PotentialObjectsSegmenter` output (``pred_masks`` and ``aux_outputs``).
        targets: per image, binary target masks ``[M_b, H, W]`` (class-agnostic segments, e.g.
            :func:`fss_lab.models.proposals.ground_truth_proposals` of a base-class label without background).
        mask_weight, dice_weight: 5 and 5 (official ``MASK_WEIGHT``, ``DICE_WEIGHT``).

    Returns:
        ``{"loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0", ..., "total"}`` (suffix = auxiliary layer),
        already weighted.

    Raises:
        ValueError: the number of target sets differs from the batch size.
    """
    pred = outputs["pred_masks"]
    if len(targets) != pred.shape[0]:
        raise ValueError(f"pos_set_loss: {len(targets)} target sets for a batch of {pred.shape[0]}")
    num_masks = max(float(sum(t.shape[0] for t in targets)), 1.0)
    layers = [("", pred)] + [(f"_{i}", aux["pred_masks"]) for i, aux in enumerate(outputs.get("aux_outputs", []))]
    losses: dict[str, torch.Tensor] = {}
    for suffix, masks in layers:
        bce, dice = masks.new_zeros(()), masks.new_zeros(())
        for b, tgt in enumerate(targets):
            if tgt.shape[0] == 0:
                continue
            pi, ti = match_proposals(masks[b], tgt, mask_weight, dice_weight)
            logits = _resize_logits(masks[b][pi], tgt.shape[-2:]).flatten(1)
            t = tgt[ti].flatten(1).to(logits.dtype)
            bce = bce + sigmoid_bce_mask_loss(logits, t, num_masks)
            dice = dice + dice_mask_loss(logits, t, num_masks)
        losses[f"loss_mask{suffix}"] = mask_weight * bce
        losses[f"loss_dice{suffix}"] = dice_weight * dice
    losses["total"] = sum(losses.values())
    return losses
