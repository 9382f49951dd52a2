"""Turn sampled :class:`~fss_lab.data.sampler.EpisodeSpec` lists into tensors: a transformed item view and a
``torch.utils.data.Dataset`` of :class:`~fss_lab.data.episode.Episode` objects."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.data import Dataset

from .base import IGNORE_INDEX, DatasetError, SegmentationDataset
from .episode import Episode
from .sampler import EpisodeList, EpisodeSpec
from .transforms import PairTransform, binary_episode_label


class TransformedItems:
    """A dataset seen through a :class:`PairTransform`: item ``i`` -> ``(image [3, H, W] float32, label [H, W] int64)``.

    Labels are small and reused by many episodes, so the last ``label_cache`` of them are kept (LRU), and so are the
    last ``mask_cache`` binary episode masks (:meth:`binary_mask`: one per (item, class), reused by every episode
    that draws the pair). Images are not kept: the feature cache keeps their features instead.

    Args:
        dataset: any :class:`SegmentationDataset`.
        transform: the resize/pad/normalise transform.
        label_cache: how many transformed labels to keep.
        mask_cache: how many binary (item, class) masks to keep (0: none).
    """

    def __init__(self, dataset: SegmentationDataset, transform: PairTransform, label_cache: int = 4096,
                 mask_cache: int = 1024):
        self.dataset = dataset
        self.transform = transform
        self._labels: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._label_cache = label_cache
        self._masks: OrderedDict[tuple[int, int], tuple[torch.Tensor, bool]] = OrderedDict()
        self._mask_cache = mask_cache

    @property
    def key(self) -> str:
        """``"<dataset>/<split>/<transform>"``: names this view in feature-cache keys."""
        return f"{self.dataset.name}/{self.dataset.split}/{self.transform.key}"

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> torch.Tensor:
        """Transformed image ``[3, H, W]`` float32 (normalised)."""
        return self.transform.image(self.dataset.load_image(index))

    def label(self, index: int) -> torch.Tensor:
        """Transformed label ``[H, W]`` uint8 (dataset ids, 255 = ignore/padding); cached, do not modify in place."""
        if index in self._labels:
            self._labels.move_to_end(index)
            return self._labels[index]
        label = self.dataset.load_label_checked(index)  # checks the label has the image's size
        y = self.transform.label(label).to(torch.uint8)  # ids <= 255: uint8 is 8x lighter than int64
        self._labels[index] = y
        if len(self._labels) > self._label_cache:
            self._labels.popitem(last=False)
        return y

    def binary_mask(self, index: int, class_id: int) -> tuple[torch.Tensor, bool]:
        """Binary episode mask of ``class_id`` in item ``index`` and whether it has a foreground pixel.

        Returns:
            ``(mask uint8 [H, W] in {0, 1, 255}, has_foreground)``: class -> 1 (through ``dataset.label_value``; a
            class the item does not show gives all background), every other label -> 0, ignore kept (fss-methods.md
            section 2 step 3, as :func:`~fss_lab.data.transforms.binary_episode_label`). Cached (LRU of
            ``mask_cache``); do not modify in place.
        """
        key = (int(index), int(class_id))
        hit = self._masks.get(key)
        if hit is not None:
            self._masks.move_to_end(key)
            return hit
        label = self.label(index)
        value = self.dataset.label_value(index, class_id)
        if value is None:
            mask = torch.zeros_like(label).masked_fill_(label == IGNORE_INDEX, IGNORE_INDEX)
        else:
            mask = binary_episode_label(label, value)
        out = (mask, bool((mask == 1).any()))
        if self._mask_cache > 0:
            self._masks[key] = out
            if len(self._masks) > self._mask_cache:
                self._masks.popitem(last=False)
        return out

    def clear(self) -> None:
        """Forget the cached labels and masks."""
        self._labels.clear()
        self._masks.clear()

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [3, H, W], label [H, W])``."""
        image, label = self.dataset.load(index)
        return self.transform(image, label)


def episode_masks(
    items: TransformedItems, indices: tuple[int, ...], class_id: int, role: str, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Binary masks ``[K, H, W]`` of ``class_id`` for ``indices`` (``dtype`` int64 by default; uint8 is lighter);
    supports must keep foreground. The one-episode case of :func:`episode_masks_batch` (same values).

    Raises:
        DatasetError: a support mask has no foreground pixel after resizing (names the image and the fix).
    """
    return episode_masks_batch(items, [indices], [class_id], role, dtype)[0]


def episode_masks_batch(
    items: TransformedItems, indices: list, class_ids: list[int], role: str, dtype: torch.dtype = torch.uint8
) -> torch.Tensor:
    """Binary masks ``[E, K, H, W]`` of E episodes at once: episode ``e``'s class ``class_ids[e]`` -> 1, every other
    label -> 0, ignore (255) kept (PFENet / RePRI convention, fss-methods.md section 2 step 3), equal to
    :func:`~fss_lab.data.transforms.binary_episode_label` per image.

    The masks come from :meth:`TransformedItems.binary_mask` (cached per (item, class)), so most episodes cost one
    ``torch.stack``: this is the per-step data cost of episodic evaluation and meta-training
    (``bench/feature_cache.py``).

    Args:
        items: the dataset through the transform (labels come from :meth:`TransformedItems.label`).
        indices: E sequences of K item indices each.
        class_ids: the E episode classes (dataset ids; each item's value through ``dataset.label_value``).
        role: ``"support"`` (every mask must keep a foreground pixel) or ``"query"``.
        dtype: of the result (uint8 by default; int64 for :class:`Episode`).

    Raises:
        ValueError: episodes with different K, or ``len(indices) != len(class_ids)``.
        DatasetError: a support mask has no foreground pixel after resizing (names the first such image and the fix).
    """
    if len(indices) != len(class_ids) or len({len(ix) for ix in indices}) > 1:
        raise ValueError(f"episode_masks_batch needs one class id per episode and equal shot counts; got "
                         f"{len(indices)} index lists of lengths {sorted({len(ix) for ix in indices})} and "
                         f"{len(class_ids)} class ids")
    flat = [(int(i), int(c)) for ix, c in zip(indices, class_ids) for i in ix]
    pairs = [items.binary_mask(i, c) for i, c in flat]  # cached per (item, class): most episodes only stack
    if role == "support":
        for (i, class_id), (_, fg) in zip(flat, pairs):
            if not fg:
                ds = items.dataset
                raise DatasetError(
                    f"support image {ds.image_id(i)} of {ds.name}/{ds.split} has no "
                    f"pixel of class {ds.class_name(class_id)} ({class_id}) after resizing to "
                    f"{items.transform.size}. Use a larger image size or a larger min_area when sampling."
                )
    masks = torch.stack([m for m, _ in pairs])
    masks = masks.view(len(indices), len(indices[0]), *masks.shape[-2:])
    return masks if masks.dtype == dtype else masks.to(dtype)


class EpisodeDataset(Dataset):
    """A ``torch.utils.data.Dataset`` of :class:`Episode` built from an :class:`EpisodeList`.

    Args:
        episodes: the sampled list.
        query_items: the query dataset seen through the transform.
        support_items: the support dataset seen through the same transform (default: ``query_items``).

    Item ``n`` is the :class:`Episode` of ``episodes[n]`` with binary masks (class -> 1, rest -> 0, 255 kept).
    Use :func:`~fss_lab.data.episode.collate_episodes` as ``collate_fn``.
    """

    def __init__(
        self, episodes: EpisodeList, query_items: TransformedItems, support_items: TransformedItems | None = None
    ):
        self.episodes = episodes
        self.query_items = query_items
        self.support_items = support_items or query_items

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, n: int) -> Episode:
        spec: EpisodeSpec = self.episodes[n]
        t = self.query_items.transform
        return Episode(
            support_images=torch.stack([self.support_items.image(i) for i in spec.support]),
            support_masks=episode_masks(self.support_items, spec.support, spec.class_id, "support"),
            query_images=torch.stack([self.query_items.image(i) for i in spec.query]),
            query_masks=episode_masks(self.query_items, spec.query, spec.class_id, "query"),
            class_ids=(spec.class_id,),
            support_ids=tuple(self.support_items.dataset.image_id(i) for i in spec.support),
            query_ids=tuple(self.query_items.dataset.image_id(i) for i in spec.query),
            support_indices=tuple(spec.support),
            query_indices=tuple(spec.query),
            norm_mean=t.mean,
            norm_std=t.std,
        )
