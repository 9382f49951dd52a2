"""Estimate what a sweep costs from the per-query times a benchmark run measured (notebook 08's benchmark.csv).

    python bench/sweep_costs.py results/08_benchmark/runs/<run>/benchmark.csv --episodes 1000 --seeds 5 --folds 4 \
        --gfss-queries 1449 --gfss-runs 5 --scale 1.0

Prints, per method and shot count, the estimated hours of method time (fit + predict; feature extraction and
model training excluded) for ``episodes x seeds x folds`` FSS queries or ``gfss_queries x gfss_runs x folds`` GFSS
queries, multiplied by ``--scale`` (e.g. the ratio of pixels between the target images and the measured ones, for
methods whose cost grows with the image area), and the total.
"""
from __future__ import annotations

import argparse

import pandas as pd


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
    t = pd.read_csv(a.csv)
    n = t["space"].map({"fss": a.episodes * a.seeds * a.folds, "gfss": a.gfss_queries * a.gfss_runs * a.folds})
    t["hours"] = t["ms_per_query"] * n * a.scale / 3.6e6
    print(t.pivot_table(index=["space", "method"], columns="shots", values="hours").round(2).to_string())
    print(f"total: {t['hours'].sum():.1f} h of method time")


if __name__ == "__main__":
    main()
