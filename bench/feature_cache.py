"""Benchmark: how close does episodic evaluation with the feature cache get to the floor of one backbone pass?

Measured in one run, on the same episodes:

* ``floor``: one backbone pass over the unique images the episodes use (load + transform + forward, batched);
* ``cached``: evaluating the prototype baseline on all N episodes with an empty feature cache (so the cache is
  filled during the run: loading, transforms, forward passes, masks, the method and the metrics all count);
* ``uncached``: the same evaluation recomputing the features of every support and query image in every episode
  (what a loop without a cache does; measured on a subset of episodes and scaled, see the output).

It prints ``cached / floor`` (goal: at most 1.3) and ``uncached / cached``. Ratios, not absolute times.

Usage: ``python bench/feature_cache.py [--dataset synthetic|camvid] [--data-root PATH] [--episodes 300] [--shots 5]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fss_lab, not an installed one

from fss_lab.experiments import FSSConfig, FSSExperiment
from fss_lab.methods.prototype import PrototypeBaseline


class _NoCache:
    """Same interface as FeatureCache, but recomputes features on every call."""

    def __init__(self, extractor, load_image):
        self.extractor, self.load_image = extractor, load_image

    def get(self, indices):
        return self.extractor(torch.stack([self.load_image(i) for i in indices])).cpu()

    def precompute(self, indices):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--uncached-episodes", type=int, default=40, help="episodes timed without the cache")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    cfg = FSSConfig(dataset=args.dataset, data_root=args.data_root, fold=args.fold, n_episodes=args.episodes,
                    shots=(args.shots,), device="auto")
    exp = FSSExperiment(cfg)
    episodes = exp.episodes(args.shots)
    exp.query_dataset.class_pixel_counts()  # sampling cost is not part of either timing
    query_ids = sorted({i for e in episodes for i in e.query})
    support_ids = sorted({i for e in episodes for i in e.support})
    same = exp.support_items is exp.query_items
    unique = [(exp.query_items, i) for i in query_ids]
    unique += [(exp.support_items, i) for i in support_ids if not (same and i in set(query_ids))]
    print(f"{args.dataset} fold {args.fold}: {len(episodes)} episodes x {args.shots} shots, "
          f"{len(unique)} unique images, device {exp.device}")

    # warm-up (first-call allocations, lazy imports) on a few images, outside all timings
    exp.extractor(torch.stack([items.image(i) for items, i in unique[:4]]))

    t0 = time.perf_counter()
    for s in range(0, len(unique), 16):
        batch = torch.stack([items.image(i) for items, i in unique[s : s + 16]])
        exp.extractor(batch)
    floor = time.perf_counter() - t0

    for items in {id(exp.query_items): exp.query_items, id(exp.support_items): exp.support_items}.values():
        items.clear()
    exp.query_cache.clear()
    exp.support_cache.clear()
    t0 = time.perf_counter()
    res = exp.evaluate(PrototypeBaseline(), args.shots, progress=False)
    cached = time.perf_counter() - t0

    from fss_lab.engine.evaluate import evaluate_fss
    from fss_lab.data.sampler import EpisodeList

    n_un = min(args.uncached_episodes, len(episodes))
    subset = EpisodeList(episodes.episodes[:n_un], episodes.meta)
    t0 = time.perf_counter()
    evaluate_fss(PrototypeBaseline(), subset, exp.query_items, exp.support_items,
                 _NoCache(exp.extractor, exp.query_items.image), _NoCache(exp.extractor, exp.support_items.image),
                 device=exp.device, progress=False)
    uncached = (time.perf_counter() - t0) * len(episodes) / n_un

    print(f"floor  (one backbone pass over the unique images): {floor:8.2f} s")
    print(f"cached (all {len(episodes)} episodes, cache filled during the run): {cached:8.2f} s   mIoU {100 * res.scores['mIoU']:.1f}")
    print(f"uncached (estimated from {n_un} episodes):            {uncached:8.2f} s")
    print(f"ratio cached / floor   = {cached / floor:.2f}   (goal <= 1.3)")
    print(f"ratio uncached / cached = {uncached / cached:.1f}x")


if __name__ == "__main__":
    main()
