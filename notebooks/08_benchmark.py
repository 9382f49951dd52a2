# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Benchmark: every method on the same episodes and the same GFSS runs
#
# The earlier notebooks each study one paper. This one puts **every registered method** side by side:
#
# * **FSS** (1-way episodes, frozen ImageNet features): the prototype baseline, RePRI, binary fine-tuning, the
#   PFENet prior, the PFENet-style meta-learner, MM-Former (and its training-free heuristic), EFTNet, on **the
#   same seeded episodes**; scores are the papers' **mIoU** (per-class IoU over all episodes, averaged over the
#   fold's novel classes) and **FB-IoU**.
# * **GFSS** (DIaM protocol, the frozen base model of notebooks 01-04): the GFSS prototype, fine-tuning (last
#   layer / all after the backbone), DIaM and BCM on **the same runs** (the same supports and queries); scores are
#   **base / novel / mean / harmonic** mIoU. Seed 002's background-aware fine-tuning adds **one** novel class to
#   the base classifier (`max_novel = 1`), so it cannot score a run with several novel classes: it is scored on
#   seed 002's own protocol instead (1-way episodes of each novel class, `(B + 2)`-way scoring), beside the GFSS
#   prototype on the same episodes, in a separate table.
#
# Each method's **inference time per query** is measured in the same run (features extracted beforehand, so it is
# the method's own cost), and the published numbers (`fss-methods.md`) are printed beside ours with the protocol
# differences. Methods the current build does not have are listed as *not in this build*; methods that need a
# trained model reuse the checkpoints the earlier notebooks made (base model: notebook 04's; meta-trained
# learners: notebooks 05/06's, through `meta_learner`: same settings, same checkpoint), or train the QUICK ones.
#
# **QUICK** (a few minutes on a 2-core CPU) runs few episodes / queries and, for the two costly GFSS fine-tuning
# methods only, cheaper settings (`QUICK_SETTINGS` below: the loss on the feature grid, 20 mini-batch steps for
# the all-layers variant): their QUICK scores and costs are those of these settings, not of the official ones.
# `QUICK=False` runs every method with its official settings.
#
# **Claims checked here** (each verdict below is computed from this run's numbers):
# 1. a meta-trained model (PFENet) beats the training-free prototype baseline (PFENet vs prototype-style
#    baselines, PFENet paper);
# 2. RePRI's transductive inference beats the prototype baseline, more with 5 shots (RePRI: 59.1 / 66.8 on
#    PASCAL-5i);
# 3. more shots help every method;
# 4. DIaM's novel mIoU beats the fine-tuning baselines' with the base mIoU kept (DIaM Table 1), and BCM improves
#    on DIaM's novel mIoU (BCM README);
# 5. transductive / test-time-optimising methods cost one to three orders of magnitude more per query than
#    training-free ones;
# 6. EFTNet's test-time fine-tuning improves the meta-trained model it wraps (EFTNet, on MSANet);
# 7. seed 002's background-aware fine-tuning beats the training-free GFSS prototype on novel classes, on its own
#    1-novel-class episodes.

# %% tags=["parameters"]
DEVICE = "auto"
SEED = 0  # episode seed (FSS) and base-model training seed (GFSS runs use DIaM's protocol seed 2023)
QUICK = True  # True: a few minutes on a 2-core CPU (tiny episode / query counts, QUICK models); False: full protocol
DATASET = "synthetic"
DATA_ROOT = None
FOLD = 0
SHOTS = [1, 5]
N_EPISODES = None  # FSS episodes per shot count (and seed 002 GFSS episodes): None -> 12 when QUICK, 1,000 otherwise
N_RUNS = None  # GFSS runs per shot count: None -> 1 when QUICK, 5 otherwise (DIaM)
MAX_QUERIES = None  # GFSS queries per run: None -> 6 when QUICK, all otherwise
METHODS = None  # None: every registered method; or a list of names
RESULTS_DIR = "results/08_benchmark"
BASE_MODEL_DIR = "results/base_models"  # the base model notebook 04 trains (same config -> same checkpoint)
META_MODEL_DIR = "results/meta_models"  # the meta-trained learners notebooks 05 / 06 train

# %%
from fss_lab.params import validate_parameters
from fss_lab.results import start_run

PARAMS = validate_parameters(globals(), "08_benchmark")  # types, ranges, unknown names; the error says the fix
RUN = start_run(RESULTS_DIR, PARAMS, notebook="08_benchmark")
RESULTS_DIR = str(RUN.dir)

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

import fss_lab
from fss_lab.engine.device import seed_everything
from fss_lab.experiments import FSSConfig, FSSExperiment
from fss_lab.experiments.base_model import BaseModelConfig
from fss_lab.experiments.gfss import GFSSExperiment, gfss_config_for
from fss_lab.experiments.meta import QUICK_RECIPES, meta_learner
from fss_lab.methods import create_method, list_methods, method_class
from fss_lab.viz import show

t_start = time.time()
torch.set_num_threads(max(1, torch.get_num_threads()))
seed_everything(SEED)
N_EPISODES = N_EPISODES or (12 if QUICK else 1000)
N_RUNS = N_RUNS or (1 if QUICK else 5)
MAX_QUERIES = MAX_QUERIES or (6 if QUICK else None)
out = Path(RESULTS_DIR)
pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
print(f"fss_lab {fss_lab.__version__} · torch {torch.__version__} · QUICK={QUICK} · {DATASET} fold {FOLD}")

# %% [markdown]
# ## The methods
#
# The list comes from the registry (`list_methods("fss")`, `list_methods("gfss")`), so a method added to fss_lab
# appears here without editing the notebook. Most are built with `create_method(name)`; the few that need a model
# are built by a small factory table: the GFSS methods take the frozen base model, the meta-learners come from
# `meta_learner(name, exp, quick=QUICK)` (trained once, then reloaded), and EFTNet wraps that same PFENet-style
# meta-learner (`EFTNet(learner)`: test-time fine-tuning of a copy per query). The methods this benchmark expects
# but the build lacks are listed as *not in this build*. Rows marked *variant* are named options beside a
# registered method, not the paper's settings (`FSS_VARIANTS`: MM-Former's learned matching from the threshold start,
# notebook 05's row that does not collapse).

# %%
EXPECTED = {"fss": ["prototype", "repri", "binary-ft", "pfenet-prior", "pfenet-meta", "mmformer", "mmformer-heuristic",
                    "eftnet"],
            "gfss": ["gfss-prototype", "finetune-last-layer", "finetune-all-after-backbone", "background-aware-ft",
                     "diam", "bcm"]}
fss_exp = FSSExperiment(FSSConfig(dataset=DATASET, data_root=DATA_ROOT, fold=FOLD, shots=tuple(SHOTS),
                                  n_episodes=N_EPISODES, levels=("s16",), seed=SEED, device=DEVICE))

_learners = {}


def meta(name, **settings):
    """The meta-trained learner ``name`` (QUICK or full recipe; ``settings`` change the learner's), trained once or
    loaded from META_MODEL_DIR: the same ``meta_learner`` call as notebooks 05 / 06, so the same checkpoint."""
    key = (name, tuple(sorted(settings.items())))
    if key not in _learners:
        t0 = time.time()
        learner, history = meta_learner(name, fss_exp, quick=QUICK, cache_dir=META_MODEL_DIR, progress=False,
                                        **settings)
        _learners[key] = learner
        print(f"{name}{' ' + str(settings) if settings else ''}: meta-trained or loaded in {time.time() - t0:.0f} s "
              f"(validation mIoU {pct(history.last_miou) if history.last_miou is not None else 'n/a'} %)")
    return _learners[key]


FSS_FACTORIES = {  # methods that need more than create_method(name)
    "pfenet-prior": lambda: create_method("pfenet-prior", backbone=fss_exp.backbone),
    "repri": lambda: create_method("repri", adapt_iter=50),  # official 50 steps
    "eftnet": lambda: create_method("eftnet", learner=meta("pfenet-meta")),  # official 5 rounds, around PFENet
}
#: Named variants beside the registered methods (rows marked "variant", not the paper's settings): MM-Former's
#: learned matching from the threshold start, which notebook 05 found does not collapse to background (its row
#: "learnable matching alone, threshold start": same settings, same checkpoint).
FSS_VARIANTS = {
    "mmformer [threshold start]": lambda: meta("mmformer", self_align=False, cross="none", co_weight=0.0,
                                               init="threshold"),
}
FSS_FACTORIES.update(FSS_VARIANTS)
GFSS_FACTORIES = {"diam": lambda: create_method("diam", model=model, iterations=100)}  # official 100 steps
# QUICK only: cheaper settings for the two GFSS fine-tuning methods that dominate the CPU time (official: 100
# full-batch steps with the loss at image size; measured ~90 s per 1-shot run for all-after-backbone on the default
# data, several minutes per 5-shot run). QUICK=False: official settings.
QUICK_SETTINGS = {
    "finetune-last-layer": dict(loss_at="feature"),
    "finetune-all-after-backbone": dict(steps=20, batch_size=16, loss_at="feature"),
} if QUICK else {}
if QUICK_SETTINGS:
    print("QUICK settings:", QUICK_SETTINGS)


def build(name, space):
    """(method or None, how it was obtained); a meta-learner is trained once or loaded from META_MODEL_DIR."""
    table = FSS_FACTORIES if space == "fss" else GFSS_FACTORIES
    extra = QUICK_SETTINGS.get(name, {})
    if name in table:
        return table[name](), "factory"
    cls = method_class(name)
    if cls.episodic_training:
        if name not in QUICK_RECIPES:
            return None, "episodic learner without a recipe in experiments.meta (add a factory)"
        return meta(name), "meta_learner"
    try:
        return create_method(name, **extra), "create_method" + (f" {extra}" if extra else "")
    except TypeError:
        return create_method(name, model=model, **extra), "create_method(model=base model" + \
            (f", {extra})" if extra else ")")


wanted = METHODS
availability = []
for space in ("fss", "gfss"):
    registered = list_methods(space)
    if space == "fss":  # GFSS methods that also take 1-way tasks read the base model's features: GFSS table
        registered = [n for n in registered if "gfss" not in method_class(n).label_spaces]
    for name in sorted(set(registered) | set(EXPECTED[space])):
        if wanted is not None and name not in wanted:
            continue
        availability.append({"space": space, "method": name,
                             "status": "registered" if name in registered else "not in this build"})
for name in FSS_VARIANTS:
    if wanted is None or name in wanted or name.split(" [")[0] in wanted:
        availability.append({"space": "fss", "method": name, "status": "variant"})
availability = pd.DataFrame(availability)
print(availability.to_string(index=False))
gfss_exp = model = None
if ((availability.space == "gfss") & (availability.status == "registered")).any():  # the base model is needed
    base_cfg = BaseModelConfig(DATASET, DATA_ROOT, FOLD, quick=QUICK, seed=SEED, device=DEVICE,
                               cache_dir=BASE_MODEL_DIR, novel_policy="background")  # notebook 04's base model
    gfss_exp = GFSSExperiment(gfss_config_for(DATASET, DATA_ROOT, FOLD, n_runs=N_RUNS, max_queries=MAX_QUERIES,
                                              base=base_cfg, device=DEVICE), progress=False)
    model = gfss_exp.model
    print(f"base model {gfss_exp.base.checkpoint.name}; {gfss_exp.class_map.num_base} base, "
          f"{gfss_exp.class_map.num_novel} novel classes")

# %% [markdown]
# ## Running them
#
# Every method sees the same `N_EPISODES` FSS episodes per shot count (sampled once by the experiment) and the
# same GFSS runs. Features are extracted once per level before the clock starts; the time per query is the
# method's wall time on the episodes (fit + predict) divided by the number of query images. An inductive GFSS
# method is fit **once per run** and then predicts every query, so its time per query falls with the queries per
# run: the fit seconds per run and the predict time per query are recorded apart (`fit_s_per_run`,
# `predict_ms_per_query`) so that a sweep's cost can be estimated for any query count (`bench/sweep_costs.py`).
# A method that fails is recorded with its error and the benchmark goes on; one that cannot handle a protocol says
# why (the "how" column).

# %%
def warm_fss(method, shots):
    levels = tuple(method.feature_levels) or fss_exp.config.levels
    q, s = fss_exp.level_caches(levels) if set(levels) != set(fss_exp.config.levels) else \
        ({levels[0]: fss_exp.query_cache}, {levels[0]: fss_exp.support_cache})
    eps = fss_exp.episodes(shots)
    for c in q.values():
        c.precompute(sorted({i for e in eps for i in e.query}))
    for c in s.values():
        c.precompute(sorted({i for e in eps for i in e.support}))


def warm_gfss(shots):
    for run in gfss_exp.runs(shots):
        for c in gfss_exp.caches.values():
            c.precompute(list(run.query))
        for c in gfss_exp.support_caches.values():
            c.precompute(list(run.support))


_gfss_episodes = {}


def gfss_episodes(shots):
    """Seed 002's protocol: 1-way episodes of the fold's novel classes on the base model's features (one novel class
    per task, scored (B + 2)-way), sampled once per shot count and shared by the methods scored on it; features
    extracted before the clock starts."""
    if shots not in _gfss_episodes:
        eps = gfss_exp.fss_episodes(shots, N_EPISODES, seed=SEED)
        for source in ("bottleneck", "backbone"):
            if source in gfss_exp.caches:
                gfss_exp.caches[source].precompute(sorted({i for e in eps for i in e.query}))
                gfss_exp.fss_support(source)[1].precompute(sorted({i for e in eps for i in e.support}))
        _gfss_episodes[shots] = eps
    return _gfss_episodes[shots]


class FitClock:
    """Adds up the wall time of ``method.fit`` calls (instance attribute wrapper; the class is untouched)."""

    def __init__(self, method):
        self.seconds, self.calls, self._fit = 0.0, 0, method.fit

        def timed(task):
            t0 = time.perf_counter()
            try:
                return self._fit(task)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        method.fit = timed


def gfss_row(space, name, k, res_list, sec, queries, protocol, clock=None):
    mean = {s: float(np.mean([r.scores[s] for r in res_list])) for s in ("base", "novel", "mean", "harmonic")}
    row = {"space": space, "method": name, "shots": k, "protocol": protocol, **mean, "runs": len(res_list),
           "queries": queries, "ms_per_query": 1000 * sec / queries}
    if clock is not None and clock.calls:  # inductive: one fit per run, then a prediction per query
        row["fit_s_per_run"] = clock.seconds / len(res_list)
        row["predict_ms_per_query"] = 1000 * (sec - clock.seconds) / queries
    return row


N_NOVEL = gfss_exp.class_map.num_novel if gfss_exp is not None else 0
rows, per_class, notes, timing = [], [], {}, []
for _, a in availability[availability.status.isin(["registered", "variant"])].iterrows():
    name, space = a["method"], a["space"]
    t_build = time.time()
    try:
        method, how = build(name, space)
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        method, how = None, f"failed to build: {type(exc).__name__}: {exc}"
    t_build = time.time() - t_build
    notes[(space, name)] = how
    if method is None:
        continue
    on_runs = space == "fss" or method.supports(gfss_exp.class_map.label_space)
    if not on_runs:
        notes[(space, name)] = (f"not applicable to the DIaM runs: max_novel={method.max_novel} (it adds that many "
                                f"novel classes to the base classifier) and the runs have N={N_NOVEL}; scored "
                                f"per novel class on seed 002's 1-way episodes instead (table below)")
    t_method = time.time()
    for k in SHOTS:
        try:
            if space == "fss":
                warm_fss(method, k)
                t0 = time.perf_counter()
                res = fss_exp.evaluate(method, k, progress=False)
                sec = time.perf_counter() - t0
                queries = sum(len(e.query) for e in fss_exp.episodes(k))
                rows.append({"space": "fss", "method": name, "shots": k, "protocol": fss_exp.config.protocol,
                             "mIoU": res.miou, "FB-IoU": res.fb_iou, "episodes": res.count, "queries": queries,
                             "ms_per_query": 1000 * sec / queries})
                print(f"fss {name} {k}-shot: {sec:.1f} s for {queries} queries")
                per_class += [{"space": "fss", "method": name, "shots": k, "class": c, "IoU": v}
                              for c, v in res.per_class.items()]
            elif on_runs:
                warm_gfss(k)
                clock = None if method.transductive else FitClock(method)
                t0 = time.perf_counter()
                results = [gfss_exp.evaluate_run(method, run) for run in gfss_exp.runs(k)]
                sec = time.perf_counter() - t0
                queries = sum(len(run.query) for run in gfss_exp.runs(k))
                rows.append(gfss_row("gfss", name, k, results, sec, queries, gfss_exp.config.protocol, clock))
                print(f"gfss {name} {k}-shot: {sec:.1f} s for {queries} queries ({len(results)} run(s))")
                novel_names = {gfss_exp.class_names[c] for c in gfss_exp.class_map.novel_ids}
                per_class += [{"space": "gfss", "method": name, "shots": k, "class": c,
                               "IoU": float(np.mean([r.per_class[c] for r in results]))}
                              for c in results[0].per_class if c in novel_names]
            if space == "gfss" and (not on_runs or name == "gfss-prototype"):  # seed 002's 1-novel-class episodes
                eps = gfss_episodes(k)
                t0 = time.perf_counter()
                res = gfss_exp.evaluate_episodes(method, eps, scoring="gfss")
                sec = time.perf_counter() - t0
                queries = sum(len(e.query) for e in eps)
                rows.append(gfss_row("gfss-episodes", name, k, [res], sec, queries, "seed002-episodes"))
                print(f"gfss-episodes {name} {k}-shot: {sec:.1f} s for {queries} episodes")
                per_class += [{"space": "gfss-episodes", "method": name, "shots": k, "class": c, "IoU": v}
                              for c, v in res.per_class.items()]
        except Exception as exc:  # noqa: BLE001
            notes[(space, name)] = f"failed at {k} shots: {type(exc).__name__}: {str(exc)[:200]}"
            break
    timing.append({"space": space, "method": name, "build / load s": round(t_build, 1),
                   "features + evaluation s": round(time.time() - t_method, 1)})
bench = pd.DataFrame(rows)
per_class = pd.DataFrame(per_class)
availability["how"] = [notes.get((s, m), "") for s, m in zip(availability.space, availability.method)]
with pd.option_context("display.max_colwidth", 120):
    print(availability.to_string(index=False))
timing = pd.DataFrame(timing)
print(f"\nwhere this run's time went (wall seconds; total so far {time.time() - t_start:.0f} s):\n",
      timing.to_string(index=False))
bench.to_csv(out / "benchmark.csv", index=False)
per_class.to_csv(out / "per_class.csv", index=False)

# %% [markdown]
# ## Tables in the papers' layout
#
# FSS papers print one column per fold and their mean, for 1 and 5 shots, mIoU (FB-IoU separately); GFSS papers
# print base / novel / mean (and harmonic) per shot count. One fold runs here (`FOLD`); a sweep over folds
# (`bench/SWEEPS.md`) fills the other columns and the mean.

# %%
def fss_table(frame, score):
    t = frame[frame.space == "fss"].pivot(index="method", columns="shots", values=score)
    t.columns = [f"{k}-shot fold {FOLD}" for k in t.columns]
    return (100 * t).round(1)


fss_rows = bench[bench.space == "fss"] if len(bench) else bench
gfss_rows = bench[bench.space == "gfss"] if len(bench) else bench
ep_rows = bench[bench.space == "gfss-episodes"] if len(bench) else bench
if len(fss_rows):
    print("FSS mIoU (%)\n", fss_table(bench, "mIoU").to_string())
    print("\nFSS FB-IoU (%)\n", fss_table(bench, "FB-IoU").to_string())
if len(gfss_rows):
    g = pd.concat({f"{k}-shot": (100 * gfss_rows[gfss_rows.shots == k].set_index("method")[
        ["base", "novel", "mean", "harmonic"]]).round(1) for k in SHOTS}, axis=1)
    print("\nGFSS (%), DIaM protocol\n", g.to_string())
    skipped = availability[(availability.space == "gfss") & availability.how.str.startswith("not applicable")]
    for _, r in skipped.iterrows():
        print(f"  {r['method']}: n/a ({r['how']})")
if len(ep_rows):
    g = pd.concat({f"{k}-shot": (100 * ep_rows[ep_rows.shots == k].set_index("method")[
        ["base", "novel", "mean", "harmonic"]]).round(1) for k in SHOTS}, axis=1)
    print(f"\nGFSS (%), seed 002 protocol: {N_EPISODES} 1-way episodes per shot count, one novel class each, "
          "(B + 2)-way scoring (not comparable with the DIaM-run table)\n", g.to_string())
cost = bench.pivot_table(index=["space", "method"], columns="shots", values="ms_per_query").round(2)
print("\ninference time per query (ms, this machine, features precomputed; QUICK_SETTINGS where stated)\n",
      cost.to_string())
if "fit_s_per_run" in bench:
    split = bench.dropna(subset=["fit_s_per_run"]).pivot_table(
        index="method", columns="shots", values=["fit_s_per_run", "predict_ms_per_query"]).round(3)
    print("\ninductive GFSS methods: fit seconds per run, predict ms per query\n", split.to_string())

# %% [markdown]
# ## Published numbers beside ours
#
# The published numbers (`fss-methods.md` sections 3.4 and 5) are **PASCAL-5<sup>i</sup>, mean of 4 folds,
# ResNet-50** backbones, 1,000 episodes x 5 seeds (FSS) or 5 runs (GFSS, DIaM protocol). Ours differ in every
# respect that matters for the absolute values: the dataset (the generated one or CamVid), one fold, a frozen
# EfficientNet-Lite0 (ImageNet), QUICK meta-training and base training, `N_EPISODES` episodes and `N_RUNS` runs
# of at most `MAX_QUERIES` queries. So only the **orderings** are compared, never the values.

# %%
PUBLISHED = pd.DataFrame([
    ("fss", "pfenet-meta", "PFENet R50", 60.8, 61.9, "5-shot unconfirmed"),
    ("fss", "repri", "RePRI R50", 59.1, 66.8, "RePRI README"),
    ("fss", "mmformer", "MM-Former R50", np.nan, np.nan, "unconfirmed in fss-methods.md"),
    ("fss", "eftnet", "EFTNet R50", np.nan, np.nan, "unconfirmed in fss-methods.md"),
    ("gfss", "diam", "DIaM R50 (novel)", 35.11, 55.31, "DIaM README, base 70.89 / 70.85"),
    ("gfss", "bcm", "BCM R50 (novel)", 41.12, 55.37, "BCM README, base 71.15 / 71.23"),
], columns=["space", "method", "paper", "1-shot", "5-shot", "source"])
ours = bench.assign(score=np.where(bench.space == "fss", bench.get("mIoU", np.nan), bench.get("novel", np.nan))) \
    if len(bench) else pd.DataFrame(columns=["space", "method", "shots", "score"])
ours = ours.pivot_table(index=["space", "method"], columns="shots", values="score").mul(100).round(1)
ours.columns = [f"ours {k}-shot" for k in ours.columns]
side = PUBLISHED.merge(ours.reset_index(), on=["space", "method"], how="left")
print(side.to_string(index=False))

# %% [markdown]
# ## Figures

# %%
sns.set_theme(style="whitegrid", context="notebook")
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
if len(fss_rows):
    sns.barplot(data=fss_rows.assign(mIoU=100 * fss_rows["mIoU"]), y="method", x="mIoU", hue="shots",
                ax=axes[0], palette="crest")
    axes[0].set(title="FSS: novel-class mIoU (%)", xlabel="mIoU (%)", ylabel="")
if len(gfss_rows) or len(ep_rows):
    both = pd.concat([gfss_rows, ep_rows.assign(method=ep_rows["method"] + " (seed 002 episodes)")])
    long = both.melt(id_vars=["method", "shots"], value_vars=["novel", "harmonic"], var_name="score")
    long["label"] = long["score"] + " " + long["shots"].astype(str) + "-shot"
    sns.barplot(data=long.assign(value=100 * long["value"]), y="method", x="value", hue="label", ax=axes[1],
                palette="flare")
    axes[1].set(title="GFSS: novel and harmonic mIoU (%)", xlabel="mIoU (%)", ylabel="")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.suptitle(f"Every method on the same episodes / runs ({DATASET}, fold {FOLD})")
fig.tight_layout()
show(fig, out / "methods_by_shots.png")

# %%
if len(per_class):
    k = max(SHOTS)
    pc = per_class[per_class.shots == k]
    heat = pc.assign(row=pc.space.str.upper() + " " + pc.method).pivot_table(index="row", columns="class",
                                                                              values="IoU")
    fig, ax = plt.subplots(figsize=(1.1 * heat.shape[1] + 4, 0.42 * heat.shape[0] + 1.5))
    sns.heatmap(100 * heat, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "IoU (%)"})
    ax.set(title=f"Per-class IoU of the novel classes, {k}-shot (blank: class absent from the scored queries)",
           xlabel="", ylabel="")
    ax.tick_params(axis="x", labelrotation=30)
    plt.setp(ax.get_xticklabels(), ha="right")
    fig.tight_layout()
    show(fig, out / "per_class_heatmap.png")

# %%
if len(bench):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, space, score in ((axes[0], "fss", "mIoU"), (axes[1], "gfss", "harmonic")):
        d = bench[bench.space == space]
        if not len(d):
            ax.set_axis_off()
            continue
        d = d.assign(pct=100 * d[score], shots=d["shots"].astype(str))
        sns.scatterplot(data=d, x="ms_per_query", y="pct", hue="method", style="shots", s=90, ax=ax)
        ax.set_xscale("log")
        ax.set(title=f"{space.upper()}: {score} vs time per query", xlabel="ms per query (log)",
               ylabel=f"{score} (%)")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    show(fig, out / "score_vs_time.png")

# %% [markdown]
# ## Verdicts
#
# Each line is computed from the tables above; a claim whose methods did not run says so.

# %%
def score(space, method, k, col):
    d = bench[(bench.space == space) & (bench.method == method) & (bench.shots == k)] if len(bench) else bench
    return float(d[col].iloc[0]) if len(d) else None


verdicts = []


def verdict(claim, ok, detail):
    verdicts.append({"claim": claim, "held": ok, "detail": detail})
    print(f"[{'held' if ok else 'not held' if ok is not None else 'not run'}] {claim}: {detail}")


for k in SHOTS:
    pm, pr = score("fss", "pfenet-meta", k, "mIoU"), score("fss", "prototype", k, "mIoU")
    verdict(f"1. PFENet meta-learner beats the prototype baseline ({k}-shot)",
            None if None in (pm, pr) else pm > pr,
            "did not run" if None in (pm, pr) else f"{pct(pm)} vs {pct(pr)} mIoU")
gains = {}
for k in SHOTS:
    rp, pr = score("fss", "repri", k, "mIoU"), score("fss", "prototype", k, "mIoU")
    if None not in (rp, pr):
        gains[k] = rp - pr
verdict("2. RePRI beats the prototype baseline at every shot count", all(g > 0 for g in gains.values())
        if gains else None, ", ".join(f"{k}-shot {100 * g:+.1f} points" for k, g in gains.items()) or "did not run")
if len(gains) >= 2:
    verdict("2b. ... and by more with more shots", gains[max(gains)] > gains[min(gains)],
            f"{100 * gains[min(gains)]:+.1f} -> {100 * gains[max(gains)]:+.1f} points")
if len(SHOTS) >= 2 and len(bench):
    lo, hi = min(SHOTS), max(SHOTS)
    col = np.where(bench.space == "fss", bench.get("mIoU", np.nan), bench.get("novel", np.nan))
    s = bench.assign(score=col).pivot_table(index=["space", "method"], columns="shots", values="score")
    better = s[hi] > s[lo]
    verdict(f"3. {hi} shots beat {lo} for every method (FSS mIoU / GFSS novel)", bool(better.all()),
            f"{int(better.sum())} of {len(better)}; not: "
            f"{[f'{sp} {m}' for (sp, m), b in better.items() if not b] or 'none'}"
            + (f" (QUICK: {N_EPISODES} episodes, {N_RUNS} run(s) of {MAX_QUERIES} queries: differences of a few "
               "points are within the sampling noise)" if QUICK else "")
            + ("; the GFSS runs of the two shot counts score different query samples" if gfss_exp is not None and
               any(set(a.query) != set(b.query) for a, b in zip(gfss_exp.runs(lo), gfss_exp.runs(hi))) else ""))
for k in SHOTS:
    d, fts = score("gfss", "diam", k, "novel"), [score("gfss", m, k, "novel") for m in
                                                  ("finetune-last-layer", "finetune-all-after-backbone")]
    fts = [f for f in fts if f is not None]
    db, fb = score("gfss", "diam", k, "base"), score("gfss", "gfss-prototype", k, "base")
    verdict(f"4. DIaM's novel mIoU beats fine-tuning's ({k}-shot)", None if d is None or not fts else d > max(fts),
            "did not run" if d is None or not fts else
            f"DIaM {pct(d)} vs best fine-tuning {pct(max(fts))}; DIaM base {pct(db)} (GFSS prototype base "
            f"{pct(fb) if fb is not None else 'n/a'})")
    b = score("gfss", "bcm", k, "novel")
    verdict(f"4b. BCM improves on DIaM's novel mIoU ({k}-shot)", None if None in (b, d) else b > d,
            "did not run" if None in (b, d) else f"BCM {pct(b)} vs DIaM {pct(d)}")
if len(bench):
    t = bench.groupby(["space", "method"])["ms_per_query"].mean()
    free = [m for m in ("prototype", "gfss-prototype", "mmformer-heuristic", "pfenet-prior")
            if m in t.index.get_level_values(1)]
    opt = [m for m in ("repri", "diam", "binary-ft", "finetune-last-layer", "eftnet")
           if m in t.index.get_level_values(1)]
    if free and opt:
        tf = t[t.index.get_level_values(1).isin(free)].median()
        to = t[t.index.get_level_values(1).isin(opt)].median()
        verdict("5. test-time-optimising methods cost >= 10x more per query than training-free ones", to / tf >= 10,
                f"median {to:.1f} ms vs {tf:.1f} ms per query ({to / tf:.0f}x)")
for k in SHOTS:
    ef, pm = score("fss", "eftnet", k, "mIoU"), score("fss", "pfenet-meta", k, "mIoU")
    verdict(f"6. EFTNet improves the PFENet-style meta-learner it wraps ({k}-shot)",
            None if None in (ef, pm) else ef > pm,
            "did not run" if None in (ef, pm) else f"{pct(ef)} vs {pct(pm)} mIoU"
            + (" (a meta-learner this weak gives poor pseudo labels to tune on)" if pm < 0.1 else ""))
for k in SHOTS:
    ba, gp = score("gfss-episodes", "background-aware-ft", k, "novel"), score("gfss-episodes", "gfss-prototype", k,
                                                                              "novel")
    verdict(f"7. background-aware fine-tuning beats the GFSS prototype on seed 002's episodes ({k}-shot, novel)",
            None if None in (ba, gp) else ba > gp, "did not run" if None in (ba, gp) else f"{pct(ba)} vs {pct(gp)}")

# %%
_ = RUN.write_results({
    "dataset": DATASET, "fold": FOLD, "quick": QUICK, "n_episodes": N_EPISODES, "n_runs": N_RUNS,
    "max_queries": MAX_QUERIES, "backbone": fss_exp.config.backbone,
    "rows": [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
             for r in bench.to_dict("records")],
    "quick_settings": {k: {a: str(b) for a, b in v.items()} for k, v in QUICK_SETTINGS.items()},
    "timing": timing.to_dict("records"),
    "not_applicable": {m: h for (sp, m), h in notes.items() if h.startswith("not applicable")},
    "missing": availability[availability.status == "not in this build"].method.tolist(),
    "verdicts": [{**v, "held": v["held"] if v["held"] is None else bool(v["held"])} for v in verdicts],
    "summary_lines": [f"{r['space']} {r['method']} {r['shots']}-shot: "
                      + (f"mIoU {pct(r['mIoU'])}" if r["space"] == "fss" else
                         f"base {pct(r['base'])} novel {pct(r['novel'])} H {pct(r['harmonic'])}")
                      + f" ({r['ms_per_query']:.1f} ms/query)" for r in rows],
    "seconds": round(time.time() - t_start, 1),
})
print(f"benchmark done in {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Exercises
#
# 1. Run the benchmark on CamVid (`DATASET="camvid"`, `DATA_ROOT="../shared/data/camvid"`). Which orderings of the
#    verdicts change, and which methods' costs per query change most with the larger images?
#    <details><summary>Hint</summary>Costs of per-pixel optimisation (RePRI, DIaM) grow with the feature map
#    area; the prototype's cost barely moves. Compare the `ms_per_query` columns of both runs.</details>
# 2. The QUICK episode counts are tiny. Sweep `SEED` over 0..4 with `fss-lab sweep` (`bench/SWEEPS.md`) and
#    compute the standard deviation of each method's mIoU: which of this run's verdicts survive the spread?
#    <details><summary>Hint</summary>The sweep table has one row per method, shots and seed: group by method and
#    shots, and compare the gap between two methods with the standard deviations.</details>
# 3. Add a method to the registry (the 20-line example in `fss_lab.methods`) and rerun this notebook: where does
#    it land on the score vs time figure?
#    <details><summary>Hint</summary>Nothing in this notebook names it: `list_methods` picks it up; a method that
#    needs a model goes into `FSS_FACTORIES` / `GFSS_FACTORIES`.</details>
# 4. Why can the time per query of a GFSS method depend on `MAX_QUERIES` while an FSS method's does not?
#    <details><summary>Hint</summary>Inductive GFSS methods are fit once per run on the supports and then predict
#    every query: the fit is shared over the queries. DIaM is transductive and is fit per query.</details>
