"""Episodic FSS evaluation on cached features: every method is scored on the same episodes the same way."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.episodic import TransformedItems, episode_masks
from ..data.sampler import EpisodeList
from ..methods.base import FewShotMethod
from ..metrics import FSSMeter


@dataclass
class FSSResult:
    """Scores of one method on one episode list (fractions in [0, 1]).

    Attributes:
        method / shots / fold: what was run.
        miou: FSS mIoU (per-class foreground I and U summed over episodes, averaged over the fold's classes).
        fb_iou: FB-IoU (mean of background and foreground IoU accumulated over all episodes).
        per_class: ``{class name: IoU}``.
        episode_iou: foreground IoU of each episode (for spread and for browsing), in list order.
        predictions: ``{episode number: prediction [Q, H, W] uint8}`` for the first ``keep_predictions`` episodes.
    """

    method: str
    shots: int
    fold: int
    miou: float
    fb_iou: float
    per_class: dict[str, float]
    episode_iou: list[float] = field(default_factory=list)
    predictions: dict[int, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict:
        """One tidy row: method, shots, fold, mIoU, FB-IoU, episodes."""
        return {
            "method": self.method,
            "shots": self.shots,
            "fold": self.fold,
            "mIoU": self.miou,
            "FB-IoU": self.fb_iou,
            "episodes": len(self.episode_iou),
        }

    def per_class_frame(self) -> pd.DataFrame:
        """Tidy per-class table: class, IoU, method, shots, fold."""
        return pd.DataFrame(
            [
                {"class": c, "IoU": v, "method": self.method, "shots": self.shots, "fold": self.fold}
                for c, v in self.per_class.items()
            ]
        )


def foreground_iou(pred: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> float:
    """Foreground IoU of one binary prediction; ``pred``/``target`` int ``[..., H, W]``; 1.0 when both are empty."""
    valid = target != ignore_index
    p, t = (pred == 1) & valid, (target == 1) & valid
    union = (p | t).sum().item()
    return (p & t).sum().item() / union if union else 1.0


@torch.no_grad()
def evaluate_fss(
    method: FewShotMethod,
    episodes: EpisodeList,
    query_items: TransformedItems,
    support_items: TransformedItems,
    query_features,
    support_features=None,
    *,
    device: torch.device | str = "cpu",
    keep_predictions: int = 0,
    progress: bool = True,
) -> FSSResult:
    """Run ``method`` on every episode and score it with FSS mIoU and FB-IoU.

    Args:
        method: any :class:`FewShotMethod` (fit on the support set, logits ``[Q, 2, H, W]`` for the queries).
        episodes: the sampled list (all episodes must have the same shot count).
        query_items / support_items: the datasets seen through the transform (labels come from them).
        query_features / support_features: :class:`~fss_lab.models.features.FeatureCache` objects (anything with
            ``get(indices) -> [N, D, h, w]``); support defaults to the query cache.
        device: where the method runs.
        keep_predictions: keep the predictions of the first this-many episodes (for figures).
        progress: show a ``tqdm.auto`` bar (silenced by ``TQDM_DISABLE=1``).

    Returns:
        :class:`FSSResult`. Predictions are the argmax of the logits at label resolution.
    """
    support_features = support_features or query_features
    dataset = query_items.dataset
    class_ids = episodes.meta.get("classes") or episodes.class_ids
    meter = FSSMeter(class_ids)
    episode_iou, kept = [], {}
    for n, spec in enumerate(tqdm(episodes, desc=f"{method.name} {episodes[0].shots}-shot", disable=not progress)):
        s_masks = episode_masks(support_items, spec.support, spec.class_id, "support").to(device)
        q_masks = episode_masks(query_items, spec.query, spec.class_id, "query")
        logits = method.fit_predict(
            support_features.get(spec.support).to(device),
            s_masks,
            query_features.get(spec.query).to(device),
            size=tuple(q_masks.shape[-2:]),
        )
        pred = logits.argmax(1).cpu()
        meter.update(pred, q_masks, spec.class_id)
        episode_iou.append(foreground_iou(pred, q_masks))
        if n < keep_predictions:
            kept[n] = pred.to(torch.uint8)
    return FSSResult(
        method=method.name,
        shots=episodes[0].shots,
        fold=int(episodes.meta.get("fold", -1)),
        miou=meter.miou(),
        fb_iou=meter.fb_iou(),
        per_class={dataset.class_name(c): v for c, v in meter.per_class_iou().items()},
        episode_iou=episode_iou,
        predictions=kept,
    )
