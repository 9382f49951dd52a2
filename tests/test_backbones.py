"""Backbone registry; shapes and gradients over the registry; EfficientNet-Lite0/1/2 weights (key map, ImageNet head)."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from fss_lab.models.backbones import (
    IMAGENET_PREPROCESSING,
    TF_LITE_PREPROCESSING,
    Backbone,
    Preprocessing,
    UnknownBackboneError,
    create_backbone,
    efficientnet_lite0_classifier,
    efficientnet_lite0_weights_path,
    list_backbones,
    load_lukemelas_weights,
    lukemelas_key_map,
    register_backbone,
)
from fss_lab.models.backbones.resnet import _preprocessing_of

ALL = list_backbones()


def _size(name: str) -> tuple[int, int]:
    """Small, non-square inputs, not multiples of 32 for EfficientNet (exercises ceil(H / stride) sizes); the
    dilated ResNets keep stride 8 over 30 layers, so they get an even smaller input to keep the tests fast."""
    return (32, 40) if "resnet" in name else (64, 72)


@functools.lru_cache(maxsize=None)
def _net(name: str) -> Backbone:
    """One randomly initialised instance per backbone for the whole module (construction is the slow part)."""
    torch.manual_seed(0)
    return create_backbone(name, weights=None)


@pytest.fixture(scope="module")
def lukemelas_state():
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- registry
def test_registry_lists_the_three_backbones():
    assert {"efficientnet_lite0", "resnet50_dilated", "resnet101_dilated"} <= set(ALL)
    assert ALL == sorted(ALL)
    assert list_backbones("resnet*") == ["resnet101_dilated", "resnet50_dilated"]
    assert list_backbones("nothing*") == []


def test_unknown_name_lists_valid_names_and_suggests_closest():
    with pytest.raises(UnknownBackboneError) as info:
        create_backbone("resnet50_dilate")
    msg = str(info.value)
    assert "Did you mean 'resnet50_dilated'?" in msg
    assert all(name in msg for name in ALL)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("efficientnet_lite0")(lambda weights=None: None)


# ---------------------------------------------------------------- every registered backbone
@pytest.mark.parametrize("name", ALL)
def test_shapes_channels_strides(name):
    net = _net(name).eval()
    assert isinstance(net, Backbone) and isinstance(net.preprocessing, Preprocessing)
    size = _size(name)
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert list(out) == list(net.levels)
    for level, (channels, stride) in net.levels.items():
        h, w = -(-size[0] // stride), -(-size[1] // stride)
        assert out[level].shape == (2, channels, h, w), level
        assert net.feature_size(*size, level) == (h, w)
        assert torch.isfinite(out[level]).all()


@pytest.mark.parametrize("name", ALL)
def test_every_trainable_parameter_gets_a_gradient(name):
    net = _net(name).train()
    net.zero_grad(set_to_none=True)
    out = net(torch.randn(1, 3, *_size(name)))
    sum(o.mean() for o in out.values()).backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL)
def test_subset_of_levels_in_requested_order_and_bad_requests(name):
    net = _net(name).eval()
    first, last = list(net.levels)[0], list(net.levels)[-1]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = net(x, levels=[last, first])
        full = net(x)
    assert list(out) == [last, first]
    torch.testing.assert_close(out[last], full[last])
    with pytest.raises(KeyError, match="valid levels"):
        net(x, levels=["nope"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(x[0])
    with pytest.raises(ValueError, match="float"):
        net((x * 100).to(torch.uint8))


# ---------------------------------------------------------------- preprocessing
def test_preprocessing_round_trip_and_values():
    x = torch.rand(2, 3, 5, 7)
    for prep in (IMAGENET_PREPROCESSING, TF_LITE_PREPROCESSING):
        torch.testing.assert_close(prep.denormalize(prep.normalize(x)), x)
    y = TF_LITE_PREPROCESSING.normalize(torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1))
    assert y.flatten().tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="3 RGB"):
        Preprocessing(mean=(0.5, 0.5), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        Preprocessing(mean=(0.5,) * 3, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="float"):
        IMAGENET_PREPROCESSING.normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_preprocessing_is_tied_to_the_weights():
    assert _net("efficientnet_lite0").preprocessing == TF_LITE_PREPROCESSING
    assert _net("resnet50_dilated").preprocessing == IMAGENET_PREPROCESSING
    # torchvision weights resolve by name without downloading anything
    from torchvision.models import resnet50

    assert _preprocessing_of("IMAGENET1K_V2", resnet50) == IMAGENET_PREPROCESSING


# ---------------------------------------------------------------- EfficientNet-Lite0 specifics
def test_efficientnet_rejects_unknown_weights():
    with pytest.raises(ValueError, match="imagenet"):
        create_backbone("efficientnet_lite0", weights="coco")


def test_s16_expanded_is_the_expansion_of_the_next_stage_and_does_not_change_s32():
    net = _net("efficientnet_lite0").eval()
    x = torch.randn(1, 3, *_size("efficientnet_lite0"))
    with torch.no_grad():
        both = net(x, levels=["s16", "s16_expanded", "s32"])
        only_s32 = net(x, levels=["s32"])
        block = net.blocks[5][0]
        expected = block.bn1(block.conv_pw(both["s16"]))
        via_timm = net.blocks[6](net.blocks[5](both["s16"]))  # the block's own forward, no split
    assert both["s16_expanded"].shape[1] == 672
    torch.testing.assert_close(both["s16_expanded"], expected)
    torch.testing.assert_close(both["s32"], only_s32["s32"])
    torch.testing.assert_close(both["s32"], via_timm)


def test_key_map_covers_all_296_keys_one_to_one(lukemelas_state):
    model = efficientnet_lite0_classifier(weights=None)
    mapping = lukemelas_key_map(model, lukemelas_state)
    assert len(lukemelas_state) == 296
    assert set(mapping) == set(lukemelas_state)
    assert set(mapping.values()) == set(model.state_dict())  # none missing, none unexpected
    assert len(set(mapping.values())) == 296  # one to one
    assert mapping["_conv_stem.weight"] == "conv_stem.weight"
    assert mapping["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"  # depthwise-separable block
    assert mapping["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"  # inverted residual
    assert mapping["_blocks.15._bn2.running_var"] == "blocks.6.0.bn3.running_var"
    assert mapping["_bn1.weight"] == "bn2.weight" and mapping["_fc.bias"] == "classifier.bias"
    for key, tkey in mapping.items():
        assert lukemelas_state[key].shape == model.state_dict()[tkey].shape, key


def test_loader_reports_missing_and_unexpected_keys(lukemelas_state):
    model = efficientnet_lite0_classifier(weights=None)
    partial = dict(lukemelas_state)
    del partial["_fc.bias"]
    with pytest.raises(RuntimeError, match=r"missing \['classifier.bias'\]"):
        load_lukemelas_weights(model, partial)
    extra = dict(lukemelas_state)
    extra["_blocks.16._bn0.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="block 16"):
        load_lukemelas_weights(model, extra)
    alien = dict(lukemelas_state)
    alien["_swish.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="no timm counterpart"):
        load_lukemelas_weights(model, alien)


def test_backbone_carries_the_imagenet_weights(lukemelas_state):
    net = create_backbone("efficientnet_lite0")  # default weights: "imagenet", offline
    torch.testing.assert_close(net.conv_stem.weight, lukemelas_state["_conv_stem.weight"])
    torch.testing.assert_close(net.blocks[6][0].bn3.running_var, lukemelas_state["_blocks.15._bn2.running_var"])


def _photo(name: str) -> torch.Tensor:
    skdata = pytest.importorskip("skimage.data")
    img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float()[None] / 255.0
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return TF_LITE_PREPROCESSING.normalize(img)


def test_imagenet_head_recognises_a_cat_and_an_espresso():
    model = efficientnet_lite0_classifier()
    with torch.no_grad():
        probs = model(torch.cat([_photo("chelsea"), _photo("coffee")])).softmax(-1)
    p, cls = probs.max(-1)
    assert 281 <= cls[0].item() <= 285 and p[0].item() > 0.5, (cls[0].item(), p[0].item())  # 285 Egyptian cat
    assert cls[1].item() == 967 and p[1].item() > 0.5, (cls[1].item(), p[1].item())  # espresso
    # [-1, 1] scaling is also what timm records for its own TF-ported Lite weights
    assert TF_LITE_PREPROCESSING.mean == tuple(model.pretrained_cfg["mean"])
    assert TF_LITE_PREPROCESSING.std == tuple(model.pretrained_cfg["std"])


# ---------------------------------------------------------------- EfficientNet-Lite1 / Lite2 (issue 16)
LITE_EXPANDED = {"efficientnet_lite0": 672, "efficientnet_lite1": 672, "efficientnet_lite2": 720}


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_key_map_covers_all_386_keys_one_to_one(variant):
    from fss_lab.models.backbones import efficientnet_lite_classifier, efficientnet_lite_weights_path

    state = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
    model = efficientnet_lite_classifier(variant, weights=None)
    mapping = lukemelas_key_map(model, state)
    assert len(state) == 386 and len(set(mapping.values())) == 386
    assert set(mapping.values()) == set(model.state_dict())  # none missing, none unexpected
    assert mapping["_blocks.20._bn2.running_var"] == "blocks.6.0.bn3.running_var"  # 21 blocks, flattened in order
    for key, tkey in mapping.items():
        assert state[key].shape == model.state_dict()[tkey].shape, key
    with pytest.raises(KeyError, match="block 16"):  # Lite1/2 have 21 blocks, Lite0 16
        load_lukemelas_weights(efficientnet_lite0_classifier(weights=None), state)
    other = efficientnet_lite_classifier(3 - variant, weights=None)  # same 386 keys, other widths / kernels
    with pytest.raises(RuntimeError, match="wrong shape.*another Lite variant"):
        load_lukemelas_weights(other, state)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_imagenet_head_recognises_a_cat_and_an_espresso(variant):
    from fss_lab.models.backbones import efficientnet_lite_classifier

    model = efficientnet_lite_classifier(variant)
    with torch.no_grad():
        probs = model(torch.cat([_photo("chelsea"), _photo("coffee")])).softmax(-1)
    p, cls = probs.max(-1)
    assert 281 <= cls[0].item() <= 285 and p[0].item() > 0.5, (cls[0].item(), p[0].item())  # 285 Egyptian cat
    assert cls[1].item() == 967 and p[1].item() > 0.5, (cls[1].item(), p[1].item())  # espresso
    assert TF_LITE_PREPROCESSING.mean == tuple(model.pretrained_cfg["mean"])


@pytest.mark.parametrize("name", sorted(LITE_EXPANDED))
def test_lite_backbones_levels_and_preprocessing_tied_to_the_weights(name):
    net = _net(name)
    assert net.preprocessing == TF_LITE_PREPROCESSING and net.name == name
    assert net.levels["s16_expanded"] == (LITE_EXPANDED[name], 16)
    assert net.blocks[5][0].conv_pw.out_channels == LITE_EXPANDED[name]
    assert [c for c, _ in (net.levels[k] for k in ("s2", "s4", "s8", "s16", "s32"))] == \
        {"efficientnet_lite2": [16, 24, 48, 120, 352]}.get(name, [16, 24, 40, 112, 320])


def test_lite2_backbone_carries_its_imagenet_weights():
    from fss_lab.models.backbones import efficientnet_lite_weights_path

    state = torch.load(efficientnet_lite_weights_path(2), map_location="cpu", weights_only=True)
    net = create_backbone("efficientnet_lite2")
    torch.testing.assert_close(net.blocks[6][0].bn3.running_var, state["_blocks.20._bn2.running_var"])
    with pytest.raises(ValueError, match="choose one of"):
        create_backbone("efficientnet_lite2", weights="coco")
