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

    Labels are small and reused by many episodes, so the last ``label_cache`` of them are kept (LRU). Images are
    not kept: the feature cache keeps their features instead.

    Args:
        dataset: any :class:`SegmentationDataset`.
        transform: the resize/pad/normalise transform.
        label_cache: how many transformed labels to keep.
    """

    def __init__(self, dataset: SegmentationDataset, transform: PairTransform, label_cache: int = 4096):
        self.dataset = dataset
        self.transform = transform
        self._labels: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._label_cache = label_cache

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

    def clear(self) -> None:
        """Forget the cached labels."""
        self._labels.clear()

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [3, H, W], label [H, W])``."""
        image, label = self.dataset.load(index)
        return self.transform(image, label)


def _episode_label(items: TransformedItems, index: int, class_id: int) -> torch.Tensor:
    """Binary label of ``class_id`` in item ``index``, through the dataset's :meth:`label_value` (FSS-1000's labels
    are binary per image; a class the item does not show gives an all-background mask, ignore kept)."""
    label = items.label(index)
    value = items.dataset.label_value(index, class_id)
    if value is None:
        return torch.zeros_like(label).masked_fill_(label == IGNORE_INDEX, IGNORE_INDEX)
    return binary_episode_label(label, value)


def episode_masks(
    items: TransformedItems, indices: tuple[int, ...], class_id: int, role: str, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Binary masks ``[K, H, W]`` of ``class_id`` for ``indices`` (``dtype`` int64 by default; uint8 is lighter);
    supports must keep foreground.

    Raises:
        DatasetError: a support mask has no foreground pixel after resizing (names the image and the fix).
    """
    masks = torch.stack([_episode_label(items, i, class_id) for i in indices]).to(dtype)
    if role == "support":
        for i, m in zip(indices, masks):
            if not (m == 1).any():
                raise DatasetError(
                    f"support image {items.dataset.image_id(i)} of {items.dataset.name}/{items.dataset.split} has no "
                    f"pixel of class {items.dataset.class_name(class_id)} ({class_id}) after resizing to "
                    f"{items.transform.size}. Use a larger image size or a larger min_area when sampling."
                )
    return masks


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
