"""Episodic FSS evaluation on cached features: every method is scored on the same episodes the same way."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..checks import check_finite
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
    batch_episodes: int = 32,
    keep_predictions: int = 0,
    progress: bool = True,
) -> FSSResult:
    """Run ``method`` on every episode and score it with FSS mIoU and FB-IoU.

    Episodes run in chunks of ``batch_episodes`` through :meth:`FewShotMethod.fit_predict_episodes` (vectorised
    where the method supports it, a loop otherwise); each episode is still fit on its own support set only.

    Args:
        method: any :class:`FewShotMethod` (fit on the support set, logits ``[Q, 2, H, W]`` for the queries).
        episodes: the sampled list (all episodes must have the same shot and query counts).
        query_items / support_items: the datasets seen through the transform (labels come from them).
        query_features / support_features: :class:`~fss_lab.models.features.FeatureCache` objects (anything with
            ``get(indices) -> [N, D, h, w]`` and ``precompute(indices)``); support defaults to the query cache.
        device: where the method runs.
        batch_episodes: episodes per vectorised chunk (memory grows with it: ``E x Q x 2 x H x W`` logits).
        keep_predictions: keep the predictions of the first this-many episodes (for figures).
        progress: show a ``tqdm.auto`` bar (silenced by ``TQDM_DISABLE=1``).

    Returns:
        :class:`FSSResult`. Predictions are the argmax of the logits at label resolution.

    Raises:
        ValueError: episodes with different shot or query counts, or ``batch_episodes < 1``.
    """
    if batch_episodes < 1:
        raise ValueError(f"batch_episodes must be >= 1, got {batch_episodes}")
    if len({(len(e.support), len(e.query)) for e in episodes}) > 1:
        raise ValueError("all episodes of one evaluation must have the same shot and query counts")
    support_features = query_features if support_features is None else support_features
    dataset = query_items.dataset
    meter = FSSMeter(episodes.meta.get("classes") or episodes.class_ids)
    # Features of every image the episodes use, computed once in full batches (the cache skips known ones).
    query_features.precompute(sorted({i for e in episodes for i in e.query}))
    support_features.precompute(sorted({i for e in episodes for i in e.support}))
    episode_iou, kept = [], {}
    shots = episodes[0].shots
    bar = tqdm(total=len(episodes), desc=f"{method.name} {shots}-shot", disable=not progress)
    for start in range(0, len(episodes), batch_episodes):
        chunk = episodes.episodes[start : start + batch_episodes]
        u8 = torch.uint8  # masks stay uint8 on this path: far less memory traffic than int64 at full resolution
        s_masks = torch.stack([episode_masks(support_items, e.support, e.class_id, "support", u8) for e in chunk])
        q_masks = torch.stack([episode_masks(query_items, e.query, e.class_id, "query", u8) for e in chunk])
        s_feats = support_features.get([i for e in chunk for i in e.support])
        q_feats = query_features.get([i for e in chunk for i in e.query])
        logits = method.fit_predict_episodes(
            s_feats.view(len(chunk), shots, *s_feats.shape[1:]).to(device),
            s_masks.to(device),
            q_feats.view(len(chunk), -1, *q_feats.shape[1:]).to(device),
            size=tuple(q_masks.shape[-2:]),
        )
        check_finite(logits, "logits", method=method.name, where=lambda k: f"episode {start + k}, class "
                     f"{chunk[k].class_id}, query images {[dataset.image_id(i) for i in chunk[k].query]}")
        pred = logits.max(2).indices.cpu()  # max().indices: much faster than argmax over a short dim on CPU
        episode_iou += meter.update_batch(pred, q_masks, [e.class_id for e in chunk]).tolist()
        for n in range(start, min(start + len(chunk), keep_predictions)):
            kept[n] = pred[n - start].to(torch.uint8)
        bar.update(len(chunk))
    bar.close()
    return FSSResult(
        method=method.name,
        shots=shots,
        fold=int(episodes.meta.get("fold", -1)),
        miou=meter.miou(),
        fb_iou=meter.fb_iou(),
        per_class={dataset.class_name(c): v for c, v in meter.per_class_iou().items()},
        episode_iou=episode_iou,
        predictions=kept,
    )
