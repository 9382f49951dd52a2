"""Pixel contrastive loss (capstone report Eq. 2, official sampling): hand computations, sampling rules, the hook."""
import math

import pytest
import torch
import torch.nn.functional as F

from fss_lab.losses.contrastive import (
    ContrastiveTerm,
    contrastive_from_samples,
    pixel_contrastive_loss,
    sample_anchors,
)


def hand_loss(feats, labels, t, tb, anchors=None):
    """Eq. 2 with the official per-pair denominators, written as plain loops over python floats."""
    n = len(labels)
    s = [[sum(a * b for a, b in zip(feats[i], feats[j])) / t for j in range(n)] for i in range(n)]
    per_anchor = []
    for a in range(n):
        if anchors is not None and not anchors[a]:
            continue
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [m for m in range(n) if labels[m] != labels[a]]
        if not pos:
            continue
        terms = [s[a][p] - math.log(math.exp(s[a][p]) + sum(math.exp(s[a][m]) for m in neg)) for p in pos]
        per_anchor.append(-(t / tb) * sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def test_contrastive_from_samples_by_hand():
    feats = [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8], [0.5, 0.5, 0.5]]
    labels = [1, 1, 1, 2, 3]  # class 3 has no positive: left out of the mean
    got = contrastive_from_samples(torch.tensor(feats), torch.tensor(labels), temperature=0.5, base_temperature=0.25)
    assert got.item() == pytest.approx(hand_loss(feats, labels, 0.5, 0.25), rel=1e-5)


def test_contrastive_anchor_mask_and_official_defaults():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    labels = [0, 0, 1, 1, 2, 2]
    mask = [False, False, True, True, True, True]  # background pixels: negatives only, not anchors
    got = contrastive_from_samples(f, torch.tensor(labels), anchor_mask=torch.tensor(mask))
    assert got.item() == pytest.approx(hand_loss(f.tolist(), labels, 0.1, 0.07, mask), rel=1e-5)
    full = contrastive_from_samples(f, torch.tensor(labels))
    assert full.item() == pytest.approx(hand_loss(f.tolist(), labels, 0.1, 0.07), rel=1e-5)
    assert full.item() != pytest.approx(got.item())


def test_contrastive_no_negatives_and_no_positives():
    f = torch.randn(3, 2, requires_grad=True)
    same = contrastive_from_samples(f, torch.tensor([1, 1, 1]))  # -log(exp(s)/exp(s)) = 0
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    same.backward()
    assert torch.isfinite(f.grad).all()
    lonely = contrastive_from_samples(f, torch.tensor([1, 2, 3]))  # no anchor has a positive
    assert lonely.item() == 0.0 and lonely.requires_grad


def test_contrastive_bad_shapes():
    with pytest.raises(ValueError, match="features must be"):
        contrastive_from_samples(torch.randn(3, 2), torch.tensor([1, 2]))


def sampling_batch():
    # one image, 3x4 grid, labels: 0 x4, 1 x5, 2 x3 (not > max_views=3 -> excluded)
    labels = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1], [1, 2, 2, 2]]])
    preds = labels.clone()
    preds[0, 1, 0] = preds[0, 1, 1] = 0  # two "hard" pixels of class 1 (predicted wrong)
    emb = torch.arange(12.0).view(1, 1, 3, 4)  # the embedding is the pixel index: we can see what was picked
    return emb, labels, preds


def test_sample_anchors_rules():
    emb, labels, preds = sampling_batch()
    feats, classes = sample_anchors(emb, labels, preds, max_samples=6, max_views=3,
                                    generator=torch.Generator().manual_seed(0))
    # classes 0 and 1 qualify (> 3 pixels); n_view = min(6 // 2, 3) = 3
    assert classes.tolist() == [0, 0, 0, 1, 1, 1]
    picked = feats.flatten().long().tolist()
    assert all(p in range(0, 4) for p in picked[:3]) and len(set(picked[:3])) == 3
    hard, easy = {4, 5}, {6, 7, 8}
    assert sum(p in hard for p in picked[3:]) == 1 and sum(p in easy for p in picked[3:]) == 2  # 3 // 2 hard
    assert 9 not in picked and 10 not in picked and 11 not in picked  # class 2 has exactly max_views pixels


def test_sample_anchors_fills_with_the_other_kind_and_skips_ignore():
    labels = torch.tensor([[[1, 1, 1, 1, 1, 255, 255, 255, 255, 255]]])
    preds = torch.tensor([[[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]])  # 1 easy, 4 hard
    emb = torch.arange(10.0).view(1, 1, 1, 10)
    feats, classes = sample_anchors(emb, labels, preds, max_samples=100, max_views=4)
    assert classes.tolist() == [1] * 4  # 255 never qualifies
    assert 0 in feats.flatten().long().tolist()  # the only easy pixel is kept, hard ones fill up (3)
    none, _ = sample_anchors(emb, labels, preds, max_views=5)  # 5 pixels is not more than max_views
    assert none.shape == (0, 1)
    with pytest.raises(ValueError, match="must be"):
        sample_anchors(emb, labels[:, :, :5], preds, max_views=2)


def test_pixel_contrastive_loss_constant_class_embeddings_by_hand():
    # every pixel of a class has the same embedding, so the loss does not depend on which pixels are sampled
    e = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5]]), dim=1)  # bg, class 1, class 2
    labels = torch.tensor([[[0, 0, 0], [1, 1, 1], [2, 2, 2]]])
    emb = e[labels].permute(0, 3, 1, 2)  # [1, 2, 3, 3]
    # 3 (image, class) pairs, max_samples 6 -> 2 views each
    kw = dict(max_samples=6, max_views=2, generator=torch.Generator().manual_seed(1))
    got = pixel_contrastive_loss(emb, labels, labels, temperature=0.5, base_temperature=0.5,
                                 background_anchors=False, **kw)
    sampled = [e[c].tolist() for c in (0, 0, 1, 1, 2, 2)]
    lab = [0, 0, 1, 1, 2, 2]
    expected = hand_loss(sampled, lab, 0.5, 0.5, [c != 0 for c in lab])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with_bg = pixel_contrastive_loss(emb, labels, labels, temperature=0.5, base_temperature=0.5,
                                     background_anchors=True, **kw)
    assert with_bg.item() == pytest.approx(hand_loss(sampled, lab, 0.5, 0.5), rel=1e-5)
    # the official PixelContrastLoss has background anchors on by default: so does ours (issue 8, seed 002 point 4)
    default = pixel_contrastive_loss(emb, labels, labels, temperature=0.5, base_temperature=0.5,
                                     **{**kw, "generator": torch.Generator().manual_seed(1)})
    assert default.item() == pytest.approx(with_bg.item(), rel=1e-6) and default.item() != pytest.approx(got.item())


def test_pixel_contrastive_loss_matches_its_two_steps_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(2, 4, 6, 6, generator=g), dim=1)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    preds = torch.randint(0, 3, (2, 6, 6), generator=g)
    kw = dict(max_samples=12, max_views=5)
    got = pixel_contrastive_loss(emb, labels, preds, generator=torch.Generator().manual_seed(7), **kw)
    f, c = sample_anchors(emb, labels, preds, generator=torch.Generator().manual_seed(7), **kw)
    assert got.item() == pytest.approx(contrastive_from_samples(f, c, anchor_mask=None).item(), rel=1e-6)
    again = pixel_contrastive_loss(emb, labels, preds, generator=torch.Generator().manual_seed(7), **kw)
    assert got.item() == again.item()


def test_contrastive_term_hook():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 4, 4, generator=g, requires_grad=True)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :8] = 1
    labels[:, 12:, 8:] = 2
    logits = torch.randn(2, 3, 16, 16, generator=g)
    term = ContrastiveTerm(weight=0.5, max_views=2, max_samples=24, seed=5)
    loss = term(feats, labels, logits)
    small = F.interpolate(labels[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    pred = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=True).argmax(1)
    ref = pixel_contrastive_loss(F.normalize(feats, dim=1), small, pred, max_views=2, max_samples=24,
                                 generator=torch.Generator().manual_seed(5))
    assert loss.item() == pytest.approx(0.5 * ref.item(), rel=1e-6)
    assert loss.item() > 0
    loss.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    # no class with more than max_views pixels: zero loss that still back-propagates
    zero = ContrastiveTerm(max_views=1000)(feats, labels, logits)
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="ContrastiveTerm expects"):
        term(feats[0], labels, logits)
