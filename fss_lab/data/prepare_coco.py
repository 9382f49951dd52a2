"""Write COCO-20i class-index masks and list files from COCO 2014 instance annotations (pycocotools).

Convention (RePRI / DIaM ``create_masks``): class index = position of the category in the category list sorted by
``category_id`` + 1 (1..80 for COCO); background 0; crowd annotations skipped; the annotations of an image are
filled in annotation-file order, so a later instance overwrites an earlier one where they overlap; no 255.
By default every polygon of an annotation is filled (``COCO.annToMask``); ``polygons="first"`` fills only the
first polygon of each annotation, as the RePRI/DIaM script does (differs only for instances split in parts).

Command line::

    python -m fss_lab.data.prepare_coco --annotations COCO/annotations/instances_val2014.json \\
        --out COCO/val --images COCO/val2014 --list COCO/lists/coco/val.txt
"""
from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .base import DatasetError


def load_coco(annotations: str | Path, quiet: bool = True):
    """Load an instances JSON with ``pycocotools.coco.COCO`` (its progress prints silenced when ``quiet``).

    Raises:
        DatasetError: the file is missing; ImportError: pycocotools is not installed (says how to install it).
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("prepare_coco needs pycocotools: pip install pycocotools") from exc
    path = Path(annotations)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file not found: {path}. Unzip annotations_trainval2014.zip first.")
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return COCO(str(path))


def category_index(coco) -> dict[int, int]:
    """``{COCO category_id: class index}``, index = position in the category list sorted by id, plus 1 (1..80)."""
    ids = sorted(coco.cats)
    if len(ids) > 254:
        raise DatasetError(f"{len(ids)} categories do not fit a uint8 mask (at most 254; 255 = ignore)")
    return {cat_id: k + 1 for k, cat_id in enumerate(ids)}


def instance_mask(coco, image_id: int, cat_index: dict[int, int], polygons: str = "all") -> np.ndarray:
    """The class-index mask of one image.

    Args:
        coco: a loaded ``pycocotools.coco.COCO``.
        image_id: COCO image id.
        cat_index: from :func:`category_index`.
        polygons: ``"all"`` (every polygon of an annotation) or ``"first"`` (RePRI/DIaM behaviour).

    Returns:
        uint8 ``[height, width]``: 0 background, class index where an annotation covers the pixel (later
        annotations overwrite earlier ones; crowd annotations skipped).

    Raises:
        DatasetError: unknown ``polygons`` value, or an annotation with an unknown category_id.
    """
    from pycocotools import mask as mask_utils

    if polygons not in ("all", "first"):
        raise DatasetError(f"polygons must be 'all' or 'first', got {polygons!r}")
    info = coco.imgs[image_id]
    height, width = int(info["height"]), int(info["width"])
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in cat_index:
            raise DatasetError(
                f"annotation {ann.get('id')} of image {image_id} has category_id {ann['category_id']}, "
                "which is not in the file's 'categories'"
            )
        segm = ann["segmentation"]
        with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 copy-keyword DeprecationWarning
            warnings.filterwarnings("ignore", message=".*copy keyword", category=DeprecationWarning)
            if polygons == "first" and isinstance(segm, list):
                binary = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segm[:1], height, width)))
            else:
                binary = coco.annToMask(ann)
        label[binary.astype(bool)] = cat_index[ann["category_id"]]
    return label


def annotated_images(coco, limit: int | None = None) -> list[dict]:
    """Image entries that have at least one annotation (crowd included), sorted by file name; first ``limit``."""
    entries = sorted((coco.imgs[i] for i in coco.imgToAnns if i in coco.imgs), key=lambda e: e["file_name"])
    return entries if limit is None else entries[:limit]


def write_masks(coco, out_dir: str | Path, images: Sequence[dict] | None = None, polygons: str = "all",
                progress: bool = True) -> list[Path]:
    """Write ``out_dir/<image file stem>.png`` (mode ``L``) for each image entry; returns the written paths.

    Args:
        coco: a loaded ``COCO``; images: entries to write (default :func:`annotated_images`);
        polygons: see :func:`instance_mask`; progress: show a tqdm bar.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cat_index = category_index(coco)
    images = annotated_images(coco) if images is None else images
    written = []
    for entry in _progress(images, progress, "COCO masks"):
        path = out_dir / (Path(entry["file_name"]).stem + ".png")
        Image.fromarray(instance_mask(coco, entry["id"], cat_index, polygons)).save(path)
        written.append(path)
    return written


def write_list(images: Iterable[dict], list_path: str | Path, image_dir: str, mask_dir: str) -> Path:
    """Write a list file: one ``<image_dir>/<file_name> <mask_dir>/<stem>.png`` line per image entry.

    ``image_dir`` and ``mask_dir`` are relative to the data root, e.g. ``"val2014"`` and ``"val"``.
    """
    list_path = Path(list_path)
    list_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{image_dir}/{e['file_name']} {mask_dir}/{Path(e['file_name']).stem}.png" for e in images]
    list_path.write_text("\n".join(lines) + "\n")
    return list_path


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from ..progress import progress_bar

    return progress_bar(items, desc=desc)


def _relative(path: Path, root: Path, flag: str) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise DatasetError(f"{flag} {path} is not inside --root {root}; list entries must be relative to the root")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m fss_lab.data.prepare_coco --annotations A --out MASKS [--list L ...]``."""
    p = argparse.ArgumentParser(prog="python -m fss_lab.data.prepare_coco", description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="instances_{train,val}2014.json")
    p.add_argument("--out", required=True, help="folder for the mask PNGs, e.g. COCO/val")
    p.add_argument("--list", help="also write a list file here, e.g. COCO/lists/coco/val.txt")
    p.add_argument("--images", help="image folder named in the list (default: <root>/<split>2014 from the JSON name)")
    p.add_argument("--root", help="list entries are relative to this (default: the parent of --out)")
    p.add_argument("--polygons", choices=("all", "first"), default="all", help="'first' = RePRI/DIaM behaviour")
    p.add_argument("--limit", type=int, help="only the first N annotated images (a quick try)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        _run(args)
    except DatasetError as exc:
        p.error(str(exc))  # usage + message on stderr, exit status 2
    return 0


def _run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    root = Path(args.root) if args.root else out.parent
    stem = Path(args.annotations).stem  # instances_val2014
    image_dir = Path(args.images) if args.images else root / stem.replace("instances_", "")
    if args.list:  # check the paths before the long mask-writing pass
        list_dirs = _relative(image_dir, root, "--images"), _relative(out, root, "--out")
    coco = load_coco(args.annotations)
    images = annotated_images(coco, args.limit)
    write_masks(coco, out, images, polygons=args.polygons, progress=not args.quiet)
    print(f"wrote {len(images)} masks to {out}")
    if args.list:
        write_list(images, args.list, *list_dirs)
        print(f"wrote {len(images)} lines to {args.list}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
