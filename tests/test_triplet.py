"""The triplet loss on pixel embeddings (GFSS fine-tuning regulariser), checked against hand computations."""
import math

import pytest
import torch

from fss_lab.losses.triplet import pairwise_distances, pixel_triplet_loss, sample_pixels, triplet_loss

# a, b: class 0; c, d: class 1. cos(a,b)=0.6, cos(a,c)=0, cos(a,d)=-1, cos(b,c)=0.8, cos(b,d)=-0.6, cos(c,d)=0
EMB = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
LAB = torch.tensor([0, 0, 1, 1])


def test_batch_hard_cosine_matches_hand_computation():
    # cosine distances: ab .4, ac 1, ad 2, bc .2, bd 1.6, cd 1; margin .3
    # a: .4 - 1 + .3 -> 0 ; b: .4 - .2 + .3 = .5 ; c: 1 - .2 + .3 = 1.1 ; d: 1 - 1.6 + .3 -> 0 ; mean = .4
    loss = triplet_loss(EMB, LAB, margin=0.3, mining="batch_hard", distance="cosine")
    assert loss.item() == pytest.approx(0.4, abs=1e-6)


def test_euclidean_on_normalised_embeddings_matches_hand_computation():
    d = lambda cos: math.sqrt(2 - 2 * cos)  # noqa: E731
    ab, ac, ad, bc, bd, cd = d(0.6), d(0.0), d(-1.0), d(0.8), d(-0.6), d(0.0)
    m = 0.3
    want = (max(0, ab - min(ac, ad) + m) + max(0, ab - min(bc, bd) + m) + max(0, cd - min(ac, bc) + m)
            + max(0, cd - min(ad, bd) + m)) / 4
    # scaling an embedding must not change anything (normalised first)
    loss = triplet_loss(EMB * torch.tensor([[3.0], [0.5], [2.0], [7.0]]), LAB, margin=m, distance="euclidean")
    assert loss.item() == pytest.approx(want, abs=1e-5)


def test_random_mining_with_one_partner_each_equals_hand_and_is_seeded():
    # two classes of two: every anchor has exactly one positive; negatives differ, so fix them with 3 classes:
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    lab = torch.tensor([0, 0, 1])  # c has no positive -> not an anchor; a and b have one negative (c)
    loss = triplet_loss(emb, lab, margin=0.3, mining="random", generator=torch.Generator().manual_seed(0))
    # a: .4 - 1 + .3 -> 0 ; b: .4 - .2 + .3 = .5 -> mean .25
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    y = torch.arange(40) % 4
    l1 = triplet_loss(x, y, mining="random", generator=torch.Generator().manual_seed(7))
    l2 = triplet_loss(x, y, mining="random", generator=torch.Generator().manual_seed(7))
    hard = triplet_loss(x, y, mining="batch_hard")
    assert l1.item() == l2.item()
    assert l1.item() <= hard.item() + 1e-6  # hardest pairs give the largest hinge


def test_no_valid_anchor_gives_zero_with_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    loss = triplet_loss(x, torch.zeros(5, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None


def test_gradient_pulls_positive_and_pushes_negative():
    x = EMB.clone().requires_grad_(True)
    triplet_loss(x, LAB, margin=0.3).backward()
    assert x.grad.abs().sum() > 0
    x2 = (EMB - 0.1 * x.grad).detach()
    assert triplet_loss(x2, LAB, margin=0.3) < triplet_loss(EMB, LAB, margin=0.3)


def test_pairwise_distances_ranges():
    x = torch.randn(6, 4)
    for name, hi in (("cosine", 2.0), ("euclidean", 2.0)):
        d = pairwise_distances(x, name)
        assert d.shape == (6, 6) and bool((d >= -1e-6).all()) and bool((d <= hi + 1e-5).all())
    assert torch.allclose(pairwise_distances(x, "cosine").diagonal(), torch.zeros(6), atol=1e-6)


def test_sample_pixels_caps_classes_skips_ignore_and_is_seeded():
    feats = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)  # resized nearest to 4x4
    labels[:, :4] = 1
    labels[0, :2, :2] = 255
    e1, l1 = sample_pixels(feats, labels, max_per_class=5, generator=torch.Generator().manual_seed(3))
    e2, l2 = sample_pixels(feats, labels, max_per_class=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(e1, e2) and torch.equal(l1, l2)
    assert sorted(l1.tolist()) == [0] * 5 + [1] * 5
    assert 255 not in l1.tolist()
    e, lab = sample_pixels(feats, labels, max_per_class=1000)
    assert (lab == 1).sum() == 2 * 8 - 1  # 16 class-1 cells, one of them ignore
    # each sampled embedding is a real pixel: channel 1 = channel 0 + 16
    assert torch.allclose(e[:, 1] - e[:, 0], torch.full((len(e),), 16.0))


def test_pixel_triplet_loss_equals_triplet_loss_on_all_pixels():
    feats = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 3, 3), generator=torch.Generator().manual_seed(1))
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 4)
    want = triplet_loss(flat, labels.reshape(-1), margin=0.5)
    got = pixel_triplet_loss(feats, labels, margin=0.5, max_per_class=100)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)  # batch-hard does not depend on the order


def test_bad_inputs():
    with pytest.raises(ValueError, match="margin"):
        triplet_loss(EMB, LAB, margin=-1)
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(EMB, LAB, mining="semi")
    with pytest.raises(ValueError, match="distance"):
        triplet_loss(EMB, LAB, distance="l1")
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        triplet_loss(EMB, LAB[:3])
    with pytest.raises(ValueError, match="same B"):
        pixel_triplet_loss(torch.randn(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_per_class"):
        sample_pixels(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), max_per_class=0)
