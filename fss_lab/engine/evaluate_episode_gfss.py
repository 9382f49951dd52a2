"""Base and novel scores of a (B+2)-way episode classifier (seed 002, GFSS-Capstone report, Tables 2-3).

Each 1-way episode adds ONE novel class to the base classifier. Its query is labelled with background, the base
classes and the episode's novel class (id ``B + 1``); the other novel classes of the fold count as background, as
in BAM's generalized testing (fss-methods.md section 3.3). Novel mIoU is the FSS mIoU of the episode class;
base mIoU is accumulated per base class over all episodes (background excluded).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..checks import check_finite
from ..data.base import IGNORE_INDEX
from ..data.class_maps import GFSSClassMap
from ..data.episodic import TransformedItems, episode_masks
from ..data.sampler import EpisodeList
from ..metrics import FSSMeter, GFSSMeter


def episode_gfss_label(label: torch.Tensor, class_map: GFSSClassMap, class_id: int) -> torch.Tensor:
    """Dataset label -> ``0`` bg, ``1..B`` base, ``B+1`` the episode's novel class, other novel classes -> 0.

    Args:
        label: integer ``[..., H, W]`` dataset label; class_id: the episode's (novel) dataset class id.

    Returns:
        int64 ``[..., H, W]``; 255 kept.
    """
    y = class_map.base_label(label, "background")
    return y.masked_fill(label.long() == class_id, class_map.num_base + 1)


def evaluate_episode_gfss(method, episodes: EpisodeList, items: TransformedItems, features, class_map: GFSSClassMap,
                          *, support_items: TransformedItems | None = None, support_features=None,
                          device: torch.device | str = "cpu", progress: bool = False) -> dict[str, float]:
    """Fit a (B+2)-way method per episode and score its base and novel classes.

    Args:
        method: e.g. :class:`~fss_lab.methods.binary_finetune.BackgroundAwareFineTuning`: ``fit(support_features
            [K, D, h, w], support_masks [K, H, W])`` and ``predict_all(query_features, size) -> [Q, B+2, H, W]``
            logits (index ``B + 1`` = the novel class).
        episodes / items / features: the episodes, the dataset through the transform, a feature cache.
        class_map: the fold's :class:`GFSSClassMap`.
        support_items / support_features: where the supports come from when they are another split than the
            queries (e.g. CamVid's cross-video protocol: supports from train); default ``items`` / ``features``.

    Returns:
        ``{"base": base mIoU, "novel": FSS mIoU of the novel class, "mean", "harmonic", "fb_iou"}`` in [0, 1].
    """
    nb = class_map.num_base
    base_meter = GFSSMeter(nb + 2, tuple(range(1, nb + 1)), (nb + 1,))
    novel_meter = FSSMeter(episodes.meta.get("classes") or episodes.class_ids)
    support_items = items if support_items is None else support_items
    support_features = features if support_features is None else support_features
    for spec in tqdm(episodes, desc=f"{getattr(method, 'name', 'method')} episodes", disable=not progress):
        s_masks = episode_masks(support_items, spec.support, spec.class_id, "support").to(device)
        method.fit(support_features.get(spec.support).to(device), s_masks)
        q_label = torch.stack([episode_gfss_label(items.label(i), class_map, spec.class_id) for i in spec.query])
        with torch.no_grad():
            pred = check_finite(method.predict_all(features.get(spec.query).to(device), tuple(q_label.shape[-2:])),
                                "logits", method=getattr(method, "name", type(method).__name__), class_id=spec.class_id,
                                query_images=[items.dataset.image_id(i) for i in spec.query]).max(1).indices
        pred = pred.cpu()
        base_meter.update(pred, q_label)
        fg_pred = (pred == nb + 1).long()
        fg_true = (q_label == nb + 1).long().masked_fill(q_label == IGNORE_INDEX, IGNORE_INDEX)
        novel_meter.update(fg_pred, fg_true, spec.class_id)
    base, novel = base_meter.scores()["base_miou"], novel_meter.miou()
    harmonic = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
    return {"base": base, "novel": novel, "mean": (base + novel) / 2, "harmonic": harmonic,
            "fb_iou": novel_meter.fb_iou()}
