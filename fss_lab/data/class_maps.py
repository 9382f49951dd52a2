"""Label spaces of base training and GFSS: dataset ids -> (background, base 1..B, novel B+1..B+N).

Conventions (fss-methods.md section 1.3 and 3):

* base classes keep their sorted dataset order and become ``1..B`` (RePRI / DIaM / BAM);
* novel classes become ``B+1..B+N`` in sorted order (DIaM's GFSS label space);
* during base training, novel pixels are either ignored (``"ignore"``: RePRI / DIaM) or turned into background
  (``"background"``: BAM); GFS-Seg drops images that contain any novel class (``"drop"``, see
  :meth:`GFSSClassMap.has_novel`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..labels import LabelSpace
from .base import BACKGROUND, IGNORE_INDEX, DatasetError, SegmentationDataset

NOVEL_POLICIES = ("ignore", "background", "drop")


@dataclass(frozen=True)
class GFSSClassMap:
    """The base/novel split of one fold and the label remapping it implies.

    Attributes:
        base: dataset ids of the base classes, sorted.
        novel: dataset ids of the novel classes, sorted.
        num_dataset_classes: ``C`` of the dataset (ids ``1..C``).
    """

    base: tuple[int, ...]
    novel: tuple[int, ...]
    num_dataset_classes: int

    @classmethod
    def from_fold(cls, dataset: SegmentationDataset, fold: int) -> "GFSSClassMap":
        """The map of ``dataset``'s ``fold``.

        Raises:
            DatasetError: an unknown fold, or a fold that makes every class novel (FSS testing only: GFSS and
                base training need at least one base class).
        """
        if not dataset.base_classes(fold):
            raise DatasetError(
                f"{dataset.name} fold {fold} makes every class novel ({dataset.num_classes} classes), which serves "
                "FSS testing only; GFSS and base training need base classes: give the config 'folds' that list "
                "only some classes as novel")
        return cls(tuple(sorted(dataset.base_classes(fold))), tuple(sorted(dataset.novel_classes(fold))),
                   dataset.num_classes)

    @property
    def num_base(self) -> int:
        return len(self.base)

    @property
    def num_novel(self) -> int:
        return len(self.novel)

    @property
    def label_space(self) -> LabelSpace:
        """The GFSS label space of this fold: background, ``B`` base and ``N`` novel classes."""
        return LabelSpace(self.num_base, self.num_novel)

    @property
    def num_classes(self) -> int:
        """``1 + B + N``: background, base and novel classes of the GFSS label space."""
        return self.label_space.num_classes

    @property
    def base_ids(self) -> tuple[int, ...]:
        """GFSS ids of the base classes: ``1..B``."""
        return self.label_space.base_ids

    @property
    def novel_ids(self) -> tuple[int, ...]:
        """GFSS ids of the novel classes: ``B+1..B+N``."""
        return self.label_space.novel_ids

    def class_names(self, dataset: SegmentationDataset) -> list[str]:
        """Names in GFSS order: ``["background", base..., novel...]``."""
        return ["background"] + [dataset.class_name(c) for c in self.base + self.novel]

    def _lut(self, novel_value: int) -> np.ndarray:
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        lut[BACKGROUND] = BACKGROUND
        for i, c in enumerate(self.base, start=1):
            lut[c] = i
        for i, c in enumerate(self.novel, start=self.num_base + 1):
            lut[c] = i if novel_value < 0 else novel_value
        return lut

    def gfss_label(self, label: torch.Tensor) -> torch.Tensor:
        """Dataset label -> GFSS label (bg 0, base 1..B, novel B+1..B+N, 255 kept); int64, same shape."""
        return torch.from_numpy(self._lut(-1))[label.long()]

    def base_label(self, label: torch.Tensor, novel_policy: str = "ignore") -> torch.Tensor:
        """Dataset label -> base-training label (bg 0, base 1..B; novel pixels -> 255 or 0 by ``novel_policy``).

        Raises:
            ValueError: an unknown policy (``"drop"`` is applied by filtering images with :meth:`has_novel`).
        """
        if novel_policy not in ("ignore", "background"):
            raise ValueError(
                f"novel_policy {novel_policy!r} does not remap pixels; use 'ignore' or 'background' here "
                "(and filter images with has_novel() for 'drop')"
            )
        return torch.from_numpy(self._lut(IGNORE_INDEX if novel_policy == "ignore" else BACKGROUND))[label.long()]

    def has_novel(self, class_pixel_counts: dict[int, int]) -> bool:
        """True when an image (given its ``{class id: pixels}``) contains any novel class (GFS-Seg drops it)."""
        return any(class_pixel_counts.get(c, 0) > 0 for c in self.novel)
