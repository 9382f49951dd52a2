"""Episodic data: datasets (generated default, users' folders, CamVid, PASCAL-5i, COCO-20i, FSS-1000), transforms,
the seeded episode sampler, episode lists and the :class:`Episode` type."""
from __future__ import annotations

import difflib
from pathlib import Path

from .base import BACKGROUND, IGNORE_INDEX, DatasetError, SegmentationDataset
from .defaults import DATASET_DEFAULTS, GFSS_DEFAULTS, PROTOCOLS, dataset_defaults
from .episode import Episode, collate_episodes
from .episodic import EpisodeDataset, TransformedItems
from .sampler import EpisodeList, EpisodeSpec, sample_fss_episodes
from .transforms import PairTransform, binary_episode_label

DATASETS = ("synthetic", "camvid", "folder", "pascal5i", "coco20i", "fss1000")


def create_dataset(name: str, root: str | Path | None = None, split: str = "val", **kwargs) -> SegmentationDataset:
    """Build a dataset by name.

    Args:
        name: one of :data:`DATASETS`.
        root: data folder (ignored by ``"synthetic"``, which is generated offline).
        split: ``"train"`` or ``"val"`` (``"test"`` for FSS-1000).
        kwargs: passed to the dataset class (e.g. ``fold_convention`` for COCO-20i, ``config`` for ``"folder"``).

    Raises:
        DatasetError: unknown name (lists the valid ones) or a missing ``root``.
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}.{hint}")
    if name == "synthetic":
        from .synthetic import SyntheticShapes

        return SyntheticShapes(split=split, **kwargs)
    if root is None:
        raise DatasetError(f"dataset {name!r} needs a data root (DATA_ROOT); see datasets/README.md")
    if name == "camvid":
        from .folder import camvid

        return camvid(root, split=split)
    if name == "folder":
        from .folder import FolderDataset

        return FolderDataset(root, split=split, **kwargs)
    if name == "pascal5i":
        from .pascal import Pascal5i

        return Pascal5i(root, split=split, **kwargs)
    if name == "coco20i":
        from .coco import Coco20i

        return Coco20i(root, split=split, **kwargs)
    from .fss1000 import FSS1000

    return FSS1000(root, split=split, **kwargs)


__all__ = [
    "BACKGROUND",
    "DATASETS",
    "DATASET_DEFAULTS",
    "GFSS_DEFAULTS",
    "PROTOCOLS",
    "DatasetError",
    "Episode",
    "EpisodeDataset",
    "EpisodeList",
    "EpisodeSpec",
    "IGNORE_INDEX",
    "PairTransform",
    "SegmentationDataset",
    "TransformedItems",
    "binary_episode_label",
    "collate_episodes",
    "create_dataset",
    "dataset_defaults",
    "sample_fss_episodes",
]
