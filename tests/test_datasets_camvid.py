"""The built-in CamVid config on the real data in ../shared/data/camvid (skipped where it is absent)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fss_lab.data.base import read_label
from fss_lab.data.folder import camvid

CAMVID = Path(os.environ.get("FSS_LAB_CAMVID", Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"))

pytestmark = [
    pytest.mark.camvid,
    pytest.mark.skipif(
        not (CAMVID / "train.txt").is_file(),
        reason=f"CamVid not found at {CAMVID} (set FSS_LAB_CAMVID to its folder, or provide ../shared/data/camvid)",
    ),
]

NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian", "bicyclist")


@pytest.fixture(scope="module")
def train():
    return camvid(CAMVID, "train")


@pytest.fixture(scope="module")
def val():
    return camvid(CAMVID, "val")


def test_sizes_names_and_folds(train, val) -> None:
    assert (len(train), len(val)) == (367, 101)
    assert train.name == "camvid" and train.class_names == NAMES and not train.has_background
    assert val.novel_classes(0) == (7, 8, 9, 10, 11)
    fold0 = {val.class_name(c) for c in val.novel_classes(0)}
    assert fold0 == {"car", "pedestrian", "bicyclist", "signsymbol", "fence"}
    assert {val.class_name(c) for c in val.novel_classes(1)} == {"sky", "building", "pole", "pavement", "tree"}
    assert all(4 in val.base_classes(f) for f in (0, 1))  # road is always base
    assert val.num_folds == 2


def test_groups_are_videos(train, val) -> None:
    assert Counter(train.group(i) for i in range(len(train))) == {"0001TP": 62, "0006R0": 101, "0016E5": 204}
    assert {val.group(i) for i in range(len(val))} == {"0016E5"}
    assert val.image_id(0).startswith("0016E5_")


@pytest.mark.parametrize("index", [0, 50])
def test_value_mapping(val, index: int) -> None:
    image, label = val.load(index)
    assert image.shape == (360, 480, 3) and label.shape == (360, 480) and label.dtype == np.uint8
    raw = read_label(val._paths(index)[1])
    assert 0 not in np.unique(label)  # CamVid has no background class
    np.testing.assert_array_equal(label == 255, raw == 11)
    keep = raw != 11
    np.testing.assert_array_equal(label[keep], raw[keep] + 1)
