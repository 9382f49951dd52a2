"""The one dataset interface every source (generated, folder, PASCAL-5i, COCO-20i, FSS-1000) implements.

Label convention, shared by every dataset in fss_lab (PFENet / RePRI / DIaM):

* ``0``      background (a dataset without a background class, e.g. CamVid, simply never uses it);
* ``1..C``   the dataset's classes, ``class_names[k - 1]`` names class id ``k``;
* ``255``    ignore (void, object boundaries, unlabelled pixels, padding added by transforms).

Images are returned as ``uint8`` RGB arrays ``[H, W, 3]`` and labels as ``uint8`` arrays ``[H, W]``; both have
the same size. Files are read as displayed: an EXIF ``Orientation`` tag (phone photos) is applied
(``PIL.ImageOps.exif_transpose``) to images, labels and the header-only size checks alike. Loading never silently
repairs data: a corrupt file, a label value outside ``{0..C, 255}`` or an image/label size mismatch raises :class:`DatasetError` naming the file, the value and the fix.
"""
from __future__ import annotations

import abc
import json
import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..labels import BACKGROUND, IGNORE_INDEX  # noqa: F401  (re-exported: the dataset convention)
#: EXIF tag of the orientation (1 = as stored; 5-8 = transposed, i.e. width and height swap when displayed).
EXIF_ORIENTATION = 0x0112


class DatasetError(ValueError):
    """Bad data on disk or a request the dataset cannot satisfy; the message names the file/value and the fix."""


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file (any format Pillow decodes).

    Returns:
        ``np.ndarray`` uint8 ``[H, W, 3]``, as displayed: the EXIF orientation (e.g. 6 = rotate 90 degrees
        clockwise, what phones write) is applied, so ``H x W`` is the displayed size.

    Raises:
        DatasetError: the file is missing or does not decode (the message names the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}. Check the data root and the list file that names it.")
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(
            f"image file does not decode: {path} ({exc}). Re-download or re-export it, or remove it from the list."
        ) from exc


def read_label(path: str | Path) -> np.ndarray:
    """Read a label PNG as raw integer values (palette indices for palettised PNGs, as VOC stores them).

    Args:
        path: single-channel (``L`` or ``P`` mode) label image.

    Returns:
        ``np.ndarray`` ``[H, W]`` with the stored integer values (``uint8`` or wider for 16-bit PNGs), with an
        EXIF orientation applied like :func:`read_rgb` (rare in masks; kept consistent with the images).

    Raises:
        DatasetError: missing, undecodable, or multi-channel file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}. Check the data root and the list file that names it.")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetError(
                    f"label file {path} has mode {im.mode!r}; expected a single-channel PNG of class ids "
                    "(mode L or P). Convert colour-coded masks to class ids first."
                )
            return np.asarray(ImageOps.exif_transpose(im)).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"label file does not decode: {path} ({exc}). Re-export it as a PNG of class ids.") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """Displayed ``(H, W)`` of an image file from its header (EXIF orientation 5-8 swaps the stored sides).

    Raises:
        FileNotFoundError: no file. PIL.UnidentifiedImageError / OSError: not an image.
    """
    with Image.open(path) as im:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        return (im.width, im.height) if orientation in (5, 6, 7, 8) else (im.height, im.width)


def check_label(label: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Check that a label only holds ``{0..num_classes, 255}`` and return it as uint8.

    Args:
        label: ``[H, W]`` integer array after any value remapping.
        num_classes: ``C``, the number of (non-background) classes.
        where: the file (or item) named in the error.

    Raises:
        DatasetError: a value outside ``{0..C, 255}``; the message lists the bad values and the fix.
    """
    values = np.unique(label)
    bad = [int(v) for v in values if not (0 <= v <= num_classes or v == IGNORE_INDEX)]
    if bad:
        raise DatasetError(
            f"{where}: mask values {bad[:10]} are outside this dataset's classes (0..{num_classes}, 255 = ignore). "
            "Fix the mask, or map these values in the dataset config (value_map / ignore_values)."
        )
    return label.astype(np.uint8, copy=False)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: str, label_path: str) -> None:
    """Raise :class:`DatasetError` when an image and its label differ in size (both ``[H, W, ...]``)."""
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {label_path} is "
            f"{label.shape[1]}x{label.shape[0]}. Resize the mask with nearest-neighbour interpolation to the image "
            "size, or fix the pairing in the list file."
        )


class SegmentationDataset(abc.ABC):
    """A semantic-segmentation split with named classes and few-shot folds.

    Subclasses implement :meth:`__len__`, :meth:`image_id`, :meth:`_paths` (or override :meth:`load_image` /
    :meth:`load_label`), and set ``name``, ``split``, ``class_names`` and ``folds``.

    Attributes:
        name: dataset name, e.g. ``"pascal5i"``; used in cache keys and saved episode lists.
        split: ``"train"`` or ``"val"`` (or another split name the source defines).
        class_names: ``class_names[k - 1]`` is the name of class id ``k``.
        folds: ``{fold: (novel class ids, ...)}``; base classes of a fold are all the others.
    """

    name: str = "dataset"
    split: str = "val"
    class_names: tuple[str, ...] = ()
    folds: Mapping[int, tuple[int, ...]] = {}
    #: PFENet's small-object rule: a class counts in an image when it covers at least this many pixels at label
    #: resolution (2 * 32 * 32, defined for ~473-pixel images). Datasets with smaller images scale it down.
    default_min_area: int = 2 * 32 * 32

    # ---- to implement -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def image_id(self, index: int) -> str:
        """A stable, unique id of item ``index`` (e.g. the file stem); saved in episode lists."""

    def _paths(self, index: int) -> tuple[Path, Path]:
        """``(image path, label path)`` of item ``index`` for file-backed datasets."""
        raise NotImplementedError(f"{type(self).__name__} must implement _paths() or load_image()/load_label()")

    def _map_label(self, raw: np.ndarray, index: int) -> np.ndarray:
        """Map raw stored values to the fss_lab convention (identity by default)."""
        return raw

    # ---- provided ------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """``C``: the number of classes, background excluded."""
        return len(self.class_names)

    @property
    def num_folds(self) -> int:
        return len(self.folds)

    def load_image(self, index: int) -> np.ndarray:
        """Item ``index`` as uint8 RGB ``[H, W, 3]``. Raises :class:`DatasetError` on a missing/corrupt file."""
        self._check_index(index)
        return read_rgb(self._paths(index)[0])

    def load_label(self, index: int) -> np.ndarray:
        """Item ``index``'s label as uint8 ``[H, W]`` in ``{0..C, 255}``; checked, with errors naming the file."""
        self._check_index(index)
        image_path, label_path = self._paths(index)
        label = self._map_label(read_label(label_path), index)
        return check_label(label, self.num_classes, str(label_path))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image [H, W, 3] uint8, label [H, W] uint8)``, checked to have the same size."""
        image, label = self.load_image(index), self.load_label(index)
        try:
            where = tuple(str(p) for p in self._paths(index))
        except NotImplementedError:
            where = (f"{self.name}[{index}] image", f"{self.name}[{index}] label")
        check_same_size(image, label, *where)
        return image, label

    def item_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of item ``index``'s image in pixels, read from the file header when there is a file (cheap).

        The displayed size: an EXIF orientation 5-8 (a phone photo taken upright) swaps the stored width and height,
        as :func:`read_rgb` does.

        Raises:
            DatasetError: the image file is missing or not an image.
        """
        try:
            image_path = self._paths(index)[0]
        except NotImplementedError:
            return tuple(self.load_image(index).shape[:2])
        try:
            return image_size(image_path)
        except FileNotFoundError as exc:
            raise DatasetError(f"image file not found: {image_path}. Check the data root and the list file.") from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"image file does not decode: {image_path} ({exc}). Re-export it.") from exc

    def load_label_checked(self, index: int) -> np.ndarray:
        """:meth:`load_label`, plus a check that the label has the image's size (without decoding the image)."""
        label = self.load_label(index)
        height, width = self.item_size(index)
        if label.shape[:2] != (height, width):
            try:
                where = tuple(str(p) for p in self._paths(index))
            except NotImplementedError:
                where = (f"{self.name}[{index}] image", f"{self.name}[{index}] label")
            check_same_size(np.empty((height, width, 0)), label, *where)
        return label

    def group(self, index: int) -> str | None:
        """The group (e.g. the video of a CamVid frame) of item ``index``, or ``None``.

        Episode samplers can require supports from a different group than the query (``cross_group=True``)
        so that near-duplicate frames never pair up.
        """
        return None

    def class_name(self, class_id: int) -> str:
        """Name of class id ``class_id`` (``0`` -> ``"background"``)."""
        if class_id == BACKGROUND:
            return "background"
        if not 1 <= class_id <= self.num_classes:
            raise DatasetError(f"{self.name}: class id {class_id} is not in 1..{self.num_classes}")
        return self.class_names[class_id - 1]

    def novel_classes(self, fold: int) -> tuple[int, ...]:
        """Novel (test) class ids of ``fold``. Raises :class:`DatasetError` listing the valid folds."""
        if fold not in self.folds:
            raise DatasetError(
                f"{self.name} has no fold {fold!r}; valid folds: {sorted(self.folds)}. Pass one of them as FOLD."
            )
        return tuple(self.folds[fold])

    def base_classes(self, fold: int) -> tuple[int, ...]:
        """Base (training) class ids of ``fold``: every class that is not novel in it."""
        novel = set(self.novel_classes(fold))
        return tuple(c for c in range(1, self.num_classes + 1) if c not in novel)

    def class_pixel_counts(self) -> list[dict[int, int]]:
        """Per item, ``{class id: pixel count}`` at label resolution (background and ignore excluded).

        Computed once by reading every label (as the PFENet/RePRI loaders do) and memoised; datasets with a
        faster source (the generated one) override :meth:`_compute_class_pixel_counts`.
        """
        return self._class_pixel_counts

    @cached_property
    def _class_pixel_counts(self) -> list[dict[int, int]]:
        return self._compute_class_pixel_counts()

    def _compute_class_pixel_counts(self) -> list[dict[int, int]]:
        counts = []
        for i in range(len(self)):
            values, n = np.unique(self.load_label(i), return_counts=True)
            counts.append({int(v): int(c) for v, c in zip(values, n) if v not in (BACKGROUND, IGNORE_INDEX)})
        return counts

    def label_value(self, index: int, class_id: int) -> int | None:
        """The value class ``class_id`` has in item ``index``'s label: the class id itself here; datasets with
        binary per-image labels (FSS-1000) return their foreground value, or ``None`` when the item is of another
        class. Episode code compares labels with this value, never with a global class id."""
        return class_id

    def describe(self) -> str:
        """One line: name, split, size, classes, folds."""
        return f"{self.name}/{self.split}: {len(self)} images, {self.num_classes} classes, {self.num_folds} folds"

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range 0..{len(self) - 1}")


class ListDataset(SegmentationDataset):
    """A :class:`SegmentationDataset` backed by a PFENet-style list: ``self._pairs`` holds ``(image, label)`` paths.

    Subclasses set ``_pairs`` (e.g. from :func:`read_list_file`); item ids are the image file stems.
    """

    _pairs: list[tuple[Path, Path]]

    def __len__(self) -> int:
        return len(self._pairs)

    def image_id(self, index: int) -> str:
        """The image file stem, e.g. ``"2008_000008"`` (VOC) or ``"COCO_val2014_000000429717"``."""
        self._check_index(index)
        return self._pairs[index][0].stem

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self._pairs[index]


def read_list_file(list_path: str | Path, root: str | Path) -> list[tuple[Path, Path]]:
    """Read a PFENet-style list: one ``<image path> <label path>`` pair per line, relative to ``root``.

    Args:
        list_path: the list file.
        root: the folder the paths are relative to.

    Returns:
        ``[(image path, label path), ...]`` as absolute paths (existence is checked lazily when loading, and
        eagerly by :func:`check_list_files`).

    Raises:
        DatasetError: the list is missing or a line does not hold two paths (names the line and the fix).
    """
    list_path, root = Path(list_path), Path(root)
    if not list_path.is_file():
        raise DatasetError(f"list file not found: {list_path}. See datasets/README.md for how to obtain it.")
    pairs = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(
                f"{list_path}:{lineno}: expected '<image path> <label path>', got {line!r}. "
                "Separate the two relative paths by one space."
            )
        pairs.append((root / parts[0], root / parts[1]))
    if not pairs:
        raise DatasetError(f"list file {list_path} is empty")
    return pairs


def check_list_files(pairs: Sequence[tuple[Path, Path]], list_path: str | Path) -> None:
    """Raise :class:`DatasetError` naming the first list entry whose image or label file is missing."""
    for image_path, label_path in pairs:
        for p in (image_path, label_path):
            if not p.is_file():
                raise DatasetError(
                    f"{list_path} names {p}, which does not exist. Restore the file or remove its line from the list."
                )


def save_json_atomic(data: dict, path: str | Path, indent: int | None = None) -> Path:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename); returns the path.
    ``indent``: as :func:`json.dump` (``None``: one line).

    A crash mid-write never leaves a half-written file under ``path``. The file gets mode ``0644`` (readable by
    everyone, like any ``open(path, "w")`` file under the usual umask), not ``mkstemp``'s ``0600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a results / episode file is an ordinary readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_format_json(path: str | Path, fmt: str, what: str) -> dict:
    """Read a JSON file written with ``{"format": fmt, ...}``.

    Raises:
        DatasetError: unreadable or malformed file, or another format (names the file, both formats and ``what``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path} is not an fss_lab {what} (format {found!r}, want {fmt})")
    return data


def load_json(path: str | Path) -> dict:
    """Read a JSON file with an error naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DatasetError(f"config file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"config file {path} is not valid JSON: {exc}") from exc
