"""Mask proposals ``[N, H, W]`` for mask-matching FSS (MM-Former's "decompose first, then blend").

Sources: a learned Potential Objects Segmenter (:mod:`fss_lab.models.mmformer.potential_objects_segmenter`) or the
training-free ones here: SLIC (Achanta et al., TPAMI 2012) and Felzenszwalb-Huttenlocher (IJCV 2004) superpixels
from scikit-image, and ground-truth segments (an oracle). Plus the soft IoU of proposals with a query label that
MM-Former's ranking loss and oracle use.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IOU_EPS = 1e-7
"""Epsilon in the union of MM-Former's proposal IoU (official ``get_iou``)."""


def _shape(x: object) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def proposal_iou(proposals: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                 eps: float = IOU_EPS) -> torch.Tensor:
    """Soft IoU of every proposal with the query foreground (official MM-Former ``get_iou``).

    ``I = sum M t``, ``U = sum t + sum M - I + eps`` with ``t = (label == 1)``; ignore pixels count as background
    (official ``label == 255 -> 0``). Proposals are resized to the label size first (bilinear,
    ``align_corners=False``).

    Args:
        proposals: ``[B, N, h, w]`` soft masks in ``[0, 1]`` (or binary).
        labels: ``[B, H, W]`` int query labels (0 bg, 1 fg, ``ignore_index``) or float ``[0, 1]`` masks.
        ignore_index: label value treated as background.
        eps: ``1e-7`` (official).

    Returns:
        ``[B, N]``.

    Raises:
        ValueError: ``proposals`` not ``[B, N, h, w]`` or ``labels`` not ``[B, H, W]`` with the same B.
    """
    if not isinstance(proposals, torch.Tensor) or proposals.dim() != 4:
        raise ValueError(f"proposal_iou: proposals must be [B, N, h, w]; got {_shape(proposals)}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.shape[0] != proposals.shape[0]:
        raise ValueError(f"proposal_iou: labels must be [B={proposals.shape[0]}, H, W]; got {_shape(labels)}")
    if labels.is_floating_point():
        t = labels
    else:
        t = torch.where(labels == ignore_index, torch.zeros_like(labels), labels).eq(1)
    t = t.to(proposals.dtype)
    if proposals.shape[-2:] != labels.shape[-2:]:
        proposals = F.interpolate(proposals, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    p = proposals.flatten(2)                                             # [B, N, HW]
    t = t.flatten(1)[:, None]                                            # [B, 1, HW]
    inter = (p * t).sum(-1)
    union = t.sum(-1) + p.sum(-1) - inter + eps
    return inter / union


def segments_to_masks(segments: np.ndarray | torch.Tensor, max_proposals: int | None = None) -> torch.Tensor:
    """Turn an integer segment map ``[H, W]`` into binary proposal masks ``[N, H, W]`` (one per segment id).

    Args:
        segments: integer ids (any values; each distinct value is one proposal, in ascending order).
        max_proposals: keep the ``max_proposals`` largest segments (ties: lower id first), or pad with empty
            masks up to it, so a fixed-N matcher (``MatchingMLP``) can take them.

    Returns:
        float32 ``[N, H, W]`` of 0/1.

    Raises:
        ValueError: ``segments`` is not 2-D.
    """
    seg = torch.as_tensor(np.asarray(segments) if not isinstance(segments, torch.Tensor) else segments)
    if seg.dim() != 2:
        raise ValueError(f"segments_to_masks: segments must be [H, W]; got {_shape(seg)}")
    ids = torch.unique(seg)
    masks = (seg[None] == ids[:, None, None]).float()
    return masks if max_proposals is None else _fix_count(masks, max_proposals)


def _fix_count(masks: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the ``n`` largest masks (original order; ties: earlier first) or pad with empty masks up to ``n``."""
    if masks.shape[0] > n:
        keep = torch.argsort(-masks.flatten(1).sum(1), stable=True)[:n]
        return masks[torch.sort(keep).values]
    if masks.shape[0] < n:
        return torch.cat([masks, masks.new_zeros(n - masks.shape[0], *masks.shape[1:])])
    return masks


def _image_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim not in (2, 3):
        raise ValueError(f"superpixel proposals need an image [H, W, 3], [3, H, W] or [H, W]; got {arr.shape}")
    return arr


def slic_proposals(image: np.ndarray | torch.Tensor, n_segments: int = 100, compactness: float = 10.0,
                   max_proposals: int | None = None, **kwargs) -> torch.Tensor:
    """SLIC superpixels (scikit-image ``segmentation.slic``) as binary proposals ``[N, H, W]``.

    Args:
        image: RGB ``[H, W, 3]`` / ``[3, H, W]`` (uint8 or float; a normalised tensor works too, SLIC rescales),
            or grey ``[H, W]``.
        n_segments: approximate number of superpixels. compactness: colour vs space trade-off.
        max_proposals: fixed N (largest kept / empty masks padded), see :func:`segments_to_masks`.
        **kwargs: passed to ``skimage.segmentation.slic`` (e.g. ``sigma``, ``start_label``).

    Returns:
        float32 ``[N, H, W]`` 0/1, disjoint, covering the image.
    """
    from skimage.segmentation import slic

    arr = _image_hwc(image)
    channel_axis = -1 if arr.ndim == 3 else None
    seg = slic(arr, n_segments=n_segments, compactness=compactness, channel_axis=channel_axis, **kwargs)
    return segments_to_masks(seg, max_proposals)


def felzenszwalb_proposals(image: np.ndarray | torch.Tensor, scale: float = 100.0, sigma: float = 0.8,
                           min_size: int = 50, max_proposals: int | None = None) -> torch.Tensor:
    """Felzenszwalb-Huttenlocher graph segments (scikit-image ``segmentation.felzenszwalb``) as ``[N, H, W]``.

    Args:
        image: as :func:`slic_proposals`. scale, sigma, min_size: scikit-image's parameters (larger ``scale``:
            larger segments). max_proposals: fixed N, see :func:`segments_to_masks`.

    Returns:
        float32 ``[N, H, W]`` 0/1, disjoint, covering the image.
    """
    from skimage.segmentation import felzenszwalb

    arr = _image_hwc(image)
    channel_axis = -1 if arr.ndim == 3 else None
    seg = felzenszwalb(arr, scale=scale, sigma=sigma, min_size=min_size, channel_axis=channel_axis)
    return segments_to_masks(seg, max_proposals)


def ground_truth_proposals(label: torch.Tensor, ignore_index: int = 255, connected_components: bool = False,
                           max_proposals: int | None = None) -> torch.Tensor:
    """Ground-truth segments as proposals (an oracle source): one mask per label value, ignore pixels left out.

    Args:
        label: int ``[H, W]`` (a dense multi-class label, e.g. a GFSS query label, or a binary episode label).
        ignore_index: value excluded from every mask.
        connected_components: split each class into its 8-connected components (``scipy.ndimage.label``),
            i.e. instance-like segments.
        max_proposals: fixed N, see :func:`segments_to_masks`.

    Returns:
        float32 ``[N, H, W]`` 0/1.

    Raises:
        ValueError: ``label`` is not 2-D.
    """
    lab = torch.as_tensor(label)
    if lab.dim() != 2:
        raise ValueError(f"ground_truth_proposals: label must be [H, W]; got {_shape(lab)}")
    lab = lab.long()
    seg = torch.where(lab == ignore_index, torch.full_like(lab, -1), lab)
    if connected_components:
        from scipy import ndimage

        arr = seg.cpu().numpy()
        comp = np.full(arr.shape, -1, dtype=np.int64)
        nxt = 0
        for value in np.unique(arr[arr >= 0]):
            parts, n = ndimage.label(arr == value, structure=np.ones((3, 3)))
            comp[parts > 0] = parts[parts > 0] - 1 + nxt
            nxt += n
        seg = torch.from_numpy(comp)
    masks = segments_to_masks(seg)
    ids = torch.unique(seg)
    masks = masks[ids >= 0]
    if max_proposals is not None:
        masks = _fix_count(masks, max_proposals)
    return masks
