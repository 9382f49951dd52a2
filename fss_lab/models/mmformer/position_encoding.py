"""Sine positional encoding of a feature map (DETR, Carion et al. 2020, Sec. 3.2 / Mask2Former), as MM-Former uses it.

MM-Former adds it to the keys and queries of its cross-alignment attention, with ``num_pos_feats = 128`` (half of
the 256 channels), ``temperature = 10000`` and ``normalize=True`` (coordinates scaled to ``(0, 2*pi]``).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sine_positional_encoding(x: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                             normalize: bool = True, scale: float = 2 * math.pi) -> torch.Tensor:
    """Sine/cosine encoding of the (row, column) position of every pixel of ``x``.

    Row and column indices run 1..H and 1..W; with ``normalize`` they are divided by ``H + 1e-6`` (``W + 1e-6``)
    and multiplied by ``scale``. For channel pair ``i``: frequency ``temperature ** (2 * (i // 2) / num_pos_feats)``;
    even channels take the sine, odd channels the cosine. Output channels: ``num_pos_feats`` for the rows, then
    ``num_pos_feats`` for the columns.

    Args:
        x: any ``[B, C, H, W]`` tensor (only its shape, device and batch size are used).
        num_pos_feats: channels per axis (output has ``2 * num_pos_feats``).
        temperature: frequency base.
        normalize: scale the coordinates to ``(0, scale]``.
        scale: 2 pi by default.

    Returns:
        float32 ``[B, 2 * num_pos_feats, H, W]``.

    Raises:
        ValueError: ``x`` is not 4-D.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"sine_positional_encoding: x must be [B, C, H, W]; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    b, _, h, w = x.shape
    ones = torch.ones(b, h, w, dtype=torch.float32, device=x.device)
    y_embed, x_embed = ones.cumsum(1), ones.cumsum(2)
    if normalize:
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * scale
    idx = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_pos_feats)

    def _encode(coord: torch.Tensor) -> torch.Tensor:
        p = coord[..., None] / dim_t                                     # [B, H, W, F]
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((_encode(y_embed), _encode(x_embed)), dim=3).permute(0, 3, 1, 2)


class SinePositionalEncoding(nn.Module):
    """Module form of :func:`sine_positional_encoding` (no parameters).

    Args:
        num_pos_feats: channels per axis (MM-Former: 128 for 256-d features).
        temperature: frequency base (10000).
        normalize: scale coordinates to ``(0, 2*pi]`` (MM-Former: True).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> float32 ``[B, 2 * num_pos_feats, H, W]``."""
        return sine_positional_encoding(x, self.num_pos_feats, self.temperature, self.normalize)
