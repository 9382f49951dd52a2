"""GFSSExperiment's FSS episodes follow the dataset's protocol (same split, or cross-group from the support split)."""
from fss_lab.experiments.gfss import GFSSConfig, GFSSExperiment
from tests.conftest import ToyDataset


def _experiment(cross_group):
    """A GFSSExperiment shell over toy data (no base model: only what fss_episodes / fss_support read)."""
    exp = GFSSExperiment.__new__(GFSSExperiment)
    exp.config = GFSSConfig("toy", None, 0, cross_group=cross_group)
    exp.query_dataset = ToyDataset([[(1, 0, 0, 8, 8)] for _ in range(4)], folds={0: (1,)}, split="val",
                                   groups=["a", "a", "b", "b"])
    exp.support_dataset = ToyDataset([[(1, 0, 0, 8, 8)] for _ in range(6)], folds={0: (1,)}, split="train",
                                     groups=["a", "a", "a", "b", "c", "c"])
    exp.items, exp.support_items = "val items", "train items"
    exp.caches = {"bottleneck": "val cache"}
    exp.support_caches = {"bottleneck": "train cache"}
    return exp


def test_cross_group_episodes_draw_supports_from_other_groups_of_the_support_split():
    exp = _experiment(cross_group=True)
    eps = exp.fss_episodes(shots=2, n_episodes=20, seed=0)
    assert eps.meta["support_split"] == "train"
    for e in eps:
        q_group = exp.query_dataset.group(e.query[0])
        assert all(exp.support_dataset.group(s) != q_group for s in e.support)
    assert exp.fss_support() == ("train items", "train cache")


def test_same_split_episodes_stay_in_the_query_split():
    exp = _experiment(cross_group=False)
    eps = exp.fss_episodes(shots=1, n_episodes=10, seed=0)
    assert eps.meta["support_split"] == "val"
    assert all(s < 4 and s != e.query[0] for e in eps for s in e.support)
    assert exp.fss_support() == ("val items", "val cache")


def test_dataset_defaults_moved_to_data_and_re_exported():
    import fss_lab.data as data
    import fss_lab.experiments as experiments
    from fss_lab.data.defaults import DATASET_DEFAULTS, PROTOCOLS

    assert data.DATASET_DEFAULTS is DATASET_DEFAULTS and experiments.DATASET_DEFAULTS is DATASET_DEFAULTS
    assert data.PROTOCOLS is PROTOCOLS and experiments.PROTOCOLS is PROTOCOLS


def test_as_method_takes_an_instance_or_a_zero_argument_factory():
    import pytest

    from fss_lab.experiments import as_method
    from fss_lab.methods.prototype import PrototypeBaseline

    m = PrototypeBaseline()
    assert as_method(m) is m and isinstance(as_method(PrototypeBaseline), PrototypeBaseline)
    with pytest.raises(TypeError, match="not a fss_lab Method"):
        as_method(lambda: "nope")
    with pytest.raises(TypeError, match="expected a Method"):
        as_method(3)
