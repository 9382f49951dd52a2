"""The attention family's widget twins (issue 10): attention explorer, proposal browser, prior view."""
from __future__ import annotations

import pytest
import torch

from fss_lab.models.mmformer.cross_alignment import CrossAlignment
from fss_lab.viz.attention import attention_map, plot_attention, plot_prior, plot_proposals


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    ca = CrossAlignment(d_model=8, nhead=2, dim_feedforward=16, num_layers=2, min_size=3).eval()
    with torch.no_grad():
        _, _, att = ca(torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 9), return_attention=True)
    return att


def test_attention_map_rows_are_distributions_and_head_mean(attention):
    m = attention_map(attention, (2, 3), layer=1, head=None)
    assert m.shape == (1, *attention["support_memory_size"]) and torch.allclose(m.sum(), torch.tensor(1.0))
    heads = torch.stack([attention_map(attention, (2, 3), 1, h) for h in range(2)])
    assert torch.allclose(heads.mean(0), m)
    back = attention_map(attention, (0, 8), 0, 1, "support_to_query")
    assert back.shape == (1, *attention["query_memory_size"]) and torch.allclose(back.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="outside"):
        attention_map(attention, (6, 0))
    with pytest.raises(ValueError, match="layer 2 out of range"):
        attention_map(attention, (0, 0), layer=2)


def test_plot_attention_both_directions(attention):
    q, s = torch.rand(3, 48, 48), [torch.rand(3, 48, 72), torch.rand(3, 48, 72)]
    fig = plot_attention(q, s, attention, (1, 1), shot_attention=[attention, attention])
    assert len(fig.axes) == 3 and all(ax.images for ax in fig.axes)
    assert "support 1" in fig.axes[2].get_title()
    fig = plot_attention(q, s, attention, (1, 7), direction="support_to_query", shot_attention=[attention, attention])
    assert len(fig.axes[0].images) == 2 and "mean over shots" in fig.axes[0].get_title()


def test_plot_proposals_sorts_by_coefficient_and_shows_the_three_picks():
    props = torch.zeros(5, 8, 8)
    for n in range(5):
        props[n, :, n:n + 2] = 1
    coeff, iou = torch.tensor([0.1, 0.9, 0.3, 0.5, -0.2]), torch.rand(5)
    fg = torch.rand(32, 32)
    fig = plot_proposals(torch.rand(3, 32, 32), props, coeff, iou, fg, fg, fg, max_shown=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:4] == [t for t in titles if t.startswith("#")] and [t.split()[0] for t in titles[:4]] == \
        ["#1", "#3", "#2", "#0"]
    assert {"heuristic pick", "learned blend", "oracle"} <= set(titles)


def test_plot_prior_per_shot_and_mean():
    priors = torch.rand(3, 12, 12)
    mask = torch.zeros(48, 48, dtype=torch.long)
    mask[10:20, 10:20] = 1
    fig = plot_prior(torch.rand(3, 48, 48), mask, priors)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["query", "ground truth", "prior, shot 0", "prior, shot 1", "prior, shot 2", "prior, mean of shots"]
    shown = torch.as_tensor(fig.axes[-1].images[0].get_array().data).double()
    assert torch.allclose(shown, priors.mean(0).double(), atol=1e-6)
    assert len(plot_prior(torch.rand(3, 48, 48), mask, priors[:1]).axes) == 3


def test_self_alignment_view_matches_the_official_gate():
    from fss_lab.models.mmformer.self_alignment import self_alignment
    from fss_lab.viz.attention import plot_self_alignment, self_alignment_gates
    f = torch.randn(6, 5, 7)
    g = self_alignment_gates(f)
    assert torch.allclose(g["aligned"], self_alignment(f[None])[0]) and torch.allclose(g["weights"].sum(), torch.tensor(1.))
    assert torch.allclose(g["aligned"], f * g["gates"][:, None, None], atol=1e-6)
    assert g["gates"][g["order"][0]] == g["gates"].max()
    fig = plot_self_alignment(torch.rand(3, 20, 28), f, n_channels=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("emphasised") for t in titles) == 2 and sum(t.startswith("suppressed") for t in titles) == 1
