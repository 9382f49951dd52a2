"""The GFSS evaluation loop: perfect and trivial methods, transductive fitting, tidy run averages."""
import pytest
import torch
import torch.nn.functional as F

from fss_lab.data import PairTransform, TransformedItems
from fss_lab.data.gfss import gfss_query_labels, gfss_runs
from fss_lab.engine.evaluate import evaluate_gfss, evaluate_gfss_runs
from fss_lab.methods.base import Method
from tests.conftest import ToyDataset
from tests.test_gfss_protocol import LAYOUT


class OneHotFeatures:
    """A FeatureCache stand-in: the 'features' of item i are the one-hot GFSS label [C, H, W] (ignore -> zeros)."""

    def __init__(self, items, class_map):
        self.items, self.cmap, self.calls = items, class_map, []

    def get(self, indices):
        self.calls.append(list(indices))
        y = gfss_query_labels(self.items, indices, self.cmap)
        onehot = F.one_hot(y.clamp(max=self.cmap.num_classes), self.cmap.num_classes + 1)[..., :-1]
        return onehot.permute(0, 3, 1, 2).float()


class Oracle(Method):
    """Returns its features as logits: perfect on OneHotFeatures. Records the queries of each fit."""

    name = "oracle"
    label_spaces = ("gfss",)

    def __init__(self, transductive=False):
        self.transductive = transductive
        self.fits = []

    def fit(self, task):
        self.fits.append(task.num_queries)
        return self

    def predict(self, task):
        return F.interpolate(task.query(), size=task.size, mode="bilinear", align_corners=False)


class Background(Oracle):
    name = "background"

    def predict(self, task):
        logits = torch.zeros(task.num_queries, task.label_space.num_classes, *task.size)
        logits[:, 0] = 1
        return logits


@pytest.fixture
def setup():
    ds = ToyDataset(LAYOUT)
    runs = gfss_runs(ds, 0, 1, n_runs=2, seed=0)
    items = TransformedItems(ds, PairTransform(size=(32, 32)))
    return runs, items, OneHotFeatures(items, runs[0].class_map)


def test_perfect_method_scores_one(setup):
    runs, items, feats = setup
    method = Oracle()
    res = evaluate_gfss(method, runs[0], feats, items, batch_size=4, keep_predictions=3)
    for key in ("base", "novel", "mean", "harmonic", "base_miou", "base_miou_with_bg", "novel_miou"):
        assert res.scores[key] == pytest.approx(1.0), key
    assert len(method.fits) == 1, "an inductive method is fit once (on the first query batch's task)"
    assert res.count == len(runs[0].query) and len(res.predictions) == 3 and res.kind == "gfss"
    q0 = runs[0].query[0]
    want = gfss_query_labels(items, [q0], runs[0].class_map)[0]
    assert torch.equal(res.predictions[q0].long(), want)
    assert list(res.per_class) == ["background", "c3", "c4", "c1", "c2"]
    assert res.summary()["method"] == "oracle" and len(res.per_class_frame()) == 5


def test_transductive_method_is_fit_per_query_batch(setup):
    runs, items, feats = setup
    method = Oracle(transductive=True)
    res = evaluate_gfss(method, runs[0], feats, items, batch_size=4)
    q = len(runs[0].query)
    assert method.fits == [4] * (q // 4) + ([q % 4] if q % 4 else [])
    assert res.scores["mean"] == pytest.approx(1.0)


def test_background_only_method_scores_zero_and_protocols_differ(setup):
    runs, items, feats = setup
    res = evaluate_gfss(Background(), runs[0], feats, items)
    assert res.scores["base"] == 0 and res.scores["novel"] == 0 and res.scores["harmonic"] == 0
    assert res.scores["base_miou_with_bg"] > 0  # background IoU counts under GFS-Seg's convention
    assert res.per_class["background"] > 0


def test_runs_frame_averages_runs(setup):
    runs, items, feats = setup
    per_run = evaluate_gfss_runs(Oracle(), runs, feats, items, average=False)
    assert list(per_run["run"]) == [0, 1] and (per_run["novel"] == 1.0).all()
    avg = evaluate_gfss_runs(Oracle(), runs, feats, items)
    assert len(avg) == 1 and avg.loc[0, "runs"] == 2 and avg.loc[0, "mean"] == pytest.approx(1.0)
    assert avg.loc[0, "mean_std"] == pytest.approx(0.0)
    assert {"method", "fold", "shots", "protocol", "base", "novel", "harmonic"} <= set(avg.columns)


def test_bad_logits_and_arguments(setup):
    runs, items, feats = setup

    class Wrong(Oracle):
        def predict(self, task):
            return torch.zeros(task.num_queries, 2, *task.size)

    with pytest.raises(ValueError, match=r"1 \+ B \+ N"):
        evaluate_gfss(Wrong(), runs[0], feats, items)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_gfss(Oracle(), runs[0], feats, items, batch_size=0)


def test_fss_only_method_is_refused_and_tasks_carry_valid_pixels(setup):
    from fss_lab.methods import UnsupportedTaskError, list_methods

    runs, items, feats = setup

    class FSSOnly(Oracle):
        name = "fss-only"
        label_spaces = ("fss",)

    with pytest.raises(UnsupportedTaskError, match="fss-only declares") as info:
        evaluate_gfss(FSSOnly(), runs[0], feats, items)
    assert str(list_methods("gfss")) in str(info.value) and feats.calls == []

    class Recorder(Oracle):
        def fit(self, task):
            self.task = task
            return super().fit(task)

    method = Recorder()
    evaluate_gfss(method, runs[0], feats, items, batch_size=3)
    t, cmap = method.task, runs[0].class_map
    assert (t.label_space.num_base, t.label_space.num_novel) == (cmap.num_base, cmap.num_novel)
    want = gfss_query_labels(items, runs[0].query[:3], cmap)
    assert t.num_queries == 3 and torch.equal(t.query_valid.cpu(), want != 255) and t.query_labels is None
