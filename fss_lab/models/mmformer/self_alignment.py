"""MM-Former's Self-Alignment block (Jiao et al., NeurIPS 2022, Sec. 2.3, Fig. 3): parameter-free channel gating.

Per image: the channel mean ``F_avg`` (one value per position) is turned into spatial weights by a softmax over
positions; the weighted spatial sum of ``F`` gives one context value per channel (``A = F softmax(F_avg)^T``);
``sigmoid(A)`` gates the channels: ``out = F * sigmoid(A)``, **no residual** (official ``spatial_pool``;
fss-methods.md section 7). The official file also holds an unused spatial-gate variant with a residual
(``channel_pool``: global-average anchor, softmax over positions of every channel, ``out = F * sigmoid(ctx) + F``);
it is offered here as ``variant="spatial_residual"``, never the default.
"""
from __future__ import annotations

import torch
from torch import nn

VARIANTS = ("channel", "spatial_residual")


def _check(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{who}: x must be float [B, C, H, W]; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def self_alignment_weights(x: torch.Tensor) -> torch.Tensor:
    """Spatial weights of the official self-alignment: ``softmax`` over positions of the channel mean.

    Args:
        x: float ``[B, C, H, W]``.

    Returns:
        ``[B, 1, H, W]``, each map sums to 1 (probabilities over positions).

    Raises:
        ValueError: ``x`` is not 4-D.
    """
    _check(x, "self_alignment_weights")
    b, _, h, w = x.shape
    return torch.softmax(x.mean(dim=1).reshape(b, h * w), dim=1).reshape(b, 1, h, w)


def self_alignment(x: torch.Tensor, variant: str = "channel") -> torch.Tensor:
    """Self-alignment of one feature map (MM-Former Sec. 2.3).

    ``variant="channel"`` (official, default): ``out = x * sigmoid(sum_p x[:, :, p] * softmax_p(mean_c x)[p])``,
    a per-channel gate, no residual. ``variant="spatial_residual"`` (the unused alternative in the official file):
    ``anchor = mean_p x`` (one value per channel), ``ctx[p] = sum_c anchor[c] * softmax_p(x[c])[p]``,
    ``out = x * sigmoid(ctx) + x``.

    Args:
        x: float ``[B, C, H, W]`` (backbone features of a query or a support image).
        variant: ``"channel"`` or ``"spatial_residual"``.

    Returns:
        ``[B, C, H, W]``, same dtype.

    Raises:
        ValueError: ``x`` is not 4-D, or an unknown ``variant``.
    """
    _check(x, "self_alignment")
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    if variant == "channel":
        weights = self_alignment_weights(x).reshape(b, h * w, 1)
        context = torch.bmm(flat, weights)                                # [B, C, 1]
        return x * torch.sigmoid(context).reshape(b, c, 1, 1)
    if variant == "spatial_residual":
        anchor = flat.mean(dim=2, keepdim=True).transpose(1, 2)           # [B, 1, C]
        context = torch.bmm(anchor, torch.softmax(flat, dim=2))           # [B, 1, HW]
        return x * torch.sigmoid(context).reshape(b, 1, h, w) + x
    raise ValueError(f"self_alignment: unknown variant {variant!r}; choose one of {VARIANTS}")


class SelfAlignment(nn.Module):
    """Module form of :func:`self_alignment` (no parameters); keeps its spatial weights for widgets.

    Args:
        variant: ``"channel"`` (official) or ``"spatial_residual"``.
        keep_attention: store the softmax-over-positions weights ``[B, 1, H, W]`` of the last call in
            ``last_attention`` (``"channel"`` variant only).

    Attributes:
        last_attention: ``[B, 1, H, W]`` weights of the last forward (``None`` until then or when not kept).
    """

    def __init__(self, variant: str = "channel", keep_attention: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"SelfAlignment: unknown variant {variant!r}; choose one of {VARIANTS}")
        self.variant, self.keep_attention = variant, keep_attention
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]`` (see :func:`self_alignment`)."""
        if self.keep_attention and self.variant == "channel":
            self.last_attention = self_alignment_weights(x).detach()
        return self_alignment(x, self.variant)
