"""The ``Episode``: one few-shot task (support set + query set), and its collate."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch

from .base import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Episode:
    """One few-shot episode: K support image/mask pairs and Q query image/mask pairs.

    Shapes (unbatched; :func:`collate_episodes` adds a leading episode dimension ``B`` to every tensor):

    * ``support_images``: float32 ``[K, 3, H, W]``, normalised with ``norm_mean`` / ``norm_std``;
    * ``support_masks``: int64 ``[K, H, W]``;
    * ``query_images``: float32 ``[Q, 3, H, W]``;
    * ``query_masks``: int64 ``[Q, H, W]``.

    Labels: FSS (1-way) episodes are binary: ``1`` the episode class, ``0`` everything else, ``255`` ignore
    (void and padding). GFSS tasks carry background ``0``, base ids ``1..B`` and novel ids ``B+1..B+N``.

    Attributes:
        class_ids: the dataset class id(s) the episode is about (one for 1-way FSS).
        support_ids / query_ids: dataset image ids, for figures and saved lists.
        support_indices / query_indices: dataset item indices (keys of the feature cache).
        norm_mean / norm_std: the normalisation applied to the images (figures undo it).
    """

    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_images: torch.Tensor
    query_masks: torch.Tensor
    class_ids: tuple[int, ...] = ()
    support_ids: tuple[str, ...] = ()
    query_ids: tuple[str, ...] = ()
    support_indices: tuple[int, ...] = ()
    query_indices: tuple[int, ...] = ()
    norm_mean: tuple[float, float, float] = IMAGENET_MEAN
    norm_std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = field(default=IGNORE_INDEX)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def is_batched(self) -> bool:
        """True after :func:`collate_episodes` (tensors have a leading ``B`` dimension)."""
        return self.support_images.dim() == 5

    @property
    def shots(self) -> int:
        """K, the number of support pairs."""
        return self.support_images.shape[-4]

    def validate(self) -> None:
        """Check shapes and dtypes; raise ``ValueError`` naming the tensor, its shape and the expected one."""
        batched = self.support_images.dim() == 5
        lead = "[B, " if batched else "["
        img_dim, mask_dim = (5, 4) if batched else (4, 3)
        for name, dim, dtype in (
            ("support_images", img_dim, torch.float32),
            ("query_images", img_dim, torch.float32),
            ("support_masks", mask_dim, torch.int64),
            ("query_masks", mask_dim, torch.int64),
        ):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != dim:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                want = f"{lead}K, 3, H, W]" if "images" in name else f"{lead}K, H, W]"
                raise ValueError(f"Episode.{name} has shape {shape}; expected {want}")
            if t.dtype != dtype:
                raise ValueError(f"Episode.{name} has dtype {t.dtype}; expected {dtype}")
        for images, masks in (("support_images", "support_masks"), ("query_images", "query_masks")):
            i, m = getattr(self, images), getattr(self, masks)
            if i.shape[:-3] != m.shape[:-2] or i.shape[-2:] != m.shape[-2:]:
                raise ValueError(
                    f"Episode.{images} {tuple(i.shape)} and Episode.{masks} {tuple(m.shape)} disagree "
                    "(same number of items and the same H, W expected)"
                )
        if self.support_images.shape[-3] != 3:
            raise ValueError(f"Episode.support_images has {self.support_images.shape[-3]} channels; expected 3 (RGB)")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


_TENSOR_FIELDS = ("support_images", "support_masks", "query_images", "query_masks")


def collate_episodes(episodes: Sequence[Episode]) -> Episode:
    """Stack episodes of equal K, Q and size into one batched :class:`Episode` (DataLoader ``collate_fn``).

    Args:
        episodes: unbatched episodes with identical tensor shapes.

    Returns:
        An :class:`Episode` whose tensors have a leading ``B`` dimension; id/index fields become tuples of
        per-episode tuples.

    Raises:
        ValueError: empty input, or episodes whose shapes differ (use the same transform and shot count).
    """
    if not episodes:
        raise ValueError("collate_episodes got no episodes")
    first = episodes[0]
    for ep in episodes[1:]:
        for name in _TENSOR_FIELDS:
            if getattr(ep, name).shape != getattr(first, name).shape:
                raise ValueError(
                    f"cannot collate episodes: {name} shapes differ ({tuple(getattr(first, name).shape)} vs "
                    f"{tuple(getattr(ep, name).shape)}); resize to one size and use one shot count per batch"
                )
    stacked = {name: torch.stack([getattr(ep, name) for ep in episodes]) for name in _TENSOR_FIELDS}
    grouped = {
        name: tuple(getattr(ep, name) for ep in episodes)
        for name in ("class_ids", "support_ids", "query_ids", "support_indices", "query_indices")
    }
    return Episode(**stacked, **grouped, norm_mean=first.norm_mean, norm_std=first.norm_std)
