"""Tests for fss_lab.viz: overlays, figures (Agg backend, headless) and the episode browser widget."""
from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fss_lab.data.episode import IMAGENET_MEAN, IMAGENET_STD, Episode, collate_episodes  # noqa: E402
from fss_lab.viz import (  # noqa: E402
    denormalize,
    episode_browser,
    image_to_hwc,
    label_colors,
    mask_iou,
    overlay_mask,
    plot_episode,
    plot_label_legend,
    plot_per_class_iou,
    plot_predictions,
    show_episode,
)

H, W = 24, 32


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def make_episode(k: int = 3, q: int = 2, seed: int = 0) -> Episode:
    """A synthetic binary episode from random tensors: a foreground square and an ignore strip per mask."""
    g = torch.Generator().manual_seed(seed)

    def masks(n: int) -> torch.Tensor:
        m = torch.zeros(n, H, W, dtype=torch.int64)
        m[:, 6:16, 8:20] = 1
        m[:, -3:, :] = 255
        return m

    return Episode(
        support_images=_normalise(torch.rand(k, 3, H, W, generator=g)),
        support_masks=masks(k),
        query_images=_normalise(torch.rand(q, 3, H, W, generator=g)),
        query_masks=masks(q),
        class_ids=(2,),
        support_ids=tuple(f"s{i}" for i in range(k)),
        query_ids=tuple(f"q{i}" for i in range(q)),
    )


# ----------------------------------------------------------------------------------------------- overlays
def test_denormalize_inverts_normalisation():
    x = torch.rand(2, 3, 5, 6)
    assert torch.allclose(denormalize(_normalise(x), IMAGENET_MEAN, IMAGENET_STD), x, atol=1e-6)
    xn = _normalise(x).numpy()
    out = denormalize(xn, IMAGENET_MEAN, IMAGENET_STD)
    assert isinstance(out, np.ndarray) and np.allclose(out, x.numpy(), atol=1e-6)


def test_denormalize_clips_and_checks_shape():
    assert denormalize(torch.full((3, 2, 2), 100.0), IMAGENET_MEAN, IMAGENET_STD).max() == 1.0
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        denormalize(torch.zeros(2, 4, 4), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="3 values"):
        denormalize(torch.zeros(3, 4, 4), (0.5,), (0.5,))


def test_label_colors_distinct_and_stable():
    c = label_colors(81)
    assert c.shape == (81, 3) and c.min() >= 0 and c.max() <= 1
    assert len({tuple(np.round(row, 3)) for row in c}) == 81
    assert c[0].sum() < 0.8  # background is dark
    assert np.array_equal(label_colors(5), c[:5])
    with pytest.raises(ValueError):
        label_colors(0)


def test_image_to_hwc_formats_agree():
    hwc = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    as_float = image_to_hwc(hwc)
    assert as_float.shape == (H, W, 3)
    assert np.allclose(image_to_hwc(hwc / 255.0), as_float)
    assert np.allclose(image_to_hwc(torch.from_numpy(hwc / 255.0).permute(2, 0, 1)), as_float)
    with pytest.raises(ValueError, match="denormalize"):
        image_to_hwc(_normalise(torch.rand(3, H, W)) * 3)
    with pytest.raises(ValueError, match="shape"):
        image_to_hwc(np.zeros((H, W, 4)))


@pytest.mark.parametrize("contour", [True, False])
def test_overlay_changes_only_masked_pixels(contour):
    img = torch.rand(3, H, W)
    mask = torch.zeros(H, W, dtype=torch.int64)
    mask[2:10, 3:12] = 1
    mask[12:20, 15:30] = 3
    mask[-2:, :] = 255
    out = overlay_mask(img, mask, contour=contour)
    ref = img.permute(1, 2, 0).numpy()
    assert out.shape == (H, W, 3)
    bg = (mask == 0).numpy()
    assert np.allclose(out[bg], ref[bg])  # background untouched
    fg = (mask != 0).numpy()
    assert (np.abs(out[fg] - ref[fg]).sum(-1) > 1e-6).all()  # every labelled / ignore pixel changed
    # label 3 pixels move toward label_colors(4)[3]
    inside = (mask == 3).numpy()
    target = label_colors(4)[3]
    assert np.abs(out[inside] - target).mean() < np.abs(ref[inside] - target).mean()


def test_overlay_accepts_uint8_and_checks_inputs():
    img = np.full((H, W, 3), 128, dtype=np.uint8)
    mask = np.zeros((H, W), dtype=np.int64)
    mask[0, 0] = 1
    out = overlay_mask(img, mask, alpha=1.0, contour=False)
    assert np.allclose(out[0, 0], label_colors(2)[1]) and np.allclose(out[1, 1], 128 / 255)
    with pytest.raises(ValueError, match="image's size"):
        overlay_mask(img, np.zeros((H + 1, W), dtype=np.int64))
    with pytest.raises(ValueError, match="label_colors"):
        overlay_mask(img, mask * 7, colors=label_colors(3))
    with pytest.raises(ValueError, match="alpha"):
        overlay_mask(img, mask, alpha=1.5)


# ----------------------------------------------------------------------------------------------- figures
def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_plot_episode_axes_and_iou_title(tmp_path):
    ep = make_episode(k=3, q=2)
    pred = ep.query_masks.clone()
    pred[pred == 255] = 0
    fig = plot_episode(ep, pred, class_name="dog")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 + 2 * 3
    assert sum("prediction (IoU 1.00)" in t for t in _titles(fig)) == 2
    assert "dog" in fig.get_suptitle()
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in fig.axes)
    fig.savefig(tmp_path / "episode.png")
    assert (tmp_path / "episode.png").stat().st_size > 1000


def test_plot_episode_without_prediction_and_limits():
    ep = make_episode(k=5, q=3)
    assert len(plot_episode(ep).axes) == 5 + 3 * 2
    assert len(plot_episode(ep, max_support=2, max_query=1).axes) == 2 + 2
    assert len(plot_episode(make_episode(k=1, q=1)).axes) == 1 + 2


def test_plot_episode_rejects_bad_input():
    ep = make_episode(k=1, q=2)
    with pytest.raises(ValueError, match="unbatched"):
        plot_episode(collate_episodes([ep, ep]))
    with pytest.raises(ValueError, match="expected"):
        plot_episode(ep, torch.zeros(1, H, W, dtype=torch.int64))


def test_mask_iou():
    t = torch.tensor([[1, 1, 0, 255]])
    assert mask_iou(torch.tensor([[1, 0, 0, 1]]), t) == pytest.approx(0.5)  # ignore pixel not counted
    assert mask_iou(torch.tensor([[1, 2, 0, 0]]), torch.tensor([[1, 2, 2, 0]])) == pytest.approx(0.75)  # (1 + 1/2)/2
    assert np.isnan(mask_iou(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)))


def test_plot_predictions_grid():
    ep = make_episode(q=4)
    fig = plot_predictions(ep.query_images, ep.query_masks, ep.query_masks.clamp(max=1), titles=list("abcd"))
    assert len(fig.axes) == 3 * 4
    assert len(plot_predictions(ep.query_images, ep.query_masks, ep.query_masks.clamp(max=1), max_items=2).axes) == 6
    with pytest.raises(ValueError, match="expected images"):
        plot_predictions(ep.query_images, ep.query_masks[:2], ep.query_masks)


def test_plot_per_class_iou_dict():
    fig = plot_per_class_iou({"cat": 0.5, "dog": 0.25, 3: 0.75}, title="fold 0")
    (ax,) = fig.axes
    assert len(ax.patches) == 3
    assert sorted(round(p.get_height(), 3) for p in ax.patches) == [0.25, 0.5, 0.75]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mIoU 0.50"]


def test_plot_per_class_iou_dataframe_with_hue():
    df = pd.DataFrame(
        [{"class": c, "IoU": v + 0.1 * (k == 5), "shots": k} for k in (1, 5) for c, v in [("a", 0.2), ("b", 0.4)]]
    )
    fig = plot_per_class_iou(df, hue="shots")
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["1 (mIoU 0.30)", "5 (mIoU 0.40)"]
    assert len([p for p in ax.patches if p.get_height() > 0]) == 4


@pytest.mark.parametrize(
    "data,kwargs,match",
    [
        ({"a": 55.0}, {}, "fractions"),
        (pd.DataFrame({"name": ["a"], "iou": [0.1]}), {}, "columns"),
        (pd.DataFrame({"class": ["a"], "iou": [0.1]}), {"hue": "shots"}, "hue"),
        ({}, {}, "empty"),
    ],
)
def test_plot_per_class_iou_bad_input(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_per_class_iou(data, **kwargs)


def test_plot_label_legend():
    fig = plot_label_legend(["cat", "dog"])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["0: background", "1: cat", "2: dog"]
    with pytest.raises(ValueError, match="no colour"):
        plot_label_legend({5: "x"}, colors=label_colors(3))


# ----------------------------------------------------------------------------------------------- widgets
def _getter(index: int):
    ep = make_episode(k=2, q=1, seed=index)
    return ep, (ep.query_masks == 1).long()


def test_show_episode_plain_twin():
    fig = show_episode(_getter, 3, class_names=["cat", "dog"])
    assert isinstance(fig, Figure)
    assert "Episode 3" in fig.get_suptitle() and "dog" in fig.get_suptitle()
    assert len(fig.axes) == 2 + 3
    with pytest.raises(ValueError, match="no name"):
        show_episode(_getter, 0, class_names=["cat"])
    with pytest.raises(ValueError, match="must return"):
        show_episode(lambda i: make_episode(), 0)


def test_episode_browser_builds_and_updates():
    box = episode_browser(_getter, n_episodes=3, class_names=["cat", "dog"])
    slider, image, status = box.children
    assert (slider.min, slider.max, slider.value) == (0, 2, 0)
    first = image.value
    assert first[:4] == b"\x89PNG"
    slider.value = 2
    assert image.value[:4] == b"\x89PNG" and image.value != first
    assert status.value == ""


def test_episode_browser_reports_errors_and_checks_arguments():
    def broken(index):
        raise RuntimeError("no such episode")

    box = episode_browser(broken, n_episodes=2)
    assert "no such episode" in box.children[2].value
    with pytest.raises(ValueError, match="n_episodes"):
        episode_browser(_getter, n_episodes=0)


def test_viz_imports_without_ipywidgets():
    # ipywidgets made unimportable: the library (and its figures) still work, only the widget needs it
    code = (
        "import sys; sys.modules['ipywidgets'] = None\n"
        "import fss_lab.viz as v\n"
        "try:\n    v.episode_browser(None, 1)\nexcept ImportError:\n    print('lazy')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "lazy"
