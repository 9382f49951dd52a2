"""The mask-drawing widget's headless twin: superpixel clicks, brush, undo, save (scikit-image's chelsea)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from fss_lab.viz.mask_drawing import MaskDrawer, mask_from_superpixels, superpixels


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return skimage.data.chelsea()[::2, ::2].copy()  # 150 x 226


def test_a_click_adds_exactly_the_superpixel_under_it(cat) -> None:
    seg = superpixels(cat)
    mask = mask_from_superpixels(cat, [(70, 100)])
    np.testing.assert_array_equal(mask, seg == seg[70, 100])
    both = mask_from_superpixels(cat, [(70, 100), (70, 100, "remove")])
    assert not both.any()


def test_fine_superpixels_are_smaller_and_felzenszwalb_works(cat) -> None:
    coarse, fine = superpixels(cat, granularity="coarse"), superpixels(cat, granularity="fine")
    assert fine.max() > 2 * coarse.max()
    fine_click = mask_from_superpixels(cat, [(70, 100, "add", "fine")])
    assert 0 < fine_click.sum() < mask_from_superpixels(cat, [(70, 100)]).sum() * 2
    assert superpixels(cat, "felzenszwalb").max() >= 1
    with pytest.raises(ValueError, match="granularity must be one of"):
        superpixels(cat, granularity="medium")


def test_brush_undo_clear_and_save(cat, tmp_path: Path) -> None:
    d = MaskDrawer(cat)
    d.brush(50, 50, radius=5)
    assert d.mask.sum() == sum(1 for y in range(45, 56) for x in range(45, 56) if (y - 50) ** 2 + (x - 50) ** 2 <= 25)
    d.brush(50, 50, radius=2, add=False)
    assert not d.mask[50, 50] and d.mask[50, 54]
    d.undo()
    assert d.mask[50, 50]
    d.clear()
    with pytest.raises(ValueError, match="mask is empty"):
        d.save(tmp_path / "m.png")
    d.undo()
    path = d.save(tmp_path / "m.png")
    saved = np.asarray(Image.open(path))
    assert saved.shape == cat.shape[:2] and set(np.unique(saved)) == {0, 255}
    assert d.overlay().shape == cat.shape


def test_bad_clicks_are_explained(cat) -> None:
    with pytest.raises(ValueError, match="outside the 150x226"):
        mask_from_superpixels(cat, [(400, 10)])
    with pytest.raises(ValueError, match="'add' or 'remove'"):
        mask_from_superpixels(cat, [(10, 10, "toggle")])


def test_the_widget_builds_headless(cat) -> None:
    pytest.importorskip("ipycanvas")
    from fss_lab.viz.mask_drawing import mask_drawing_widget

    ui, drawer = mask_drawing_widget(cat)
    assert drawer.mask.shape == cat.shape[:2] and ui.children
