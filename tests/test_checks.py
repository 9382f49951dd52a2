"""NaN / Inf are reported, not scored (issue 9, finding 3): check_finite, the feature cache and the evaluators."""
import pytest
import torch

from fss_lab.checks import NonFiniteError, check_finite
from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.engine.evaluate import evaluate_fss, evaluate_gfss
from fss_lab.models.feature_cache import FeatureCache
from tests.test_evaluate import _OracleFeatures
from tests.test_evaluate_gfss import Oracle, setup  # noqa: F401  (setup is a fixture)


def test_check_finite_returns_finite_tensors_and_ints_unchanged():
    x = torch.randn(3, 4)
    assert check_finite(x, "logits") is x
    labels = torch.full((2, 2), 255, dtype=torch.uint8)
    assert check_finite(labels, "labels") is labels


def test_check_finite_names_counts_index_row_and_context():
    x = torch.zeros(3, 2, 4)
    x[1, 0, 2] = float("nan")
    x[2, 1, 1] = float("inf")
    with pytest.raises(NonFiniteError) as err:
        check_finite(x, "logits", where=lambda k: f"episode {k}", method="DIaM", run=3)
    msg = str(err.value)
    assert "logits hold 1 NaN and 1 Inf of 24 values (first at index (1, 0, 2))" in msg
    assert "[method=DIaM, run=3, episode 1]" in msg and "background" in msg
    assert isinstance(err.value, ValueError)


class _NaNOnItem(torch.nn.Module):
    """A 'backbone' whose features are the pooled image, NaN for images whose first pixel is 7 (item 2)."""

    def forward(self, images):
        f = torch.nn.functional.avg_pool2d(images, 4)
        return torch.where(images[:, :1, :1, :1] == 7, torch.full_like(f, float("nan")), f)


def test_feature_cache_refuses_nan_features_naming_the_item_and_image_id():
    def load(i):
        return torch.full((3, 8, 8), 7.0 if i == 2 else float(i))

    cache = FeatureCache(_NaNOnItem(), load, batch_size=2, key="toy/fold0", image_id=lambda i: f"img_{i:03d}")
    assert cache.get([0, 1]).shape == (2, 3, 2, 2)
    with pytest.raises(NonFiniteError, match=r"features of item 2 hold 12 NaN.*cache=toy/fold0.*image_id=img_002"):
        cache.get([1, 2, 3])
    assert 2 not in cache, "a NaN feature must not stay in the cache"


def test_evaluate_fss_refuses_nan_logits_naming_method_episode_and_images(toy):
    from fss_lab.methods.base import Method

    class Broken(Method):
        name = "broken"

        def fit(self, task):
            return self

        def predict(self, task):
            out = torch.zeros(task.num_queries, 2, *task.size)
            out[:, 1, 0, 0] = float("nan")
            return out

    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=4, seed=0)
    with pytest.raises(NonFiniteError, match=r"logits hold \d+ NaN .*method=broken, episode=0, class_id=\d+, query_ids=\[.*\], query 0"):
        evaluate_fss(Broken(), eps, items, items, _OracleFeatures(items), progress=False)


def test_evaluate_gfss_refuses_nan_logits_naming_method_run_and_image(setup):  # noqa: F811
    runs, items, feats = setup

    class Broken(Oracle):
        name = "broken-gfss"

        def predict(self, task):
            out = super().predict(task)
            out[-1, 0, 0, 0] = float("inf")
            return out

    first = runs[0].query[0]
    with pytest.raises(NonFiniteError, match=r"1 Inf .*method=broken-gfss, run=0, query_ids=\[.*'toy_val_\d+'\], query \d+"):
        evaluate_gfss(Broken(), runs[0], feats, items, batch_size=len(runs[0].query))
    assert first is not None


def test_base_training_refuses_nan_backbone_features_naming_the_image():
    from fss_lab.engine.train import train_base
    from tests.test_checkpoint import _tiny_training

    model, train, cfg = _tiny_training()
    model.freeze_backbone = True
    real = model.backbone_features

    def poisoned(x):
        f = real(x)
        f[0, 0, 0, 0] = float("nan")  # the first image of each batch
        return f

    model.backbone_features = poisoned
    cfg.freeze_backbone = cfg.cache_backbone_features = True
    with pytest.raises(NonFiniteError, match=r"backbone features \(caching backbone features\) hold 1 NaN.*image toy_"):
        train_base(model, train, None, cfg, progress=False)
