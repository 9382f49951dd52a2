"""Shared fixtures: a tiny in-memory dataset, and where the shared CamVid copy lives."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fss_lab.data.base import SegmentationDataset

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("FSS_LAB_CAMVID", REPO.parent / "shared" / "data" / "camvid"))


def camvid_root() -> Path:
    """The shared CamVid copy; skips the calling test with a clear reason when it is absent."""
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (needs ../shared/data/camvid or FSS_LAB_CAMVID)")
    return CAMVID


class ToyDataset(SegmentationDataset):
    """In-memory dataset: item i is a 32x32 image with class rectangles given by ``layout[i]``.

    ``layout[i]`` is a list of ``(class id, y0, x0, y1, x1)``; background is 0. ``groups`` optionally names a group
    per item.
    """

    def __init__(self, layout, num_classes=4, folds=None, name="toy", split="val", groups=None, size=32):
        self.layout = layout
        self.class_names = tuple(f"c{k}" for k in range(1, num_classes + 1))
        self.folds = folds or {0: (1, 2), 1: (3, 4)}
        self.name, self.split, self.size = name, split, size
        self._groups = groups
        self.default_min_area = 1

    def __len__(self):
        return len(self.layout)

    def image_id(self, index):
        return f"{self.name}_{self.split}_{index:03d}"

    def group(self, index):
        return None if self._groups is None else self._groups[index]

    def load_label(self, index):
        self._check_index(index)
        y = np.zeros((self.size, self.size), np.uint8)
        for c, y0, x0, y1, x1 in self.layout[index]:
            y[y0:y1, x0:x1] = c
        return y

    def load_image(self, index):
        rng = np.random.default_rng(index)
        lab = self.load_label(index)
        img = rng.integers(0, 40, (self.size, self.size, 3)).astype(np.uint8)
        img[..., 0] += (lab * 50).astype(np.uint8)
        return img


@pytest.fixture
def toy():
    """10 items; classes 1 and 2 (fold 0 novel) appear in most, 3 and 4 in some."""
    layout = []
    for i in range(10):
        items = [(1 + i % 2, 2, 2, 14, 14), (3 + (i % 3 == 0), 18, 18, 30, 30)]
        if i % 4 == 0:
            items.append((2 - i % 2, 2, 18, 14, 30))
        layout.append(items)
    return ToyDataset(layout)


_SESSION_START = [0.0]


def pytest_sessionstart(session):
    import time

    _SESSION_START[0] = time.time()


def pytest_terminal_summary(terminalreporter):
    """Print what the notebooks measured, so CI logs show the numbers (e.g. CamVid mIoU per fold and shot)."""
    from tests.notebook_runs import write_summary

    write_summary(terminalreporter, since=_SESSION_START[0])


@pytest.fixture(autouse=True)
def _fresh_metric_warnings():
    """The metrics say each undefined-class warning once per process; every test starts with a clean slate."""
    import fss_lab.metrics

    fss_lab.metrics._WARNED.clear()
    yield
