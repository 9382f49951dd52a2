"""PFENet prior mask: hand-computed cosine / max / min-max, per-shot normalisation, masking path, FSS baseline."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fss_lab.models.pfenet_prior import (
    PRIOR_LEVELS,
    layer4_path,
    masked_layer4_features,
    prior_fss_logits,
    prior_mask,
)


def _loop_prior(q, s, m, eps=1e-7):
    """Independent plain-numpy reference for one image and one shot (mask already at feature size)."""
    c, h, w = q.shape
    sm = s * m[None]
    best = np.full(h * w, -np.inf)
    qf, sf = q.reshape(c, -1), sm.reshape(c, -1)
    for i in range(h * w):
        for j in range(sf.shape[1]):
            cos = float(sf[:, j] @ qf[:, i]) / (np.linalg.norm(sf[:, j]) * np.linalg.norm(qf[:, i]) + eps)
            best[i] = max(best[i], cos)
    return ((best - best.min()) / (best.max() - best.min() + eps)).reshape(h, w)


def test_prior_by_hand_1x2x2x2():
    # query positions: (1,0) (0,1) / (1,1) (-1,0); support: only position (0,0) = (1,0) is foreground
    q = torch.tensor([[[[1.0, 0.0], [1.0, -1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # [1, 2, 2, 2]
    s = torch.tensor([[[[1.0, 5.0], [5.0, 5.0]], [[0.0, 5.0], [5.0, 5.0]]]])
    m = torch.tensor([[[1, 0], [0, 255]]])  # 255 ignore counts as background
    out = prior_mask(q, s[:, None], m[:, None])
    # cosines with the single unmasked support vector (1, 0); masked positions give 0 (take part in the max)
    raw = torch.tensor([1.0, 0.0, 1 / math.sqrt(2), 0.0])  # max(cos, 0) for each query position
    expected = (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out.flatten(), expected, atol=1e-6)


def test_prior_matches_numpy_loop_and_eps_on_norm_product():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 3, 3, generator=g)
    s = torch.randn(1, 3, 3, 3, generator=g)
    m = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    out = prior_mask(q, s[:, None], m[:, None])
    ref = _loop_prior(q[0].numpy(), s[0].numpy(), m[0].numpy())
    assert np.allclose(out[0, 0].numpy(), ref, atol=1e-5)


def test_mask_resized_bilinear_align_corners_soft_border_takes_part():
    q = torch.randn(1, 2, 2, 2)
    s = torch.randn(1, 2, 2, 2)
    label = torch.zeros(1, 3, 3, dtype=torch.long)
    label[0, 0, 0] = 1
    # align_corners=True from 3x3 to 2x2 picks the corners: only (0,0) stays 1, the others 0
    out_label = prior_mask(q, s[:, None], label[:, None])
    soft = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert torch.allclose(out_label, prior_mask(q, s[:, None], soft[:, None]))
    # 2x2 -> 3x3 would create fractional border weights; a fractional weight rescales s, cosine unchanged
    half = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])
    assert torch.allclose(prior_mask(q, s[:, None], half[:, None]), out_label, atol=1e-5)


def test_min_max_per_shot_then_mean():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 3, 3, generator=g)
    s = torch.randn(1, 2, 4, 3, 3, generator=g)
    m = (torch.rand(1, 2, 3, 3, generator=g) > 0.4).float()
    per = prior_mask(q, s, m, per_shot=True)
    assert per.shape == (1, 2, 3, 3)
    for k in range(2):
        one = prior_mask(q, s[:, k:k + 1], m[:, k:k + 1])
        assert torch.allclose(per[:, k:k + 1], one)
        assert abs(per[0, k].min().item()) < 1e-6 and abs(per[0, k].max().item() - 1) < 1e-5
    assert torch.allclose(prior_mask(q, s, m), per.mean(1, keepdim=True))


def test_resize_to_target_size_align_corners():
    q, s = torch.randn(2, 3, 2, 2), torch.randn(2, 1, 3, 2, 2)
    m = torch.ones(2, 1, 8, 8)
    small = prior_mask(q, s, m)
    big = prior_mask(q, s, m, size=(3, 3))
    assert big.shape == (2, 1, 3, 3)
    assert torch.allclose(big[..., ::2, ::2], small, atol=1e-6)  # align_corners keeps the corners


def test_prior_shape_errors_name_the_tensor():
    q = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="support_feats"):
        prior_mask(q, torch.randn(1, 3, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="support_masks"):
        prior_mask(q, torch.randn(1, 1, 3, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="query_feat"):
        prior_mask(torch.randn(3, 2, 2), torch.randn(1, 1, 3, 2, 2), torch.ones(1, 1, 2, 2))


def test_masked_layer4_features_multiplies_layer3_by_resized_mask():
    layer3 = torch.ones(1, 2, 3, 3)
    label = torch.tensor([[[1, 0, 0], [0, 0, 0], [0, 0, 255]]])
    out = masked_layer4_features(layer3, label, nn.Identity())
    expected = torch.zeros(1, 2, 3, 3)
    expected[:, :, 0, 0] = 1
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="masks"):
        masked_layer4_features(layer3, label[0], nn.Identity())


def test_layer4_path_efficientnet_lite0_is_s16_to_s32():
    from fss_lab.models.backbones.efficientnet_lite import EfficientNetLite0

    assert PRIOR_LEVELS["efficientnet_lite0"] == ("s16", "s32")
    net = EfficientNetLite0(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = net(x, levels=("s16", "s32"))
        out = layer4_path(net)(feats["s16"])
    assert torch.allclose(out, feats["s32"], atol=1e-5)
    with pytest.raises(TypeError):
        layer4_path(nn.Identity())


def test_prior_fss_logits_threshold_and_background():
    prior = torch.tensor([[[[0.2, 0.7]]]])
    logits = prior_fss_logits(prior, threshold=0.5)
    assert logits.shape == (1, 2, 1, 2)
    assert logits.argmax(1).tolist() == [[[0, 1]]]
    bg = torch.tensor([[[[0.1, 0.9]]]])
    assert prior_fss_logits(prior, background=bg).argmax(1).tolist() == [[[1, 0]]]
    with pytest.raises(ValueError, match="prior"):
        prior_fss_logits(prior[0])


def test_prior_from_backbone_efficientnet_on_layer3_grid():
    from fss_lab.models.backbones.efficientnet_lite import EfficientNetLite0
    from fss_lab.models.pfenet_prior import prior_from_backbone

    torch.manual_seed(0)
    net = EfficientNetLite0(weights=None).eval()
    q, s = torch.randn(1, 3, 64, 64), torch.randn(1, 2, 3, 64, 64)
    m = torch.zeros(1, 2, 64, 64, dtype=torch.long)
    m[..., 16:48, 16:48] = 1
    prior = prior_from_backbone(net, q, s, m)
    assert prior.shape == (1, 1, 4, 4)                                  # s16 grid of a 64x64 input
    assert prior.min() >= 0 and prior.max() <= 1
    with torch.no_grad():
        s3 = net(s[0], levels=("s16",))["s16"]
        s4 = masked_layer4_features(s3, m[0], layer4_path(net))[None]
        ref = prior_mask(net(q, levels=("s32",))["s32"], s4, m, size=(4, 4))
    assert torch.allclose(prior, ref)
