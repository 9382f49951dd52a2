"""Estimate what a sweep costs from the per-query times a benchmark run measured (notebook 08's benchmark.csv).

    python bench/sweep_costs.py results/08_benchmark/runs/<run>/benchmark.csv --episodes 1000 --seeds 5 --folds 4 \
        --gfss-queries 1449 --gfss-runs 5 --scale 1.0

Prints, per method and shot count, the estimated hours of method time (fit + predict; feature extraction and
model training excluded) for ``episodes x seeds x folds`` FSS queries (and seed 002 GFSS episodes), and for
``gfss_runs x seeds x folds`` GFSS runs of ``gfss_queries`` queries each, multiplied by ``--scale`` (e.g. the ratio
of pixels between the target images and the measured ones, for methods whose cost grows with the image area, or of
the official to the QUICK optimisation steps), and the total.

A GFSS method that is fit once per run (inductive: fine-tuning, BCM, the GFSS prototype) costs
``fit_s_per_run + queries x predict_ms_per_query`` per run, so its per-query time in a QUICK run (few queries per
run) is not its per-query time at the full protocol: the estimate uses the two columns where the run recorded them
(notebook 08 does) and ``ms_per_query x queries`` otherwise (FSS episodes, transductive methods: one fit per query).
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def estimate(t: pd.DataFrame, *, episodes: int = 1000, seeds: int = 5, folds: int = 4, gfss_queries: int = 1449,
             gfss_runs: int = 5, scale: float = 1.0) -> pd.DataFrame:
    """Add ``hours`` (estimated method hours for the sweep) to a copy of a ``benchmark.csv`` table.

    Args:
        t: rows with ``space`` (``"fss"``, ``"gfss"``, ``"gfss-episodes"``), ``ms_per_query`` and optionally
            ``fit_s_per_run`` / ``predict_ms_per_query`` (inductive GFSS methods).
        episodes / seeds / folds: FSS episodes per shot count and seed, seeds, folds.
        gfss_queries / gfss_runs: queries per GFSS run (all of the split's images that hold a novel class) and runs
            per shot count and seed (DIaM: 5).
        scale: multiplier of every cost.

    Returns:
        The table with ``hours`` (float) per row.
    """
    t = t.copy()
    per_query = t["ms_per_query"] / 1e3
    if "fit_s_per_run" in t:
        split = t["fit_s_per_run"].notna() & t["predict_ms_per_query"].notna()
        per_run = np.where(split, t["fit_s_per_run"].fillna(0) + gfss_queries * t["predict_ms_per_query"].fillna(0)
                           / 1e3, gfss_queries * per_query)
    else:
        per_run = gfss_queries * per_query
    seconds = np.where(t["space"] == "gfss", per_run * gfss_runs, per_query * episodes) * seeds * folds
    t["hours"] = seconds * scale / 3600
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--gfss-queries", type=int, default=1449, help="queries per GFSS run (PASCAL val: 1,449)")
    p.add_argument("--gfss-runs", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="cost multiplier (image area ratio, device speed)")
    a = p.parse_args(argv)
    t = estimate(pd.read_csv(a.csv), episodes=a.episodes, seeds=a.seeds, folds=a.folds, gfss_queries=a.gfss_queries,
                 gfss_runs=a.gfss_runs, scale=a.scale)
    print(t.pivot_table(index=["space", "method"], columns="shots", values="hours").round(3).to_string())
    print(f"total: {t['hours'].sum():.1f} h of method time")


if __name__ == "__main__":
    main()
