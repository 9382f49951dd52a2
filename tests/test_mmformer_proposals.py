"""Training-free proposal sources (SLIC, Felzenszwalb, ground-truth segments) and the proposal IoU."""
import numpy as np
import pytest
import torch

from fss_lab.models.proposals import (
    felzenszwalb_proposals,
    ground_truth_proposals,
    proposal_iou,
    segments_to_masks,
    slic_proposals,
)


def _image():
    img = np.zeros((24, 32, 3), dtype=np.uint8)
    img[:, 16:] = (255, 0, 0)
    img[12:, :16] = (0, 0, 255)
    return img


@pytest.mark.parametrize("fn", [slic_proposals, felzenszwalb_proposals])
def test_superpixels_are_disjoint_binary_masks_covering_the_image(fn):
    masks = fn(_image()) if fn is felzenszwalb_proposals else fn(_image(), n_segments=6)
    assert masks.dim() == 3 and masks.shape[1:] == (24, 32) and masks.dtype == torch.float32
    assert torch.equal(masks.sum(0), torch.ones(24, 32))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    chw = fn(torch.from_numpy(_image()).permute(2, 0, 1).float() / 255)   # [3, H, W] float works too
    assert chw.shape[1:] == (24, 32)


def test_segments_to_masks_fixed_count():
    seg = np.array([[0, 0, 0, 1], [2, 2, 1, 1]])
    assert segments_to_masks(seg).shape == (3, 2, 4)
    two = segments_to_masks(seg, max_proposals=2)                      # keeps the two largest (ids 0 and 1)
    assert torch.equal(two.sum((1, 2)), torch.tensor([3.0, 3.0]))
    padded = segments_to_masks(seg, max_proposals=5)
    assert padded.shape == (5, 2, 4) and padded[3:].sum() == 0


def test_ground_truth_proposals_classes_components_and_ignore():
    label = torch.tensor([[1, 0, 1], [0, 0, 0], [255, 2, 2]])
    masks = ground_truth_proposals(label)
    assert masks.shape == (3, 3, 3)                                     # classes 0, 1, 2; 255 left out
    assert masks.sum(0)[2, 0] == 0
    comps = ground_truth_proposals(label, connected_components=True)
    assert comps.shape[0] == 4                                          # class 1 splits into two components


def test_proposal_iou_by_hand_ignore_as_background():
    props = torch.tensor([[[[1.0, 0.5]], [[0.0, 1.0]]]])
    labels = torch.tensor([[[1, 255]]])
    iou = proposal_iou(props, labels)
    assert torch.allclose(iou, torch.tensor([[1 / (1 + 1.5 - 1 + 1e-7), 0.0]]))
    with pytest.raises(ValueError, match="labels"):
        proposal_iou(props, labels[0])
