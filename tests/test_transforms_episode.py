"""Transforms (resize/pad/normalise), binary episode labels, the Episode type and its collate."""
import numpy as np
import pytest
import torch

from fss_lab.data import DatasetError, Episode, EpisodeDataset, PairTransform, TransformedItems, collate_episodes
from fss_lab.data import binary_episode_label, sample_fss_episodes
from tests.conftest import ToyDataset


def test_resize_shapes_dtypes_and_normalisation():
    img = np.full((30, 40, 3), 255, np.uint8)
    lab = np.zeros((30, 40), np.uint8)
    t = PairTransform((15, 20), "resize", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, y = t(img, lab)
    assert x.shape == (3, 15, 20) and x.dtype == torch.float32
    assert y.shape == (15, 20) and y.dtype == torch.int64
    assert torch.allclose(x, torch.ones_like(x))  # white -> (1 - 0.5) / 0.5


def test_long_side_pad_pads_label_with_255_and_image_with_black():
    img = np.full((20, 40, 3), 200, np.uint8)
    lab = np.ones((20, 40), np.uint8)
    t = PairTransform((32, 32), "long_side_pad")
    x, y = t(img, lab)
    assert t.resized_size(20, 40) == (16, 32)
    assert (y[:16] == 1).all() and (y[16:] == 255).all()
    raw = x * torch.tensor(t.std).view(3, 1, 1) + torch.tensor(t.mean).view(3, 1, 1)
    assert torch.allclose(raw[:, 16:], torch.zeros(3, 16, 32), atol=1e-6)
    assert torch.allclose(raw[:, :16], torch.full((3, 16, 32), 200 / 255), atol=1e-2)


def test_nearest_label_resize_keeps_only_existing_values():
    lab = np.random.default_rng(0).choice([0, 3, 7, 255], size=(37, 41)).astype(np.uint8)
    _, y = PairTransform((16, 16))(np.zeros((37, 41, 3), np.uint8), lab)
    assert set(torch.unique(y).tolist()) <= {0, 3, 7, 255}


@pytest.mark.parametrize("kwargs", [{"size": (4, 4)}, {"mode": "crop"}])
def test_bad_transform_arguments(kwargs):
    with pytest.raises(ValueError):
        PairTransform(**kwargs)


def test_binary_episode_label():
    lab = torch.tensor([[0, 2, 3], [2, 255, 1]])
    assert binary_episode_label(lab, 2).tolist() == [[0, 1, 0], [1, 255, 0]]


def test_episode_validation_names_the_tensor():
    good = dict(
        support_images=torch.zeros(2, 3, 8, 8),
        support_masks=torch.zeros(2, 8, 8, dtype=torch.long),
        query_images=torch.zeros(1, 3, 8, 8),
        query_masks=torch.zeros(1, 8, 8, dtype=torch.long),
    )
    ep = Episode(**good)
    assert ep.shots == 2 and not ep.is_batched
    with pytest.raises(ValueError, match="support_masks.*dtype"):
        Episode(**{**good, "support_masks": torch.zeros(2, 8, 8)})
    with pytest.raises(ValueError, match="query_masks"):
        Episode(**{**good, "query_masks": torch.zeros(2, 8, 8, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"support_images has shape \(3, 8, 8\)"):
        Episode(**{**good, "support_images": torch.zeros(3, 8, 8)})


def test_episode_dataset_collate_and_to(toy):
    eps = sample_fss_episodes(toy, fold=0, shots=2, n_episodes=4, seed=0)
    items = TransformedItems(toy, PairTransform((16, 16)))
    ds = EpisodeDataset(eps, items)
    ep = ds[0]
    assert ep.support_images.shape == (2, 3, 16, 16) and ep.query_masks.shape == (1, 16, 16)
    assert set(torch.unique(ep.support_masks).tolist()) <= {0, 1, 255}
    assert (ep.support_masks == 1).flatten(1).any(1).all()
    batch = collate_episodes([ds[i] for i in range(4)])
    assert batch.is_batched and batch.support_images.shape == (4, 2, 3, 16, 16)
    assert batch.to("cpu").query_masks.shape == (4, 1, 16, 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_episodes)
    assert next(iter(loader)).support_masks.shape == (2, 2, 16, 16)


def test_collate_refuses_mixed_shapes(toy):
    items = TransformedItems(toy, PairTransform((16, 16)))
    a = EpisodeDataset(sample_fss_episodes(toy, 0, 1, 1), items)[0]
    b = EpisodeDataset(sample_fss_episodes(toy, 0, 2, 1), items)[0]
    with pytest.raises(ValueError, match="shapes differ"):
        collate_episodes([a, b])


def test_support_without_foreground_after_resizing_is_a_clear_error():
    # class 1 is a 1-pixel dot: nearest-neighbour resizing to 8x8 loses it
    ds = ToyDataset([[(1, 5, 5, 6, 6)] for _ in range(3)], folds={0: (1,)})
    eps = sample_fss_episodes(ds, fold=0, shots=1, n_episodes=1)
    items = TransformedItems(ds, PairTransform((8, 8)))
    with pytest.raises(DatasetError, match=r"has no pixel of class c1 \(1\) after resizing.*larger image size"):
        EpisodeDataset(eps, items)[0]


def test_label_view_checks_sizes_from_the_header_without_decoding(tmp_path):
    from PIL import Image

    from fss_lab.data.folder import FolderDataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.ones((30, 40), np.uint8)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "images" / "b.jpg")
    Image.fromarray(np.ones((20, 20), np.uint8)).save(tmp_path / "masks" / "b.png")
    ds = FolderDataset(tmp_path, split="val", config={"name": "tiny", "class_names": ["thing", "other"], "folds": {"0": [1]}})
    assert ds.item_size(0) == (30, 40)
    items = TransformedItems(ds, PairTransform((16, 16)))
    assert items.label(0).dtype == torch.uint8 and items.label(0).shape == (16, 16)
    with pytest.raises(DatasetError, match=r"b\.jpg is 40x30.*b\.png is 20x20"):
        items.label(1)
