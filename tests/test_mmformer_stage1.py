"""MM-Former stage 1 (POS training on base-class segments, resumable checkpoints, POS proposals as a cache level)
and the stage-2 ablation switches (matching MLP variants, cross-alignment off / non-parametric, heuristic matching)."""
import math

import pytest
import torch

from fss_lab.models.mmformer import FeatureAlignmentBlock, MaskMatching, MatchingMLP
from fss_lab.models.mmformer.pos_training import (
    POS_LEVELS,
    POS_MASK_LEVEL,
    POSConfig,
    POSProposalExtractor,
    build_pos,
    pos_targets,
    train_pos,
)


def test_pos_targets_are_base_class_segments_only():
    label = torch.tensor([[0, 1, 1, 255], [2, 2, 3, 3]])
    t = pos_targets(label, base_classes=(1, 3))
    assert t.shape == (2, 2, 4)
    assert t[0].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]] and t[1].tolist() == [[0, 0, 0, 0], [0, 0, 1, 1]]
    assert pos_targets(label, base_classes=(5,)).shape == (0, 2, 4)        # novel class 2 and bg: no target
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        pos_targets(label[None], (1,))


class _Cache:
    def __init__(self, x):
        self.x = x

    def get(self, indices, device=None):
        return self.x[list(indices)]


class _Items:
    """Four 16 x 16 training images: class 1 (base) in the left half, class 2 (novel) in the right half."""

    class dataset:
        @staticmethod
        def base_classes(fold):
            return (1,)

    def __len__(self):
        return 4

    def label(self, i):
        lab = torch.zeros(16, 16, dtype=torch.long)
        lab[:, : 4 + i] = 1
        lab[:, 12:] = 2
        return lab


def _caches():
    g = torch.Generator().manual_seed(0)
    return {"s32": _Cache(torch.randn(4, 6, 1, 1, generator=g)), "s16": _Cache(torch.randn(4, 5, 1, 1, generator=g)),
            "s8": _Cache(torch.randn(4, 4, 2, 2, generator=g)), "s4": _Cache(torch.randn(4, 3, 4, 4, generator=g))}


def _pos(caches):
    torch.manual_seed(0)
    return build_pos(caches, num_queries=3, hidden_dim=8, nhead=2, dim_feedforward=16, dec_layers=3, mask_dim=8)


def test_train_pos_lowers_the_loss_and_resumes_exactly(tmp_path):
    caches = _caches()
    cfg = POSConfig(iterations=6, batch_size=2, lr=1e-2, device="cpu")
    straight = _pos(caches)
    h = train_pos(straight, cfg, items=_Items(), caches=caches, fold=0, progress=False)
    steps = h.steps_frame()
    assert len(steps) == 6 and steps["loss"].iloc[-1] < steps["loss"].iloc[0]
    # killed after 3 steps (checkpoint), then resumed: the same weights as the straight run
    path = tmp_path / "pos.pt"
    first = _pos(caches)
    train_pos(first, POSConfig(**{**cfg.__dict__, "checkpoint_every": 3}), items=_Items(), caches=caches, fold=0,
              progress=False, checkpoint_path=path)
    resumed = _pos(caches)
    again = train_pos(resumed, cfg, items=_Items(), caches=caches, fold=0, progress=False, checkpoint_path=path)
    assert len(again.steps) == 6
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_pos_proposal_extractor_gives_sigmoid_masks():
    from fss_lab.models.backbones import create_backbone
    backbone = create_backbone("efficientnet_lite0", weights=None).eval()
    feats = backbone(torch.zeros(1, 3, 64, 64), levels=(*POS_LEVELS, POS_MASK_LEVEL))
    caches = {lv: _Cache(f) for lv, f in feats.items()}
    pos = build_pos(caches, num_queries=5, hidden_dim=8, nhead=2, dim_feedforward=16, dec_layers=3, mask_dim=8)
    out = POSProposalExtractor(pos, backbone)(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_per_proposal_matching_is_permutation_equivariant_and_sees_the_others():
    torch.manual_seed(0)
    mlp = MatchingMLP(4, mixing="per_proposal")
    s = torch.randn(2, 4)
    perm = torch.tensor([3, 1, 0, 2])
    assert torch.allclose(mlp(s[:, perm]), mlp(s)[:, perm], atol=1e-6)
    # by hand: weight_n = fc2(relu(fc1([s_n, s_n - max s, minmax(s)_n])))
    n = 1
    x = torch.stack([s[0, n], s[0, n] - s[0].max(), (s[0, n] - s[0].min()) / (s[0].max() - s[0].min() + 1e-8)])
    assert torch.allclose(mlp(s)[0, n], mlp.fc2(torch.relu(mlp.fc1(x)))[0], atol=1e-6)
    bumped = s.clone()
    bumped[0, 0] += 5.0                                                  # raising another proposal's similarity
    assert not torch.allclose(mlp(bumped)[0, 1], mlp(s)[0, 1])          # changes weight 1 (through the max)
    with pytest.raises(ValueError, match="mixing"):
        MatchingMLP(4, mixing="softmax")


def test_alignment_without_cross_is_the_projection_and_nonparametric_by_hand():
    torch.manual_seed(0)
    q, s = torch.rand(1, 3, 2, 2), torch.rand(1, 3, 2, 2)
    mask = torch.ones(1, 4, 4, dtype=torch.long)
    none = FeatureAlignmentBlock((3,), hidden_dim=4, cross="none", self_align=False)
    aq, as_ = none([q], [s], mask)
    assert torch.allclose(aq[0], none.projections[0](q)) and torch.allclose(as_[0], none.projections[0](s))
    nonp = FeatureAlignmentBlock((3,), cross="nonparametric", self_align=False, num_layers=1, min_size=2)
    assert sum(p.numel() for p in nonp.parameters()) == 0
    aq, as_ = nonp([q], [s], mask)
    tq, ts = q.flatten(2)[0].T, s.flatten(2)[0].T                      # [4 positions, 3 channels]
    want_q = tq + torch.softmax(tq @ ts.T / math.sqrt(3), dim=-1) @ ts
    want_s = ts + torch.softmax(ts @ tq.T / math.sqrt(3), dim=-1) @ tq   # attends to the ORIGINAL query
    assert torch.allclose(aq[0][0].flatten(1).T, want_q, atol=1e-6)
    assert torch.allclose(as_[0][0].flatten(1).T, want_s, atol=1e-6)
    with pytest.raises(ValueError, match="cross"):
        FeatureAlignmentBlock((3,), cross="frozen")


def test_heuristic_mask_matching_module_picks_the_best_cosine():
    torch.manual_seed(0)
    mm = MaskMatching((3,), num_proposals=2, matching="heuristic", cross="none", self_align=False,
                      hidden_dim=4).eval()
    q = torch.rand(1, 3, 4, 4)
    props = torch.zeros(1, 2, 4, 4)
    props[0, 0, :, :2] = 1
    props[0, 1, :, 2:] = 1
    out, sim = mm([q], [[q.clone()]], (props[:, 1] > 0.5).long()[:, None], props)
    best = int(sim.argmax())
    assert best == 1 and torch.equal(out[0, 1], props[0, best])        # support = the query's right half


def test_joint_training_updates_the_pos_and_the_matching_together():
    from fss_lab.engine.episodic import EpisodicConfig, train_episodic
    from fss_lab.experiments.fss import FSSConfig, FSSExperiment
    from fss_lab.methods.mmformer import JointMMFormer
    from fss_lab.models.backbones import create_backbone
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", weights=None).eval()
    exp = FSSExperiment(FSSConfig(dataset="synthetic", dataset_kwargs={"image_size": 64, "n_images": 16},
                                  image_size=(64, 64), n_episodes=2, min_area=16, device="cpu"), backbone=backbone)
    _, caches = exp.train_split((*POS_LEVELS, POS_MASK_LEVEL))
    pos = build_pos(caches, num_queries=4, hidden_dim=8, nhead=2, dim_feedforward=16, dec_layers=3, mask_dim=8)
    before = {k: v.clone() for k, v in pos.state_dict().items()}
    learner = JointMMFormer(pos, levels=("s32", "s16"), hidden_dim=8, nhead=2, dim_feedforward=16, num_layers=1,
                            min_size=2)
    assert set(learner.feature_levels) == {"s32", "s16", "s8", "s4"}
    items, train_caches = exp.train_split(learner.feature_levels)
    h = train_episodic(learner, EpisodicConfig(iterations=3, batch_episodes=2, optimizer="adamw", lr=1e-2,
                                               min_area=16, device="cpu"),
                       fold=0, train_items=items, train_features=train_caches, progress=False)
    steps = h.steps_frame()
    assert {"loss_fewshot_loss", "loss_co_loss", "loss_pos_loss"} <= set(steps) and steps["loss"].notna().all()
    assert any(not torch.equal(before[k], v) for k, v in pos.state_dict().items())   # the POS was trained too
    res = exp.evaluate(learner, 1, progress=False)
    assert 0 <= res.miou <= 1 and learner.last_weights.shape == (1, 4)


def test_cross_attention_layer_by_hand_identity_projections():
    """Eq. 2-3 with identity q/k/v/out projections, one head: norm(t + softmax((t + qp)(m + p)^T / sqrt d) m)."""
    from fss_lab.models.mmformer.cross_alignment import CrossAttentionLayer
    layer = CrossAttentionLayer(d_model=2, nhead=1)
    with torch.no_grad():
        layer.multihead_attn.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        layer.multihead_attn.in_proj_bias.zero_()
        layer.multihead_attn.out_proj.weight.copy_(torch.eye(2))
        layer.multihead_attn.out_proj.bias.zero_()
    t = torch.tensor([[[1.0, 0.0]]])
    m = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    qp, p = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    out, attn = layer(t, m, pos=p, query_pos=qp, need_weights=True)
    logits = torch.tensor([(1 * 2 + 1 * 0) / math.sqrt(2), (1 * 0 + 1 * 2) / math.sqrt(2)])   # (t+qp).(m+p)
    a = torch.softmax(logits, 0)
    assert torch.allclose(attn[0, 0, 0], a, atol=1e-6)
    mixed = t[0, 0] + a[0] * m[0, 0] + a[1] * m[0, 1]             # values are the memory WITHOUT its encoding
    want = (mixed - mixed.mean()) / torch.sqrt(mixed.var(unbiased=False) + 1e-5)   # post-norm LayerNorm
    assert torch.allclose(out[0, 0], want, atol=1e-5)


def test_second_sigmoid_dice_prefers_a_constant_negative_blend_to_zero():
    """Why stage 2 can collapse to background: under MM-Former's Dice (second sigmoid, ignore -> bg), a blend that
    is the same negative constant everywhere scores better than fg = 0 when the object is small, so an MLP that
    cannot yet tell the proposals apart is pulled towards 'everything background'."""
    from fss_lab.losses.mmformer import mmformer_dice_loss
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, :1] = 1                                                   # a 10 % object
    def const(c):
        fg = torch.full((1, 1, 10, 10), c)
        return mmformer_dice_loss(torch.cat([1 - fg, fg], 1), labels)
    assert const(-1.0) < const(0.0) < const(1.0)
    perfect = torch.where(labels[:, None] == 1, 10.0, -10.0).float()
    assert mmformer_dice_loss(torch.cat([1 - perfect, perfect], 1), labels) < const(-1.0)   # a real match wins
