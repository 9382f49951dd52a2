"""The toy evaluation that tests/test_sharded_eval.py runs in one process and under torchrun with two gloo ranks:
noisy one-hot features (deterministic per image), the prototype baseline on 1-way episodes and a transductive
noisy-oracle GFSS method, so the scores are neither 0 nor 1. ``python -m tests.sharded_eval_setup OUT.json`` (under
torchrun) writes rank 0's sharded results."""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.data.gfss import gfss_query_labels, gfss_runs
from fss_lab.methods.base import Method
from fss_lab.methods.prototype import PrototypeBaseline
from tests.conftest import ToyDataset
from tests.test_gfss_protocol import LAYOUT

BATCH_EPISODES, BATCH_QUERIES = 3, 2


class NoisyOneHot:
    """FeatureCache stand-in: one-hot labels (``labels(i)`` -> [H, W] ids < C) plus noise seeded by the image."""

    def __init__(self, labels, num_classes, noise=0.9):
        self.labels, self.c, self.noise = labels, num_classes, noise

    def precompute(self, indices):
        pass

    def get(self, indices):
        out = []
        for i in indices:
            y = self.labels(int(i)).long().clamp(0, self.c)  # ignore (255) -> the extra channel, dropped
            x = F.one_hot(y, self.c + 1)[..., :self.c].permute(2, 0, 1).float()
            g = torch.Generator().manual_seed(1000 + int(i))
            out.append(x + self.noise * torch.randn(x.shape, generator=g))
        return torch.stack(out)


class NoisyOracle(Method):
    """Transductive GFSS stand-in: its features as logits, scaled by the mean of the task's queries (so a query's
    logits depend on the other queries of its batch: batches must match for the sharded result to)."""

    name = "noisy-oracle"
    label_spaces = ("gfss",)
    transductive = True

    def fit(self, task):
        self.scale = 1.0 + task.query().mean().abs()
        return self

    def predict(self, task):
        return F.interpolate(task.query() * self.scale, size=task.size, mode="bilinear", align_corners=False)


def build():
    """``(fss arguments, gfss arguments)`` for the evaluators (without the method)."""
    ds = ToyDataset(LAYOUT * 2)
    items = TransformedItems(ds, PairTransform(size=(32, 32)))
    episodes = sample_fss_episodes(ds, 0, 2, 11, seed=0, min_area=16)
    fss_cache = NoisyOneHot(lambda i: (items.label(i) == 1) | (items.label(i) == 2), 2)
    run = gfss_runs(ds, 0, 1, n_runs=1, seed=0)[0]
    cmap = run.class_map
    gfss_cache = NoisyOneHot(lambda i: gfss_query_labels(items, [i], cmap)[0], cmap.num_classes)
    return (episodes, items, items, fss_cache), (run, gfss_cache, items)


def run_all(context=None):
    """``{"fss": Result summary + per-episode IoU, "gfss": ...}`` with the sharded evaluators."""
    from fss_lab.engine.sharded import evaluate_fss_sharded, evaluate_gfss_sharded

    (episodes, qi, si, fc), (run, gc, items) = build()
    kw = {} if context is None else {"context": context}
    f = evaluate_fss_sharded(PrototypeBaseline(), episodes, qi, si, fc, batch_episodes=BATCH_EPISODES,
                             progress=False, device="cpu", **kw)
    g = evaluate_gfss_sharded(NoisyOracle(), run, gc, items, batch_size=BATCH_QUERIES, device="cpu", **kw)
    return {"fss": {**f.scores, "per_class": f.per_class, "episode_iou": f.episode_iou},
            "gfss": {**g.scores, "per_class": g.per_class, "count": g.count}}


if __name__ == "__main__":
    from fss_lab.engine.distributed import cleanup_distributed, init_distributed

    ctx = init_distributed(device="cpu")
    out = run_all(ctx)
    if ctx.is_main:
        with open(sys.argv[1], "w") as fh:
            json.dump({**out, "world_size": ctx.world_size}, fh)
    cleanup_distributed()
