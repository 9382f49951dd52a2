"""What the GFSS fine-tuning methods cost per run at their official settings, from a few steps.

Notebook 08's QUICK run trains ``finetune-last-layer`` / ``finetune-all-after-backbone`` with its ``QUICK_SETTINGS``
(the loss on the feature grid; 20 mini-batch steps for the all-layers variant), so its ``fit_s_per_run`` is not the
full protocol's. This script times ``fit`` on the first GFSS run of each shot count at the **official** settings
(``create_method(name, model=...)`` defaults: full batch, loss at image size) with ``--steps`` (two step counts,
default 2 and 6), fits ``seconds = a + b * steps`` and prints ``a + b * 100`` (the official 100 steps): the fit
seconds per run to put into a sweep estimate (``bench/sweep_costs.py`` or ``bench/SWEEPS.md``).

    OMP_NUM_THREADS=1 python bench/official_fit_costs.py [--dataset camvid --data-root /work/shared/data/camvid]
        [--shots 1 5] [--steps 2 6] [--methods finetune-last-layer finetune-all-after-backbone]

Needs the QUICK base model of notebook 04 (``notebooks/results/base_models``: trained if missing). Wall times on a
shared machine are noisy: the slope is what matters. Nothing here is asserted anywhere.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root", default=None)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--steps", type=int, nargs=2, default=[2, 6])
    p.add_argument("--official-steps", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=["finetune-last-layer", "finetune-all-after-backbone"])
    a = p.parse_args(argv)
    os.chdir(REPO / "notebooks")  # the base-model cache notebooks use
    from fss_lab.engine.evaluate import gfss_task_groups, level_caches
    from fss_lab.experiments.base_model import BaseModelConfig
    from fss_lab.experiments.gfss import GFSSExperiment, gfss_config_for
    from fss_lab.methods import create_method

    base = BaseModelConfig(a.dataset, a.data_root, a.fold, quick=True, seed=0, device="cpu",
                           cache_dir="results/base_models", novel_policy="background")  # notebook 04's
    exp = GFSSExperiment(gfss_config_for(a.dataset, a.data_root, a.fold, n_runs=1, max_queries=1, base=base,
                                         device="cpu"), progress=False)
    print(f"{a.dataset} fold {a.fold}, base model {exp.base.checkpoint.name}")
    for k in a.shots:
        run = exp.runs(k)[0]
        for name in a.methods:
            probe = create_method(name, model=exp.model)
            task = next(gfss_task_groups(probe, run, exp.items, exp.support_items,
                                         level_caches(exp.caches, probe), level_caches(exp.support_caches, probe),
                                         device=exp.device, batch_size=1)).tasks[0]
            secs = []
            for steps in a.steps:
                method = create_method(name, model=exp.model, steps=steps)
                t0 = time.perf_counter()
                method.fit(task)
                secs.append(time.perf_counter() - t0)
            slope = (secs[1] - secs[0]) / (a.steps[1] - a.steps[0])
            intercept = secs[0] - slope * a.steps[0]
            print(f"{name} {k}-shot ({task.support_labels.shape[0]} support images): {secs[0]:.1f} s at "
                  f"{a.steps[0]} steps, {secs[1]:.1f} s at {a.steps[1]}: {slope:.2f} s/step -> "
                  f"{intercept + slope * a.official_steps:.0f} s per run at {a.official_steps} steps")


if __name__ == "__main__":
    main()
