"""FeatureExtractor (frozen, multi-level concat) and FeatureCache (hits/misses, batching, identical values)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fss_lab.models.backbones import TF_LITE_PREPROCESSING, Backbone, create_backbone
from fss_lab.models.backbones.base import IMAGENET_PREPROCESSING
from fss_lab.models.features import FeatureCache, FeatureExtractor


class TinyBackbone(Backbone):
    """Two conv+BN levels: "a" (4 channels, stride 2), "b" (6 channels, stride 4). Not registered."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.name = "tiny"
        self.levels = {"a": (4, 2), "b": (6, 4)}
        self.preprocessing = IMAGENET_PREPROCESSING
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6))

    def _forward_levels(self, x, wanted):
        a = self.a(x)
        return {"a": a, "b": self.b(a)}


def _images(n: int, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- FeatureExtractor
def test_extractor_is_frozen_and_stays_in_eval_mode():
    ext = FeatureExtractor(TinyBackbone(), levels=("a",))
    assert all(not p.requires_grad for p in ext.parameters())
    ext.train()
    assert ext.training and not ext.backbone.training
    assert all(not m.training for m in ext.backbone.modules())
    stats = ext.backbone.a[1].running_mean.clone()
    out = ext(_images(2))
    torch.testing.assert_close(ext.backbone.a[1].running_mean, stats)  # BN statistics untouched
    assert not out.requires_grad and out.dtype == torch.float32


def test_extractor_multi_level_concat_resizes_to_the_first_level():
    tiny = TinyBackbone()
    ext = FeatureExtractor(tiny, levels=("a", "b"))
    x = _images(2, 16, 24)
    out = ext(x)
    assert ext.out_channels == 10 and ext.stride == 2
    assert out.shape == (2, 10, 8, 12) and ext.feature_size(16, 24) == (8, 12)
    with torch.no_grad():
        maps = tiny(x)
    expected = torch.cat([maps["a"], F.interpolate(maps["b"], size=(8, 12), mode="bilinear", align_corners=False)], 1)
    torch.testing.assert_close(out, expected)
    # the first level fixes the size: ("b", "a") is at stride 4
    ext_b = FeatureExtractor(tiny, levels=("b", "a"))
    assert ext_b(x).shape == (2, 10, 4, 6) and ext_b.stride == 4


def test_extractor_on_efficientnet_levels_and_sizes():
    ext = FeatureExtractor(create_backbone("efficientnet_lite0", weights=None), levels=("s16", "s16_expanded", "s8"))
    out = ext(_images(1, 48, 80))
    assert ext.out_channels == 112 + 672 + 40
    assert out.shape == (1, 824, 3, 5) == (1, ext.out_channels, *ext.feature_size(48, 80))
    assert ext.preprocessing == TF_LITE_PREPROCESSING


def test_extractor_device_and_bad_inputs():
    auto = FeatureExtractor(TinyBackbone(), ("a",), device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    ext = FeatureExtractor(TinyBackbone(), levels=("a",), device="cpu")
    assert ext.device == torch.device("cpu")
    with pytest.raises(KeyError, match="valid levels"):
        FeatureExtractor(TinyBackbone(), levels=("s16",))
    with pytest.raises(ValueError, match="no levels"):
        FeatureExtractor(TinyBackbone(), levels=())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ext(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        ext(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_check_normalization_catches_a_mismatch():
    ext = FeatureExtractor(create_backbone("efficientnet_lite0", weights=None))
    ext.check_normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="expects mean=\\(0.5, 0.5, 0.5\\)"):
        ext.check_normalization(IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std, "episode")


# ---------------------------------------------------------------- FeatureCache
class CountingExtractor(FeatureExtractor):
    """Records the batch size of every extraction call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []

    def forward(self, images):
        self.batch_sizes.append(images.shape[0])
        return super().forward(images)


def _dataset(n: int, sizes=((16, 24),)):
    images = [_images(1, *sizes[i % len(sizes)], seed=i)[0] for i in range(n)]
    loads: list[int] = []

    def load_image(i: int) -> torch.Tensor:
        loads.append(i)
        return images[i]

    return images, load_image, loads


def test_cache_counts_hits_and_misses_and_loads_each_image_once():
    ext = CountingExtractor(TinyBackbone(), levels=("a",))
    _, load, loads = _dataset(6)
    cache = FeatureCache(ext, load, batch_size=4)
    assert len(cache) == 0 and 0 not in cache
    out = cache.get([0, 1, 2])
    assert out.shape == (3, 4, 8, 12)
    assert (cache.hits, cache.misses) == (0, 3)
    cache.get([2, 3, 3, 0])  # 2, 0 cached; 3 new, then repeated
    assert (cache.hits, cache.misses) == (3, 4)
    assert sorted(loads) == [0, 1, 2, 3] and len(cache) == 4 and 3 in cache and 5 not in cache
    assert "x" not in cache
    cache.clear()
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)


def test_cached_features_equal_direct_extraction():
    ext = FeatureExtractor(TinyBackbone(), levels=("a", "b"))
    images, load, _ = _dataset(5)
    cache = FeatureCache(ext, load, batch_size=2)
    direct = ext(torch.stack(images))
    torch.testing.assert_close(cache.get([4, 0, 2]), direct[[4, 0, 2]])
    torch.testing.assert_close(cache.get([0, 1, 2, 3, 4]), direct)  # mix of hits and misses
    assert cache.nbytes == 5 * 10 * 8 * 12 * 4


def test_misses_are_extracted_in_batches_grouped_by_image_size():
    ext = CountingExtractor(TinyBackbone(), levels=("a",))
    _, load, _ = _dataset(7)
    cache = FeatureCache(ext, load, batch_size=3)
    cache.precompute(range(7))
    assert ext.batch_sizes == [3, 3, 1] and (cache.hits, cache.misses) == (0, 7)
    cache.precompute(range(7))  # nothing left to do, counts nothing
    assert ext.batch_sizes == [3, 3, 1] and (cache.hits, cache.misses) == (0, 7)

    ext2 = CountingExtractor(TinyBackbone(), levels=("a",))
    _, load2, _ = _dataset(5, sizes=((16, 24), (8, 8)))  # sizes alternate: items 0, 2, 4 vs 1, 3
    cache2 = FeatureCache(ext2, load2, batch_size=2)
    cache2.precompute(range(5))
    assert sorted(ext2.batch_sizes) == [1, 2, 2] and len(cache2) == 5
    with pytest.raises(ValueError, match="cannot be stacked"):
        cache2.get([0, 1])
    assert cache2.get([1, 3]).shape == (2, 4, 4, 4)


def test_cache_store_device_progress_and_repr(capsys):
    ext = FeatureExtractor(TinyBackbone(), levels=("a",))
    _, load, _ = _dataset(3)
    cache = FeatureCache(ext, load, store_device="cpu", progress=True, key="tiny/16x24")
    cache.precompute([0, 1, 2])
    if os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true"):  # `make test` silences bars
        assert "3/3" in capsys.readouterr().err  # the tqdm bar
    assert cache.get([1]).device.type == "cpu"
    FeatureCache(ext, load).precompute([0, 1])  # progress=False: no bar
    assert capsys.readouterr().err == ""
    assert "tiny/16x24" in repr(cache) and "misses=3" in repr(cache)


def test_cache_bad_inputs():
    ext = FeatureExtractor(TinyBackbone(), levels=("a",))
    _, load, _ = _dataset(2)
    with pytest.raises(ValueError, match="batch_size"):
        FeatureCache(ext, load, batch_size=0)
    cache = FeatureCache(ext, load)
    with pytest.raises(ValueError, match="no indices"):
        cache.get([])
    with pytest.raises(ValueError, match="integers"):
        cache.get([0.5])
    bad = FeatureCache(ext, lambda i: torch.zeros(16, 24, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"load_image\(7\) returned \(16, 24, 3\)"):
        bad.get([7])


# ---------------------------------------------------------------- ModelFeatures (moved to fss_lab.models.features)
def test_model_features_read_the_bottleneck_or_the_backbone():
    from fss_lab.models.features import ModelFeatures

    class TinySeg(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 5, 3, stride=2, padding=1)
            self.head = nn.Sequential(nn.Conv2d(5, 4, 1), nn.Dropout2d(0.5))
            self.classifier = nn.Conv2d(4, 3, 1)

        def backbone_features(self, x):
            return self.backbone(x)

        def features(self, x):
            return self.head(self.backbone_features(x))

    model = TinySeg().train()
    x = _images(2, 8, 8)
    bottleneck, backbone = ModelFeatures(model), ModelFeatures(model, "backbone")
    out = bottleneck(x)
    assert not model.training, "kept in eval mode (dropout off)"
    with torch.no_grad():
        torch.testing.assert_close(out, model.features(x))
        torch.testing.assert_close(backbone(x), model.backbone_features(x))
    assert out.shape == (2, 4, 4, 4) and not out.requires_grad and out.dtype == torch.float32
    assert backbone(x).shape == (2, 5, 4, 4) and bottleneck.device == torch.device("cpu")
    with pytest.raises(ValueError, match="source"):
        ModelFeatures(model, "logits")
