"""Benchmark: how close does episodic evaluation with the feature cache get to the floor of one backbone pass?

Measured in one run, on the same episodes, **interleaved and repeated** (each repeat runs both phases, in
alternating order; medians of CPU time, ``time.process_time``, and of wall time are printed):

* ``floor``: one backbone pass over the unique images the episodes use (load + transform + forward, batched);
* ``cached``: evaluating the prototype baseline on all E episodes with an empty feature cache and empty decoded
  images (so the cache is filled during the run: loading, transforms, forward passes, masks, the method and the
  metrics all count);
* ``uncached``: the same evaluation recomputing the features of every support and query image in every episode
  (what a loop without a cache does; measured once on a subset of episodes and scaled, see the output).

It prints ``cached / floor`` (goal: at most 1.1 at 1,000 episodes) and ``uncached / cached``. Ratios, not absolute
times. Threads: ``--threads`` (default 1 on a shared machine), printed.

Usage: ``python bench/feature_cache.py [--dataset synthetic|camvid] [--data-root PATH] [--episodes 1000]
[--shots 5] [--repeats 3] [--threads 1]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median
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


def _clock():
    return time.process_time(), time.perf_counter()


def _since(t0):
    return time.process_time() - t0[0], time.perf_counter() - t0[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1 on a shared machine)")
    ap.add_argument("--uncached-episodes", type=int, default=20, help="episodes timed without the cache (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python bench/feature_cache.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) (--threads), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

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
    all_items = {id(exp.query_items): exp.query_items, id(exp.support_items): exp.support_items}.values()

    def reset():  # nothing decoded, nothing cached
        for items in all_items:
            items.clear()
        exp.query_cache.clear()
        exp.support_cache.clear()

    def floor_phase():
        with torch.no_grad():
            for s in range(0, len(unique), 16):
                exp.extractor(torch.stack([items.image(i) for items, i in unique[s: s + 16]]))

    def cached_phase():
        return exp.evaluate(PrototypeBaseline(), args.shots, progress=False)

    # warm-up (first-call allocations, lazy imports), outside all timings
    exp.extractor(torch.stack([items.image(i) for items, i in unique[:4]]))
    times = {"floor": [], "cached": []}
    res = None
    for r in range(args.repeats):
        for phase in (("floor", "cached") if r % 2 == 0 else ("cached", "floor")):
            reset()
            t0 = _clock()
            out = floor_phase() if phase == "floor" else cached_phase()
            times[phase].append(_since(t0))
            res = out if phase == "cached" else res
    med = {k: (median(c for c, _ in v), median(w for _, w in v)) for k, v in times.items()}
    ratios = [c[0] / f[0] for f, c in zip(times["floor"], times["cached"])]
    print(f"floor  (one backbone pass over the unique images): CPU {med['floor'][0]:8.2f} s, wall {med['floor'][1]:8.2f} s")
    print(f"cached (all {len(episodes)} episodes, cache filled during the run): CPU {med['cached'][0]:8.2f} s, "
          f"wall {med['cached'][1]:8.2f} s   mIoU {100 * res.scores['mIoU']:.1f}")
    ratio = med["cached"][0] / med["floor"][0]
    print(f"ratio cached / floor (CPU-time medians) = {ratio:.3f}   (goal <= 1.1: {'met' if ratio <= 1.1 else 'not met'}); "
          f"per repeat: {', '.join(f'{x:.3f}' for x in ratios)}")

    if args.uncached_episodes:
        from fss_lab.data.sampler import EpisodeList
        from fss_lab.engine.evaluate import evaluate_fss

        n_un = min(args.uncached_episodes, len(episodes))
        subset = EpisodeList(episodes.episodes[:n_un], episodes.meta)
        reset()
        t0 = _clock()
        evaluate_fss(PrototypeBaseline(), subset, exp.query_items, exp.support_items,
                     _NoCache(exp.extractor, exp.query_items.image), _NoCache(exp.extractor, exp.support_items.image),
                     device=exp.device, progress=False)
        uncached = _since(t0)[0] * len(episodes) / n_un
        print(f"uncached (estimated from {n_un} episodes): CPU {uncached:8.2f} s; "
              f"ratio uncached / cached = {uncached / med['cached'][0]:.1f}x")


if __name__ == "__main__":
    main()
