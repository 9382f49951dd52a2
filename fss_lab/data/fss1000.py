"""FSS-1000 (Li et al., CVPR 2020): 1,000 classes x 10 images with binary masks; evaluated on held-out classes.

The standard class split is HSNet's (Min et al., ICCV 2021): ``data/splits/fss/{trn,val,test}.txt`` of the public
``juhongm999/hsnet`` repository, 520 / 240 / 240 class names, one per line. Without those files a seeded split
of the same proportions is used, with a warning (numbers are then not comparable with published tables).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import DatasetError, SegmentationDataset

FOREGROUND = 1  #: the foreground value of FSS-1000's binary labels

#: HSNet's split sizes (classes).
FSS1000_SPLIT_SIZES = {"train": 520, "val": 240, "test": 240}
#: File names looked for in a split folder (HSNet calls the training split ``trn``).
SPLIT_FILE_NAMES = {"train": ("trn.txt", "train.txt"), "val": ("val.txt",), "test": ("test.txt",)}
_ALIASES = {"trn": "train"}


def read_class_list(path: str | Path) -> list[str]:
    """Class names of a split file (one per line; blank lines skipped). Raises DatasetError if missing/empty."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"FSS-1000 split file not found: {path}. Get HSNet's data/splits/fss/*.txt (see datasets/README.md)."
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"FSS-1000 split file {path} lists no classes")
    return names


def seeded_class_split(class_names: list[str], seed: int = 0) -> dict[str, tuple[str, ...]]:
    """A deterministic train/val/test class split in HSNet's 520/240/240 proportions (fallback only).

    The sorted class names are permuted with ``numpy.random.default_rng(seed)``; val and test each get
    ``round(0.24 * n)`` classes (at least 1), train the rest. Each split is returned sorted.

    Raises:
        DatasetError: fewer than 3 classes.
    """
    names = sorted(class_names)
    if len(names) < 3:
        raise DatasetError(f"FSS-1000 fallback split needs at least 3 class folders, found {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_held = max(1, round(len(names) * FSS1000_SPLIT_SIZES["test"] / 1000))
    test, val, train = order[:n_held], order[n_held : 2 * n_held], order[2 * n_held :]
    return {k: tuple(sorted(names[i] for i in idx)) for k, idx in (("train", train), ("val", val), ("test", test))}


def binary_mask(path: Path, threshold: int = 128) -> np.ndarray:
    """Read an FSS-1000 mask as bool ``[H, W]`` (foreground True).

    Any PNG mode is read as grey (``L``); a mask whose maximum is 1 is a 0/1 mask, otherwise pixels
    ``>= threshold`` are foreground (HSNet's rule, which also absorbs anti-aliased edges).

    Raises:
        DatasetError: missing or undecodable file.
    """
    if not path.is_file():
        raise DatasetError(f"FSS-1000 mask not found: {path}. Every <n>.jpg needs a <n>.png next to it.")
    try:
        with Image.open(path) as im:
            grey = np.asarray(ImageOps.exif_transpose(im).convert("L"))  # as displayed, like read_rgb
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"mask file does not decode: {path} ({exc}). Re-download the class folder.") from exc
    return grey == 1 if grey.max() == 1 else grey >= threshold


def _stem_key(path: Path) -> tuple:
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


class FSS1000(SegmentationDataset):
    """FSS-1000 images of one class split; every class of the split is novel (fold 0).

    Layout::

        root/<class name>/1.jpg, 1.png, ..., 10.jpg, 10.png     masks: foreground 255 (or 1), background 0
        root/splits/trn.txt, val.txt, test.txt                  optional: HSNet's class lists

    Args:
        root: the FSS-1000 folder (one sub-folder per class).
        split: ``"test"`` (default), ``"val"`` or ``"train"`` (``"trn"`` accepted).
        split_files: folder holding ``trn.txt``/``val.txt``/``test.txt``, a single class-list file for ``split``,
            or ``{split: file}``. Default: ``root/splits`` when it has the split's file, else a seeded split
            (:func:`seeded_class_split`) with a ``UserWarning``.
        seed: seed of the fallback split.
        threshold: grey level from which a mask pixel is foreground (see :func:`binary_mask`).

    Class ids are ``1..N`` over the split's class names sorted alphabetically (HSNet sorts them too);
    ``folds == {0: (1, ..., N)}``. Every image shows one class, so labels are **binary**: uint8 ``[H, W]``,
    0 background, 1 foreground (the item's own class, :meth:`class_of`); :meth:`label_value` tells episode code
    which value class ``c`` has in item ``i``. No global class id is stored in a label, so any number of classes
    works (the train split has 520; a uint8 class id, with 255 = ignore, could not hold them).

    Raises:
        DatasetError: unknown split, missing split file or class folder, an image without a mask.
    """

    name = "fss1000"
    #: HSNet applies no small-object rule on FSS-1000: any foreground pixel makes an image usable.
    default_min_area = 1

    def __init__(self, root: str | Path, split: str = "test", split_files: str | Path | Mapping | None = None,
                 seed: int = 0, threshold: int = 128):
        split = _ALIASES.get(split, split)
        if split not in FSS1000_SPLIT_SIZES:
            raise DatasetError(f"unknown FSS-1000 split {split!r}; valid: {sorted(FSS1000_SPLIT_SIZES)} (or 'trn')")
        self.root, self.split, self.threshold = Path(root), split, threshold
        if not self.root.is_dir():
            raise DatasetError(f"FSS-1000 folder not found: {self.root}. See datasets/README.md.")
        names = self._split_classes(split_files, seed)
        self.class_names = tuple(names)
        self.folds = {0: tuple(range(1, len(names) + 1))}
        self._items: list[tuple[Path, Path, int]] = []
        for class_id, class_name in enumerate(self.class_names, start=1):
            self._items += [(jpg, png, class_id) for jpg, png in self._class_files(class_name)]

    def _split_classes(self, split_files, seed: int) -> list[str]:
        source = self.root / "splits" if split_files is None else split_files
        if isinstance(source, Mapping):
            files = {_ALIASES.get(k, k): v for k, v in source.items()}
            if self.split not in files:
                raise DatasetError(f"split_files has no entry for {self.split!r}; keys: {sorted(source)}")
            return sorted(read_class_list(files[self.split]))
        source = Path(source)
        if source.is_file():
            return sorted(read_class_list(source))
        for file_name in SPLIT_FILE_NAMES[self.split]:
            if (source / file_name).is_file():
                return sorted(read_class_list(source / file_name))
        if split_files is not None:
            raise DatasetError(f"no {' or '.join(SPLIT_FILE_NAMES[self.split])} in {source}")
        folders = [p.name for p in self.root.iterdir() if p.is_dir() and p.name != "splits" and p.name[0] != "."]
        warnings.warn(
            f"FSS-1000: no HSNet split files in {source}; using a seeded {seed} class split of the {len(folders)} "
            "class folders (520/240/240 proportions). Results are NOT comparable with published numbers; put "
            "HSNet's data/splits/fss/{trn,val,test}.txt in root/splits (datasets/README.md).",
            UserWarning,
            stacklevel=3,
        )
        return list(seeded_class_split(folders, seed)[self.split])

    def _class_files(self, class_name: str) -> list[tuple[Path, Path]]:
        folder = self.root / class_name
        if not folder.is_dir():
            raise DatasetError(f"FSS-1000 class folder not found: {folder} (named by the {self.split} split)")
        jpgs = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")), key=_stem_key)
        if not jpgs:
            raise DatasetError(f"FSS-1000 class folder {folder} holds no .jpg images")
        pairs = [(jpg, jpg.with_suffix(".png")) for jpg in jpgs]
        for jpg, png in pairs:
            if not png.is_file():
                raise DatasetError(f"FSS-1000 image {jpg} has no mask {png.name}; restore it or delete the image")
        return pairs

    def __len__(self) -> int:
        return len(self._items)

    def image_id(self, index: int) -> str:
        """``"<class name>/<stem>"``, e.g. ``"abacus/3"``."""
        self._check_index(index)
        jpg, _, _ = self._items[index]
        return f"{jpg.parent.name}/{jpg.stem}"

    def class_of(self, index: int) -> int:
        """The class id of item ``index`` (its folder), without reading the mask."""
        self._check_index(index)
        return self._items[index][2]

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self._items[index][0], self._items[index][1]

    def load_label(self, index: int) -> np.ndarray:
        """uint8 ``[H, W]``: 1 on the foreground (the item's class, :meth:`class_of`), 0 elsewhere."""
        self._check_index(index)
        _, png, _ = self._items[index]
        return binary_mask(png, self.threshold).astype(np.uint8)

    def label_value(self, index: int, class_id: int) -> int | None:
        """1 when ``class_id`` is item ``index``'s class (its foreground value), else ``None`` (not in the image)."""
        return FOREGROUND if self.class_of(index) == class_id else None

    def _compute_class_pixel_counts(self) -> list[dict[int, int]]:
        counts = []
        for i, (_, png, class_id) in enumerate(self._items):
            n = int(binary_mask(png, self.threshold).sum())
            counts.append({class_id: n} if n else {})
        return counts
