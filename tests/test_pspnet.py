"""PSPNet: shapes per backbone, gradients, the frozen backbone, and the feature API methods rely on."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fss_lab.models.backbones import UnknownBackboneError
from fss_lab.models.pspnet import PSPNet, PyramidPooling, build_pspnet


@pytest.fixture(scope="module")
def effnet():
    torch.manual_seed(0)
    return PSPNet("efficientnet_lite0", 6, weights=None)


def test_efficientnet_defaults_and_shapes(effnet):
    m = effnet.eval()
    assert (m.level, m.aux_level, m.feature_dim) == ("s16_expanded", "s8", 128)
    assert m.ppm.branch_dim == 168 and m.ppm.out_dim == 1344
    assert m.classifier.in_channels == 128 and m.classifier.out_channels == 6
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert m.backbone_features(x).shape == (2, 672, 4, 5)
        assert m.features(x).shape == (2, 128, 4, 5)
        logits, feats = m(x, return_features=True)
        assert m(x).shape == logits.shape == (2, 6, 64, 80)
        assert feats.shape == (2, 128, 4, 5)


def test_train_mode_returns_aux_logits(effnet):
    m = effnet.train()
    x = torch.randn(2, 3, 48, 48)
    logits, aux = m(x)
    assert logits.shape == aux.shape == (2, 6, 48, 48)
    logits, aux, feats = m(x, return_features=True)
    assert feats.shape == (2, 128, 3, 3)
    m.eval()


def test_gradient_reaches_every_trainable_parameter(effnet):
    m = effnet.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 6, (2, 64, 64))
    m.zero_grad()
    logits, aux = m(x)
    (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []
    # stages after s16_expanded are never run: frozen at construction, listed by name
    assert m.unreached_backbone_parameters and all(n.startswith("blocks.") for n in m.unreached_backbone_parameters)
    assert any(n.startswith("blocks.6") for n in m.unreached_backbone_parameters)
    assert any(p.requires_grad for p in m.backbone.parameters())
    m.zero_grad()
    m.eval()


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_statistics():
    torch.manual_seed(0)
    m = PSPNet("efficientnet_lite0", 4, weights=None, freeze_backbone=True).train()
    assert m.aux is None and not m.backbone.training
    assert all(not p.requires_grad for p in m.backbone.parameters())
    bn = next(mod for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    logits, aux = m(torch.randn(2, 3, 64, 64))
    assert aux is None
    logits.sum().backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(p.grad is not None for p in m.trainable_parameters())
    assert torch.equal(bn.running_mean, before)
    assert not bn.training and m.bottleneck.training


def test_features_equal_head_of_backbone_features(effnet):
    m = effnet.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = m.features(x)
        assert torch.equal(f, m.head(m.backbone_features(x)))
        assert torch.equal(m.classify(f, (64, 64)), m(x))
        assert m.classify(f).shape == (2, 6, 4, 4)


def test_resnet_paper_setting_shapes_and_gradients():
    torch.manual_seed(0)
    m = PSPNet("resnet50_dilated", 3, weights=None).train()
    assert (m.level, m.aux_level, m.feature_dim, m.ppm.branch_dim) == ("layer4", "layer3", 512, 512)
    x = torch.randn(2, 3, 33, 41)
    logits, aux, feats = m(x, return_features=True)
    assert logits.shape == aux.shape == (2, 3, 33, 41)
    assert feats.shape[:2] == (2, 512) and feats.shape[-2:] == m.backbone_features(x).shape[-2:]
    (logits.mean() + aux.mean()).backward()
    assert all(p.grad is not None for p in m.trainable_parameters())
    assert m.unreached_backbone_parameters == ()


def test_pyramid_pooling_concatenates_bins():
    ppm = PyramidPooling(8, bins=(1, 2), branch_dim=3)
    out = ppm(torch.randn(2, 8, 5, 7))
    assert out.shape == (2, 8 + 2 * 3, 5, 7)
    with pytest.raises(ValueError, match="bins"):
        PyramidPooling(8, bins=(0,))


def test_bad_arguments_raise_clear_errors(effnet):
    with pytest.raises(ValueError, match="num_classes"):
        PSPNet("efficientnet_lite0", 0, weights=None)
    with pytest.raises(KeyError, match="valid levels"):
        PSPNet("efficientnet_lite0", 3, weights=None, level="layer4")
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite0"):
        PSPNet("efficientnet_lite9", 3, weights=None)  # not registered (lite0-2 are)
    with pytest.raises(ValueError, match="float"):
        effnet(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        effnet(torch.zeros(3, 32, 32))


def test_build_from_config_round_trip(effnet):
    twin = build_pspnet(effnet.config)
    twin.load_state_dict(effnet.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), effnet.eval()(x))
    small = PSPNet("efficientnet_lite0", 3, weights=None, bottleneck_dim=16, bins=(1, 3))
    assert small.feature_dim == 16 and small.config["bins"] == (1, 3)


def test_the_declared_config_arguments_are_the_constructors():
    import inspect

    from fss_lab.models.pspnet import PSPNET_ARGUMENTS, PSPNet
    names = [n for n in inspect.signature(PSPNet.__init__).parameters if n not in ("self", "num_classes")]
    assert tuple(names) == PSPNET_ARGUMENTS
