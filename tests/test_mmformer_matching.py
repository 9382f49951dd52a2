"""MM-Former Learnable Matching: MAP epsilon, no-epsilon proposal pooling, across-proposal MLP, blending, selectors."""
import math

import pytest
import torch

from fss_lab.models.mmformer import (
    MaskMatching,
    MatchingMLP,
    blend_proposals,
    heuristic_matching,
    oracle_matching,
    proposal_embeddings,
    proposal_similarity,
    support_prototype,
)

F2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # [1, 2, 2, 2]


def test_support_prototype_by_hand_with_eps():
    mask = torch.tensor([[[1, 1], [0, 255]]])                         # 255 -> background
    proto = support_prototype(F2, mask)
    expected = torch.tensor([[(1 + 2) / (2 + 1e-7), (0 + 1) / (2 + 1e-7)]])
    assert torch.allclose(proto, expected)
    empty = support_prototype(F2, torch.zeros(1, 2, 2, dtype=torch.long))
    assert torch.equal(empty, torch.zeros(1, 2))                       # eps: no NaN for an empty mask


def test_support_prototype_resizes_bilinear_align_corners():
    mask = torch.zeros(1, 3, 3)
    mask[0, 0, 0] = 1.0                                                # corners survive align_corners=True
    assert torch.allclose(support_prototype(F2, mask), torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_proposal_embeddings_by_hand_no_eps():
    props = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]]])   # [1, N=2, 2, 2]
    emb = proposal_embeddings(F2, props)
    assert emb.shape == (1, 2, 2)
    assert torch.equal(emb[0, 0], torch.tensor([1.0, 0.0]))            # exact: no epsilon in the denominator
    assert torch.equal(emb[0, 1], torch.tensor([1.5, 0.5]))
    empty = torch.zeros(1, 1, 2, 2)
    assert torch.isnan(proposal_embeddings(F2, empty)).all()           # official: no eps -> NaN when empty
    assert torch.isfinite(proposal_embeddings(F2, empty, eps=1e-7)).all()


def test_proposal_similarity_is_cosine_and_permutation_equivariant():
    emb = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]])
    proto = torch.tensor([[2.0, 0.0]])
    sim = proposal_similarity(emb, proto)
    assert torch.allclose(sim, torch.tensor([[1.0, 1 / math.sqrt(2), 0.0]]), atol=1e-6)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(proposal_similarity(emb[:, perm], proto), sim[:, perm])


def test_matching_mlp_mixes_across_proposals():
    torch.manual_seed(0)
    mlp = MatchingMLP(num_proposals=4)
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (4, 20, 4)   # N -> 5N -> N
    assert MatchingMLP(100).fc1.out_features == 500
    s = torch.randn(1, 4)
    jac = torch.autograd.functional.jacobian(lambda x: mlp(x), s)[0, :, 0, :]     # d w_i / d s_j
    off_diagonal = jac - torch.diag(torch.diag(jac))
    assert off_diagonal.abs().sum() > 0                                # each weight depends on other proposals
    # permuting proposals (input order and the MLP's proposal axes together) permutes the output
    perm = torch.tensor([3, 1, 0, 2])
    permuted = MatchingMLP(4)
    with torch.no_grad():
        permuted.fc1.weight.copy_(mlp.fc1.weight[:, perm])
        permuted.fc1.bias.copy_(mlp.fc1.bias)
        permuted.fc2.weight.copy_(mlp.fc2.weight[perm])
        permuted.fc2.bias.copy_(mlp.fc2.bias[perm])
    assert torch.allclose(permuted(s[:, perm]), mlp(s)[:, perm], atol=1e-6)
    # ... while a fixed MLP is not permutation-equivariant (it is not a per-proposal MLP)
    assert not torch.allclose(mlp(s[:, perm]), mlp(s)[:, perm], atol=1e-4)
    with pytest.raises(ValueError, match="similarity"):
        mlp(torch.randn(1, 5))


def test_blend_proposals_by_hand():
    props = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])               # [1, 2, 1, 2]
    out = blend_proposals(torch.tensor([[0.75, 0.5]]), props)
    assert torch.allclose(out, torch.tensor([[[[0.25, 0.5]], [[0.75, 0.5]]]]))   # [bg = 1 - fg, fg]
    big = blend_proposals(torch.tensor([[1.0, 0.0]]), props, size=(1, 4))
    assert torch.allclose(big[0, 1, 0], torch.tensor([1.0, 0.75, 0.25, 0.0]))   # align_corners=False


def test_heuristic_and_oracle_select_one_proposal():
    props = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]])
    h = heuristic_matching(torch.tensor([[0.1, 0.9, 0.3]]), props)
    assert torch.equal(h[0, 1], props[0, 1])
    labels = torch.tensor([[[1, 255]]])                                # ignore counted as background
    o = oracle_matching(props, labels)
    assert torch.equal(o[0, 1], props[0, 0])


def test_mask_matching_k_shot_average_and_shapes():
    torch.manual_seed(0)
    mm = MaskMatching(in_channels=(6, 4), num_proposals=3, hidden_dim=8, nhead=2, dim_feedforward=16).eval()
    q = [torch.randn(1, 6, 4, 4), torch.randn(1, 4, 8, 8)]
    s = [torch.randn(1, 6, 4, 4), torch.randn(1, 4, 8, 8)]
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    masks[..., :8, :] = 1
    props = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        out1, sim1 = mm(q, [s], masks, props, size=(16, 16))
        out2, sim2 = mm(q, [s, s], masks.repeat(1, 2, 1, 1), props, size=(16, 16))
    assert out1.shape == (1, 2, 16, 16) and sim1.shape == (1, 3)
    assert torch.allclose(out1, out2, atol=1e-5) and torch.allclose(sim1, sim2, atol=1e-5)
    assert torch.allclose(out1[:, 0] + out1[:, 1], torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="support_masks"):
        mm(q, [s, s], masks, props)


def test_heuristic_mask_matching_training_free_on_a_separable_toy():
    from fss_lab.models.mmformer import heuristic_mask_matching

    # foreground pixels point along e0, background along e1, in query and support alike
    def feats(fg):
        f = torch.zeros(1, 2, 4, 4)
        f[0, 0][fg] = 1.0
        f[0, 1][~fg] = 1.0
        return f

    q_fg = torch.zeros(4, 4, dtype=torch.bool)
    q_fg[:, :2] = True
    s_fg = torch.zeros(4, 4, dtype=torch.bool)
    s_fg[2:] = True
    props = torch.stack([(~q_fg).float(), q_fg.float(), torch.zeros(4, 4)])[None]   # bg, fg, an empty pad
    out, sim = heuristic_mask_matching([feats(q_fg)], [[feats(s_fg)]], s_fg.long()[None, None], props)
    assert sim.argmax().item() == 1
    assert torch.equal(out[0, 1], q_fg.float())
    out2, _ = heuristic_mask_matching([feats(q_fg)], [[feats(s_fg)]], s_fg.long()[None, None], props,
                                      self_align=False)
    assert torch.equal(out2[0, 1], q_fg.float())
