"""Result plots and transductive-inference figures."""
import math

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from fss_lab.viz.results import plot_gfss_scores, plot_shots_curve
from fss_lab.viz.transductive import pixel_entropy, plot_class_proportions, plot_entropy_maps, plot_prediction_steps


def test_pixel_entropy_by_hand():
    p = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]]])  # [C=2, 1, 2]: certain pixel, uniform pixel
    e = pixel_entropy(p)
    assert e.shape == (1, 2)
    assert e[0, 0].item() == pytest.approx(0.0, abs=1e-6) and e[0, 1].item() == pytest.approx(math.log(2))


def test_result_plots_build_and_check_inputs():
    frame = pd.DataFrame({"method": ["a", "b", "a", "b"], "shots": [1, 1, 5, 5], "base": [0.6, 0.5, 0.6, 0.55],
                          "novel": [0.2, 0.3, 0.25, 0.4], "mean": [0.4, 0.4, 0.425, 0.475]})
    assert isinstance(plot_gfss_scores(frame), Figure)
    assert len(plot_shots_curve(frame).axes) == 2
    with pytest.raises(ValueError, match="lacks columns"):
        plot_gfss_scores(frame.drop(columns=["novel"]))
    with pytest.raises(ValueError, match="fractions"):
        plot_gfss_scores(frame.assign(base=frame["base"] * 100))


def test_transductive_figures():
    image = torch.zeros(3, 8, 8)
    probs = torch.softmax(torch.randn(3, 4, 4), 0)
    fig = plot_entropy_maps(image, probs, probs, (0.5,) * 3, (0.5,) * 3)
    assert isinstance(fig, Figure)
    assert isinstance(plot_class_proportions({"a": probs.mean((1, 2))}, ["x", "y", "z"]), Figure)
    preds = {0: torch.zeros(8, 8, dtype=torch.long), 5: torch.ones(8, 8, dtype=torch.long)}
    assert isinstance(plot_prediction_steps(image, preds, preds[5], (0.5,) * 3, (0.5,) * 3, 3, 5), Figure)
    with pytest.raises(KeyError, match="stored"):
        plot_prediction_steps(image, preds, preds[5], (0.5,) * 3, (0.5,) * 3, 3, 7)


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_multiclass_figures_name_their_colours_in_a_legend():
    from fss_lab.viz import plot_predictions

    image = torch.zeros(3, 8, 8)
    target = torch.zeros(8, 8, dtype=torch.long)
    target[:4] = 2
    target[0, 0] = 255
    pred = torch.zeros(8, 8, dtype=torch.long)
    pred[4:] = 3
    names = ["background", "road", "car", "sign"]
    fig = plot_prediction_steps(image, {9: pred}, target, (0.5,) * 3, (0.5,) * 3, 4, 9, class_names=names)
    assert _legend_texts(fig) == ["car", "sign", "ignore"]  # present labels only; background untinted
    assert _legend_texts(plot_prediction_steps(image, {9: pred}, target, (0.5,) * 3, (0.5,) * 3, 4, 9)) == []
    fig = plot_predictions(image[None], target[None], pred[None], mean=None, std=None, class_names=names)
    assert _legend_texts(fig) == ["car", "sign", "ignore"]


def test_class_proportions_leave_out_classes_absent_everywhere():
    fig = plot_class_proportions({"pred": torch.tensor([0.0, 0.7, 0.3]), "truth": torch.tensor([0.0, 0.5, 0.5])},
                                 ["background", "road", "car"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["road", "car"]
