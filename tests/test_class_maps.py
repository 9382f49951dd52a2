"""GFSS / base-training label spaces."""
import pytest
import torch

from fss_lab.data.class_maps import GFSSClassMap
from tests.conftest import ToyDataset


def test_gfss_and_base_labels_by_hand():
    ds = ToyDataset([[]], num_classes=5, folds={0: (4, 2)})
    cmap = GFSSClassMap.from_fold(ds, 0)
    assert cmap.base == (1, 3, 5) and cmap.novel == (2, 4)
    assert cmap.base_ids == (1, 2, 3) and cmap.novel_ids == (4, 5) and cmap.num_classes == 6
    label = torch.tensor([[0, 1, 2, 3], [4, 5, 255, 1]])
    assert cmap.gfss_label(label).tolist() == [[0, 1, 4, 2], [5, 3, 255, 1]]
    assert cmap.base_label(label, "ignore").tolist() == [[0, 1, 255, 2], [255, 3, 255, 1]]
    assert cmap.base_label(label, "background").tolist() == [[0, 1, 0, 2], [0, 3, 255, 1]]
    assert cmap.class_names(ds) == ["background", "c1", "c3", "c5", "c2", "c4"]
    assert cmap.has_novel({3: 10, 4: 1}) and not cmap.has_novel({1: 10, 4: 0})
    with pytest.raises(ValueError, match="drop"):
        cmap.base_label(label, "drop")
