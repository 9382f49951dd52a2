"""MM-Former's Potential Objects Segmenter: Hungarian matching on a toy cost, mask costs/losses by hand, shapes."""
import math

import pytest
import torch

from fss_lab.models.mmformer.potential_objects_segmenter import (
    PotentialObjectsSegmenter,
    dice_cost,
    dice_mask_loss,
    hungarian_matching,
    match_proposals,
    pos_set_loss,
    sigmoid_bce_cost,
    sigmoid_bce_mask_loss,
)


def test_hungarian_matching_toy_cost():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = hungarian_matching(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]   # total 1 + 2 + 2 = 5 (greedy gives 6)
    rows, cols = hungarian_matching(cost[:, :2])                        # more predictions than targets
    assert len(rows) == 2 and cost[rows, cols].sum() == 3.0
    with pytest.raises(ValueError, match="NaN"):
        hungarian_matching(torch.tensor([[float("nan")]]))


def test_dice_and_bce_costs_by_hand():
    logits = torch.tensor([[0.0, 0.0]])                                 # p = 0.5 everywhere
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    d = dice_cost(logits, targets)
    assert torch.allclose(d, torch.tensor([[1 - (2 * 0.5 + 1) / (1 + 1 + 1), 1 - (2 * 1.0 + 1) / (1 + 2 + 1)]]))
    b = sigmoid_bce_cost(logits, targets)
    assert torch.allclose(b, torch.full((1, 2), math.log(2)))
    k = torch.tensor([[0.0, 0.0]])
    assert torch.allclose(dice_mask_loss(k, targets[:1], 2.0), d[0, 0] / 2)
    assert torch.allclose(sigmoid_bce_mask_loss(k, targets[:1], 2.0), torch.tensor(math.log(2) / 2))


def test_match_proposals_finds_the_matching_masks():
    tgt = torch.zeros(2, 4, 4)
    tgt[0, :2] = 1
    tgt[1, 2:] = 1
    pred = torch.full((3, 4, 4), -8.0)
    pred[2, 2:] = 8.0                                                   # prediction 2 = target 1
    pred[0, :2] = 8.0                                                   # prediction 0 = target 0
    pi, ti = match_proposals(pred, tgt)
    assert dict(zip(pi.tolist(), ti.tolist())) == {0: 0, 2: 1}


def test_pos_forward_shapes_attention_and_loss_backward():
    torch.manual_seed(0)
    pos = PotentialObjectsSegmenter(in_channels=(12, 8, 6), mask_in_channels=4, num_queries=5, hidden_dim=16,
                                    nhead=2, dim_feedforward=32, dec_layers=3, mask_dim=16, keep_attention=True)
    feats = [torch.randn(2, 12, 2, 2), torch.randn(2, 8, 4, 4), torch.randn(2, 6, 8, 8)]
    out = pos(feats, torch.randn(2, 4, 16, 16))
    assert out["pred_masks"].shape == (2, 5, 16, 16)
    assert len(out["aux_outputs"]) == 3                                 # initial + 2 intermediate predictions
    assert [a.shape for a in pos.last_attention] == [(2, 2, 5, 4), (2, 2, 5, 16), (2, 2, 5, 64)]
    for a in pos.last_attention:
        assert torch.allclose(a.sum(-1), torch.ones_like(a[..., 0]), atol=1e-5)
    targets = [torch.zeros(2, 32, 32), torch.zeros(1, 32, 32)]
    targets[0][0, :16] = 1
    targets[0][1, 16:] = 1
    targets[1][0, :, :8] = 1
    losses = pos_set_loss(out, targets)
    assert {"loss_mask", "loss_dice", "loss_mask_0", "loss_dice_2", "total"} <= set(losses)
    losses["total"].backward()
    assert pos.query_feat.weight.grad is not None and torch.isfinite(pos.query_feat.weight.grad).all()
    with pytest.raises(ValueError, match="target sets"):
        pos_set_loss(out, targets[:1])
