"""Issue 9, finding 7: JSON file modes, FSS-1000 with more classes than a uint8 id holds, cross_group without
groups."""
from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.data.base import DatasetError, save_json_atomic
from fss_lab.data.episodic import episode_masks
from fss_lab.data.fss1000 import FSS1000
from fss_lab.data.gfss import gfss_runs
from tests.conftest import ToyDataset
from tests.test_gfss_protocol import LAYOUT


def test_save_json_atomic_writes_an_ordinary_readable_file(tmp_path):
    path = save_json_atomic({"a": 1}, tmp_path / "sub" / "episodes.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp's 0600 hid episode lists from other users
    assert path.read_text() == '{"a": 1}' and sorted(p.name for p in path.parent.iterdir()) == ["episodes.json"]


def _fss(root: Path, n_classes: int) -> Path:
    fg = np.zeros((8, 8), np.uint8)
    fg[2:6, 2:6] = 255
    for c in range(n_classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        for n in (1, 2):
            Image.fromarray(np.full((8, 8, 3), c % 256, np.uint8)).save(folder / f"{n}.jpg")
            Image.fromarray(fg).save(folder / f"{n}.png")
    (root / "train.txt").write_text("\n".join(f"class{c:03d}" for c in range(n_classes)))
    return root


def test_fss1000_train_split_with_520_classes_loads_and_makes_episodes(tmp_path):
    ds = FSS1000(_fss(tmp_path, 520), "train", split_files={"train": tmp_path / "train.txt"})  # was: DatasetError
    assert ds.num_classes == 520 and len(ds) == 1040
    assert ds.class_pixel_counts()[2 * 299] == {300: 16}  # class 300: its id needs more than a uint8
    eps = sample_fss_episodes(ds, fold=0, shots=1, n_episodes=6, seed=0, classes=[255, 256, 300, 520])
    items = TransformedItems(ds, PairTransform((8, 8)))
    for e in eps:
        assert {ds.class_of(i) for i in e.query + e.support} == {e.class_id}
        for role, idx in (("query", e.query), ("support", e.support)):
            masks = episode_masks(items, idx, e.class_id, role)
            assert int((masks == 1).sum()) == 16 * len(idx), f"class {e.class_id}: foreground lost"
    other = episode_masks(items, (0,), 300, "query")  # an image of class 1 holds no pixel of class 300
    assert int((other == 1).sum()) == 0


def test_cross_group_without_groups_names_the_missing_groups_not_the_image_count():
    ds = ToyDataset(LAYOUT)  # group() is None for every image, like a folder dataset without group_pattern
    with pytest.raises(DatasetError, match=r"cross_group protocol needs the group .* 16 of 16 query images .*"
                                           r"toy_val_000.*group_pattern"):
        sample_fss_episodes(ds, fold=0, shots=1, n_episodes=4, cross_group=True)
    support = ToyDataset(LAYOUT, split="train")
    with pytest.raises(DatasetError, match="needs the group .*group_pattern"):
        gfss_runs(ds, 0, 1, n_runs=1, support_dataset=support, cross_group=True)
