"""Per-image feature cache: a frozen backbone's features of dataset item i are computed once, reused by episodes."""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from ..progress import progress_bar

from ..checks import check_finite

if TYPE_CHECKING:
    from .features import FeatureExtractor


class FeatureCache:
    """Features of dataset items, computed once by a frozen :class:`FeatureExtractor` and kept in memory.

    With a frozen backbone, an item's features do not depend on the episode it appears in; caching them turns
    "extract K + Q images per episode" into "extract each image once" (the speed-up is measured in ``bench/``).

    Args:
        extractor: the frozen extractor.
        load_image: ``index -> Tensor [3, H, W]`` float, already normalised with ``extractor.preprocessing`` and
            resized by the same deterministic transform for every call (random augmentation defeats a cache).
        batch_size: misses are extracted in batches of at most this many images (images of one size per batch).
        store_device: where cached features live (``"cpu"`` keeps accelerator memory free).
        progress: show a ``tqdm.auto`` bar in :meth:`precompute` (``TQDM_DISABLE=1`` silences it).
        key: optional description, e.g. ``"generated/fold0/240x320/efficientnet_lite0:s16"``, shown in ``repr``
            and in errors. The cache does not check it: use one cache per (dataset, transform, backbone, levels).
        image_id: optional ``index -> image id`` (e.g. ``dataset.image_id``) used in error messages.

    Every feature map is checked as it enters the cache: a NaN or Inf raises
    :class:`~fss_lab.checks.NonFiniteError` naming the item index, its image id, the cache key and the extractor
    (it would otherwise be scored as background downstream, lowering mIoU without a message).

    Counters: ``misses`` = items extracted; ``hits`` = items requested through :meth:`get` that were already
    cached (an index repeated within one call counts as a hit after its first occurrence).

    Raises:
        ValueError: ``batch_size < 1``. NonFiniteError (a ValueError), from :meth:`get` / :meth:`precompute`:
            non-finite features.
    """

    def __init__(
        self,
        extractor: "FeatureExtractor",
        load_image: Callable[[int], torch.Tensor],
        *,
        batch_size: int = 16,
        store_device: torch.device | str = "cpu",
        progress: bool = False,
        key: str | None = None,
        image_id: Callable[[int], str] | None = None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"FeatureCache batch_size must be >= 1; got {batch_size}")
        self.extractor = extractor
        self.load_image = load_image
        self.batch_size = int(batch_size)
        self.store_device = torch.device(store_device)
        self.progress = progress
        self.key = key
        self.image_id = image_id
        self._store: dict[int, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, index: object) -> bool:
        try:
            return operator.index(index) in self._store  # type: ignore[arg-type]
        except TypeError:
            return False

    def __repr__(self) -> str:
        return (f"FeatureCache(key={self.key!r}, items={len(self)}, hits={self.hits}, misses={self.misses}, "
                f"size={self.nbytes / 2**20:.1f} MiB, store_device={self.store_device})")

    @property
    def nbytes(self) -> int:
        """Memory held by the cached features, in bytes."""
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def clear(self) -> None:
        """Drop every cached feature and reset ``hits`` and ``misses`` to 0."""
        self._store.clear()
        self.hits = self.misses = 0

    def get(self, indices: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Features of the items ``indices`` (computing the misses first, in batches).

        Args:
            indices: dataset item indices (repeats allowed), e.g. ``episode.support_indices``.
            device: where to return the tensor (default: ``store_device``).

        Returns:
            float32 ``[N, D, h, w]``, ``N = len(indices)``, in the order given.

        Raises:
            ValueError: empty ``indices``; a non-integer index; a bad image from ``load_image``; items whose
                feature sizes differ (resize all images to one size in the transform). NonFiniteError: an item's
                features hold NaN/Inf (names the item, its image id, the cache key and the extractor).
        """
        idx = self._check_indices(indices)
        if not idx:
            raise ValueError("FeatureCache.get got no indices")
        fresh = self._fill(idx, progress=False)
        seen: set[int] = set()
        for i in idx:
            if i in seen or i not in fresh:
                self.hits += 1
            seen.add(i)
        feats = [self._store[i] for i in idx]
        shapes = {tuple(f.shape) for f in feats}
        if len(shapes) > 1:
            raise ValueError(
                f"FeatureCache.get: items {idx} have feature shapes {sorted(shapes)}; they cannot be stacked. "
                "Resize every image to one size in load_image's transform."
            )
        out = torch.stack(feats)
        return out if device is None else out.to(device)

    def precompute(self, indices: Iterable[int], progress: bool | None = None) -> None:
        """Extract every not-yet-cached item of ``indices`` (counts ``misses``, never ``hits``).

        Args:
            indices: dataset item indices, e.g. ``range(len(dataset))``.
            progress: show a ``tqdm.auto`` bar (default: the constructor's ``progress``).
        """
        self._fill(self._check_indices(indices), progress=self.progress if progress is None else progress)

    @staticmethod
    def _check_indices(indices: Iterable[int]) -> list[int]:
        try:
            return [operator.index(i) for i in indices]
        except TypeError as exc:
            raise ValueError(f"FeatureCache indices must be integers; got {indices!r}") from exc

    def _load(self, index: int) -> torch.Tensor:
        img = self.load_image(index)
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
            what = f"{tuple(img.shape)} {img.dtype}" if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(
                f"FeatureCache: load_image({index}) returned {what}; expected a float Tensor [3, H, W] normalised "
                "with extractor.preprocessing"
            )
        return img

    def _fill(self, indices: list[int], progress: bool) -> set[int]:
        """Extract the uncached items of ``indices`` (same-size images batched by ``batch_size``); return them."""
        todo = list(dict.fromkeys(i for i in indices if i not in self._store))
        if not todo:
            return set()
        pending: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        with progress_bar(total=len(todo), desc="features", unit="img", progress=progress) as bar:
            for i in todo:
                img = self._load(i)
                group = pending.setdefault(tuple(img.shape), [])
                group.append((i, img))
                if len(group) == self.batch_size:
                    bar.update(self._extract(pending.pop(tuple(img.shape))))
            for group in pending.values():
                bar.update(self._extract(group))
        return set(todo)

    def _extract(self, group: list[tuple[int, torch.Tensor]]) -> int:
        feats = self.extractor(torch.stack([img for _, img in group])).to(self.store_device)
        name = getattr(getattr(self.extractor, "backbone", None), "name", type(self.extractor).__name__)
        for (i, img), f in zip(group, feats):
            if not bool(torch.isfinite(f).all()):
                source = "the input image" if not bool(torch.isfinite(img).all()) else f"extractor {name}"
                check_finite(f, f"features of item {i}", cache=self.key, extractor=name,
                             image_id=self.image_id(i) if self.image_id is not None else i, produced_by=source)
            self._store[i] = f.clone()  # own storage: not a view that keeps the whole batch alive
        self.misses += len(group)
        return len(group)
