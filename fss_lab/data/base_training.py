"""The base-training set of a fold: images holding base classes, labels remapped to ``0..B`` (+ 255), augmentation.

Which images and which labels (fss-methods.md section 1.3):

* keep an image when it holds at least one base class covering ``min_base_area`` label pixels (RePRI / DIaM: any
  pixel, ``min_base_area=1``; PFENet / BAM: ``2 * 32 * 32`` at ~473 px);
* ``novel_policy="ignore"``: novel pixels -> 255 (RePRI / DIaM); ``"background"``: novel pixels -> 0 (BAM);
  ``"drop"``: images containing any novel class are removed (GFS-Seg), the rest keep 255 for nothing.

Augmentation (RePRI recipe, simplified; seeded per ``(seed, epoch, item)`` so a resumed run replays it exactly):
random scale in ``[0.5, 2.0]``, padding to the crop size (image: the mean colour, i.e. 0 after normalisation;
label: 255), a random crop of the transform's size, and a horizontal flip with probability 1/2.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import IGNORE_INDEX, DatasetError, SegmentationDataset
from .class_maps import NOVEL_POLICIES, GFSSClassMap
from .transforms import PairTransform


class BaseTrainingSet(Dataset):
    """A torch ``Dataset`` of ``(image float32 [3, H, W], label int64 [H, W])`` for base training.

    Args:
        dataset: the split to train (or validate) on.
        class_map: the fold's :class:`GFSSClassMap` (base ids become ``1..B``).
        novel_policy: ``"ignore"``, ``"background"`` or ``"drop"`` (see the module docstring).
        transform: resize + normalisation; its ``size`` is the output (crop) size. Build it with the model's
            ``preprocessing`` mean/std (``PairTransform(size, mean=p.mean, std=p.std)``).
        augment: random scale / crop / flip (train); ``False`` gives the plain transform (validation).
        seed: augmentation seed.
        min_base_area: label pixels a base class must cover for the image to count (1 = RePRI/DIaM rule).
        scale_range: ``(low, high)`` of the random scale factor applied after resizing to ``transform.size``.
        flip: allow horizontal flips when augmenting.

    Attributes:
        indices: the kept dataset item indices (item ``i`` of this set is ``dataset[indices[i]]``).
        num_classes: ``1 + B``; ``epoch``: the augmentation epoch (:meth:`set_epoch`).

    Raises:
        DatasetError: unknown policy, a class map from another dataset, a bad ``min_base_area`` / ``scale_range``,
            or no image left after filtering (names the dataset, the fold's base classes and the fix).
    """

    def __init__(self, dataset: SegmentationDataset, class_map: GFSSClassMap, novel_policy: str = "ignore",
                 transform: PairTransform | None = None, augment: bool = True, seed: int = 0,
                 min_base_area: int = 1, scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True):
        if novel_policy not in NOVEL_POLICIES:
            raise DatasetError(f"novel_policy {novel_policy!r} is not one of {NOVEL_POLICIES}")
        if class_map.num_dataset_classes != dataset.num_classes:
            raise DatasetError(
                f"class map has {class_map.num_dataset_classes} dataset classes but {dataset.name} has "
                f"{dataset.num_classes}; build it with GFSSClassMap.from_fold(dataset, fold)")
        if int(min_base_area) < 1:
            raise DatasetError(f"min_base_area must be >= 1 label pixel, got {min_base_area}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise DatasetError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.dataset, self.class_map, self.novel_policy = dataset, class_map, novel_policy
        self.transform = transform or PairTransform(size=(192, 192))
        self.augment, self.seed, self.epoch = bool(augment), int(seed), 0
        self.min_base_area, self.scale_range, self.flip = int(min_base_area), (float(lo), float(hi)), bool(flip)
        self.indices = self._select()
        if not self.indices:
            raise DatasetError(
                f"{dataset.describe()}: no image holds a base class {class_map.base} with >= {min_base_area} "
                f"pixels (novel_policy={novel_policy!r}). Lower min_base_area or check the fold.")
        self._pixel_policy = "background" if novel_policy == "background" else "ignore"  # "drop" left none

    def _select(self) -> list[int]:
        base, keep = set(self.class_map.base), []
        for i, counts in enumerate(self.dataset.class_pixel_counts()):
            if self.novel_policy == "drop" and self.class_map.has_novel(counts):
                continue
            if any(counts.get(c, 0) >= self.min_base_area for c in base):
                keep.append(i)
        return keep

    @property
    def num_classes(self) -> int:
        """``1 + B``: background and the base classes (the classifier's outputs)."""
        return 1 + self.class_map.num_base

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every returned image and label."""
        return tuple(self.transform.size)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before building the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def image_id(self, index: int) -> str:
        """The dataset id of item ``index``."""
        return self.dataset.image_id(self.indices[index])

    def base_label(self, label: np.ndarray) -> torch.Tensor:
        """Dataset label uint8 ``[H, W]`` -> int64 base-training label (bg 0, base ``1..B``, novel per policy, 255)."""
        return self.class_map.base_label(torch.from_numpy(np.ascontiguousarray(label)), self._pixel_policy)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image float32 [3, H, W] normalised, label int64 [H, W] in 0..B or 255)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"BaseTrainingSet index {index} out of range 0..{len(self) - 1}")
        image, label = self.dataset.load(self.indices[index])
        label = self.base_label(label).numpy()
        if not self.augment:
            return self.transform.image(image), self.transform.label(label)
        return self._augmented(image, label, np.random.default_rng([self.seed, self.epoch, int(index)]))

    def flipped(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` without random augmentation, horizontally flipped (for the cached-features mode)."""
        image, label = self.plain(index)
        return image.flip(-1), label.flip(-1)

    def plain(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` without random augmentation (the transform only), whatever ``augment`` is."""
        image, label = self.dataset.load(self.indices[index])
        return self.transform.image(image), self.transform.label(self.base_label(label).numpy())

    def _augmented(self, image: np.ndarray, label: np.ndarray,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        (crop_h, crop_w), t = self.size, self.transform
        scale = float(rng.uniform(*self.scale_range))
        h, w = max(1, round(crop_h * scale)), max(1, round(crop_w * scale))
        resized = replace(t, size=(h, w), mode="resize")
        x, y = resized.image(image), resized.label(label)  # normalised: the mean colour is 0
        pad_h, pad_w = max(0, crop_h - h), max(0, crop_w - w)
        if pad_h or pad_w:  # centred, as PFENet pads its training crops
            pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            x = F.pad(x, pads, value=0.0)
            y = F.pad(y, pads, value=IGNORE_INDEX)
        top = int(rng.integers(0, x.shape[-2] - crop_h + 1))
        left = int(rng.integers(0, x.shape[-1] - crop_w + 1))
        x, y = x[:, top:top + crop_h, left:left + crop_w], y[top:top + crop_h, left:left + crop_w]
        if self.flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()

    def describe(self) -> str:
        """One line: how many images were kept, the policy and the label space."""
        return (f"{len(self)}/{len(self.dataset)} images of {self.dataset.name}/{self.dataset.split} with a base "
                f"class (novel_policy={self.novel_policy!r}, min_base_area={self.min_base_area}), "
                f"{self.num_classes} labels (bg + {self.class_map.num_base} base)")
