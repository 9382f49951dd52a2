"""EXIF orientation (issue 9, finding 4): a phone photo is read as displayed, with its mask, sizes and checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fss_lab.data.base import EXIF_ORIENTATION, image_size, read_rgb
from fss_lab.data.folder import FolderDataset


def _phone_photo(path: Path, stored_wh: tuple[int, int]) -> None:
    """A JPEG stored ``W x H`` with Orientation 6 (display = stored rotated 90 degrees clockwise) and a red block
    in its stored top-left corner, which is displayed in the top-right corner."""
    w, h = stored_wh
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:12, :12] = (255, 0, 0)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95, exif=exif)


def _dataset(root: Path, stored_wh: tuple[int, int]) -> FolderDataset:
    w, h = stored_wh
    for stem in ("a_1", "a_2"):
        _phone_photo(root / "images" / f"{stem}.jpg", stored_wh)
        mask = np.zeros((w, h), np.uint8)  # drawn on the displayed photo: H = stored W, W = stored H
        mask[:12, -12:] = 1  # the red block, top-right as displayed
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    (root / "fss_lab.json").write_text(json.dumps({"name": "phone", "class_names": ["thing", "other"], "folds": {"0": [1]}}))
    return FolderDataset(root)


def test_read_rgb_and_image_size_apply_the_orientation(tmp_path):
    path = tmp_path / "p.jpg"
    _phone_photo(path, (40, 30))
    img = read_rgb(path)
    assert img.shape == (40, 30, 3) and image_size(path) == (40, 30)
    assert img[:10, -10:, 0].mean() > 200 and img[:10, :10, 0].mean() < 50  # red block top-right as displayed


def test_a_non_square_phone_photo_loads_with_its_mask(tmp_path):
    ds = _dataset(tmp_path, (40, 30))
    image, label = ds.load(0)  # used to fail with "Resize the mask ..." (the wrong fix)
    assert image.shape[:2] == label.shape == (40, 30) == ds.item_size(0)
    assert ds.load_label_checked(1).shape == (40, 30)
    assert image[label == 1, 0].mean() > 200, "the mask's object is not where the photo shows it"


def test_a_square_phone_photo_is_aligned_with_its_mask(tmp_path):
    ds = _dataset(tmp_path, (32, 32))
    image, label = ds.load(0)  # used to load un-rotated: silently misaligned with the mask
    assert image[label == 1, 0].mean() > 200 and image[label == 0, 0].mean() < 50
