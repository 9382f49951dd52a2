"""MM-Former Feature Alignment Block: self-alignment by hand (no residual), cross-alignment directions and memories."""
import math

import pytest
import torch
import torch.nn.functional as F

from fss_lab.models.mmformer import (
    CrossAlignment,
    FeatureAlignmentBlock,
    SelfAlignment,
    mask_support_features,
    memory_size,
    self_alignment,
    self_alignment_weights,
    sine_positional_encoding,
)


def test_self_alignment_by_hand_channel_gate_no_residual():
    # x: channel 0 = (0, 2), channel 1 = (0, 0) on a 1x2 map; channel mean = (0, 1)
    x = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])
    wts = torch.tensor([1.0, math.e]) / (1 + math.e)                    # softmax over the two positions
    assert torch.allclose(self_alignment_weights(x).flatten(), wts)
    ctx0 = 2.0 * wts[1]                                                 # channel 0 context; channel 1 context 0
    expected = torch.tensor([[[[0.0, 2.0 * torch.sigmoid(ctx0)]], [[0.0, 0.0]]]])
    assert torch.allclose(self_alignment(x), expected)
    # no residual: the output is x scaled by a gate in (0, 1), never x * g + x
    assert (self_alignment(x).abs() <= x.abs()).all()


def test_self_alignment_weights_sum_to_one_and_gate_is_per_channel():
    x = torch.randn(2, 5, 3, 4)
    wts = self_alignment_weights(x)
    assert wts.shape == (2, 1, 3, 4)
    assert torch.allclose(wts.sum(dim=(2, 3)), torch.ones(2, 1))
    ratio = self_alignment(x) / x
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)   # constant over positions


def test_self_alignment_spatial_residual_variant_by_hand():
    x = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])
    anchor = torch.tensor([1.0, 1.0])                                  # spatial means per channel
    sm0 = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    sm1 = torch.softmax(torch.tensor([1.0, 1.0]), 0)
    ctx = anchor[0] * sm0 + anchor[1] * sm1                            # one value per position
    expected = x * torch.sigmoid(ctx).view(1, 1, 1, 2) + x
    assert torch.allclose(self_alignment(x, "spatial_residual"), expected)
    with pytest.raises(ValueError, match="variant"):
        self_alignment(x, "bogus")
    mod = SelfAlignment(keep_attention=True)
    mod(x)
    assert mod.last_attention.shape == (1, 1, 1, 2)


def test_memory_size_short_side_15():
    assert memory_size(60, 60) == (15, 15)
    assert memory_size(30, 45) == (15, 22)                              # int(45 * 15 / 30) = 22
    assert memory_size(45, 30) == (22, 15)
    assert memory_size(10, 20) == (15, 30)                              # small maps are upsampled


def _ca(**kw):
    torch.manual_seed(0)
    return CrossAlignment(d_model=8, nhead=2, dim_feedforward=16, **kw).eval()


def test_cross_alignment_shapes_attention_rows_and_memory_sizes():
    ca = _ca()
    q, s = torch.randn(2, 8, 20, 30), torch.randn(2, 8, 16, 16)
    out_q, out_s, attn = ca(q, s, return_attention=True)
    assert out_q.shape == q.shape and out_s.shape == s.shape
    assert attn["query_memory_size"] == (15, 22) and attn["support_memory_size"] == (15, 15)
    assert len(attn["query_to_support"]) == 2 and len(attn["support_to_query"]) == 2
    for a in attn["query_to_support"]:
        assert a.shape == (2, 2, 20 * 30, 15 * 15)                      # [B, heads, query pos, support memory]
        assert torch.allclose(a.sum(-1), torch.ones(2, 2, 600), atol=1e-5)
    for a in attn["support_to_query"]:
        assert a.shape == (2, 2, 16 * 16, 15 * 22)
        assert torch.allclose(a.sum(-1), torch.ones(2, 2, 256), atol=1e-5)
    assert ca.last_attention is attn
    assert len(ca.cross_attention_layers) == 2 and len(ca.ffn_layers) == 2   # one set, shared by both directions


def test_cross_alignment_no_resize_when_a_query_side_is_15():
    ca = _ca()
    _, _, attn = ca(torch.randn(1, 8, 15, 20), torch.randn(1, 8, 18, 18), return_attention=True)
    assert attn["query_memory_size"] == (15, 20) and attn["support_memory_size"] == (18, 18)   # official quirk


def _manual(ca, q, s, qp, sp, updated_query_as_memory=False):
    """Re-run the two directions by hand with the module's own (shared) layers."""
    tok = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731
    mq, ms = memory_size(*q.shape[-2:]), memory_size(*s.shape[-2:])
    rs = lambda x, sz: F.interpolate(x, size=sz, mode="bilinear", align_corners=False)  # noqa: E731
    xq = tok(q)
    for attn, ffn in zip(ca.cross_attention_layers, ca.ffn_layers):
        xq = ffn(attn(xq, tok(rs(s, ms)), pos=tok(rs(sp, ms)), query_pos=tok(qp))[0])
    mem = rs(xq.transpose(1, 2).reshape(q.shape), mq) if updated_query_as_memory else rs(q, mq)
    xs = tok(s)
    for attn, ffn in zip(ca.cross_attention_layers, ca.ffn_layers):
        xs = ffn(attn(xs, tok(mem), pos=tok(rs(qp, mq)), query_pos=tok(sp))[0])
    return xq.transpose(1, 2).reshape(q.shape), xs.transpose(1, 2).reshape(s.shape)


def test_support_direction_attends_to_the_original_query():
    ca = _ca()
    q, s = torch.randn(1, 8, 20, 20), torch.randn(1, 8, 17, 19)
    qp, sp = torch.randn_like(q), torch.randn_like(s)
    with torch.no_grad():
        out_q, out_s = ca(q, s, qp, sp)
        ref_q, ref_s = _manual(ca, q, s, qp, sp)
        _, wrong_s = _manual(ca, q, s, qp, sp, updated_query_as_memory=True)
    assert torch.allclose(out_q, ref_q, atol=1e-5)
    assert torch.allclose(out_s, ref_s, atol=1e-5)
    assert not torch.allclose(out_s, wrong_s, atol=1e-3)


def test_pre_norm_option_and_shape_errors():
    q, s = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
    post, pre = _ca(), _ca(pre_norm=True)
    with torch.no_grad():
        assert not torch.allclose(post(q, s)[0], pre(q, s)[0])
    with pytest.raises(ValueError, match="support"):
        post(q, torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="batch"):
        post(q, torch.randn(2, 8, 16, 16))


def test_sine_positional_encoding_values():
    pe = sine_positional_encoding(torch.zeros(1, 3, 3, 4), num_pos_feats=4)
    assert pe.shape == (1, 8, 3, 4)
    y = 1 / (3 + 1e-6) * 2 * math.pi                                    # row 0 normalised coordinate
    assert math.isclose(pe[0, 0, 0, 0].item(), math.sin(y), rel_tol=1e-5)
    assert math.isclose(pe[0, 1, 0, 0].item(), math.cos(y), rel_tol=1e-5)
    assert math.isclose(pe[0, 2, 0, 0].item(), math.sin(y / 100), rel_tol=1e-5)   # 10000 ** (2 * 1 / 4) = 100


def test_mask_support_features_bilinear_no_align_corners():
    s, p = torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    label = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [255, 0, 0, 0]]])
    ms, mp = mask_support_features(s, p, label)
    expected = F.interpolate(torch.tensor([[[[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]]),
                             size=(2, 2), mode="bilinear", align_corners=False)
    assert torch.allclose(ms[:, :1], expected) and torch.allclose(mp[:, :1], expected)


def test_feature_alignment_block_shapes_and_attention():
    torch.manual_seed(0)
    block = FeatureAlignmentBlock(in_channels=(6, 4), hidden_dim=8, nhead=2, dim_feedforward=16)
    q = [torch.randn(1, 6, 4, 4), torch.randn(1, 4, 8, 8)]
    s = [torch.randn(1, 6, 4, 4), torch.randn(1, 4, 8, 8)]
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    mask[:, :16] = 1
    out_q, out_s, attn = block(q, s, mask, return_attention=True)
    assert [t.shape for t in out_q] == [(1, 8, 4, 4), (1, 8, 8, 8)]
    assert [t.shape for t in out_s] == [(1, 8, 4, 4), (1, 8, 8, 8)]
    assert len(attn) == 2 and attn[0]["query_memory_size"] == (15, 15)
    with pytest.raises(ValueError, match="level 1"):
        block(q, [s[0], torch.randn(1, 5, 8, 8)], mask)
