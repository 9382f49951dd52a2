"""(B+2)-way episode scoring (seed 002)."""
import torch

from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.data.class_maps import GFSSClassMap
from fss_lab.engine.evaluate_episode_gfss import episode_gfss_label, evaluate_episode_gfss
from tests.conftest import ToyDataset


def test_episode_label_by_hand():
    ds = ToyDataset([[]], num_classes=4, folds={0: (3, 4)})
    cmap = GFSSClassMap.from_fold(ds, 0)  # base 1, 2 -> 1, 2; episode class 4 -> 3; other novel 3 -> 0
    label = torch.tensor([[0, 1, 2, 3, 4, 255]])
    assert episode_gfss_label(label, cmap, 4).tolist() == [[0, 1, 2, 0, 3, 255]]


class _Oracle:
    """Predicts the query's own episode label (a perfect (B+2)-way method) from label-valued 'features'."""

    def __init__(self, items, cmap):
        self.items, self.cmap = items, cmap

    def fit(self, support_features, support_masks):
        self.class_id = None
        return self

    def predict_all(self, query_features, size):
        labels = query_features[:, 0].long()
        return torch.nn.functional.one_hot(labels.clamp(max=self.cmap.num_base + 1), self.cmap.num_base + 2).permute(0, 3, 1, 2).float()


def test_perfect_method_scores_one(toy):
    cmap = GFSSClassMap.from_fold(toy, 0)
    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=8, seed=0)
    episode_of = {e.query[0]: e.class_id for e in eps}

    class Features:
        def get(self, indices):
            return torch.stack([episode_gfss_label(items.label(i), cmap, episode_of.get(i, 0)).float()[None]
                                for i in indices])

    scores = evaluate_episode_gfss(_Oracle(items, cmap), eps, items, Features(), cmap)
    assert scores["novel"] == 1.0 and scores["base"] == 1.0 and scores["harmonic"] == 1.0


def test_supports_come_from_the_support_split(toy):
    """Cross-split episodes (e.g. CamVid: supports from train): fit sees the support split's features and masks."""
    cmap = GFSSClassMap.from_fold(toy, 0)
    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=4, seed=0)
    seen = []

    class Recorder(_Oracle):
        def fit(self, support_features, support_masks):
            seen.append((support_features.unique().tolist(), support_masks.shape))
            return self

    class Const:
        def __init__(self, value):
            self.value = value

        def get(self, indices):
            return torch.full((len(indices), 1, 32, 32), self.value)

    evaluate_episode_gfss(Recorder(items, cmap), eps, items, Const(0.0), cmap, support_items=items,
                          support_features=Const(7.0))
    assert seen and all(values == [7.0] and shape == (1, 32, 32) for values, shape in seen)
