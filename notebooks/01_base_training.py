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
# # 01 · Base training: a segmentation model that knows the base classes
#
# Fine-tuning methods (seed 000, seed 002) and transductive ones (RePRI, DIaM) all start from the same thing: a
# segmentation network trained, with plain supervision, on the **base classes** of a fold. Here it is a
# **PSPNet** (pyramid pooling over a backbone, a 3x3 "bottleneck" and a 1x1 classifier) on EfficientNet-Lite0.
# The bottleneck output is what the classifier sees; later notebooks adapt classifiers on exactly these features.
#
# **What happens to novel-class pixels during base training?** The papers disagree, and it matters:
#
# | policy | novel pixels become | used by |
# |---|---|---|
# | `"ignore"` | 255, excluded from the loss | RePRI (and DIaM's data code) |
# | `"background"` | 0, learned as background | BAM (whose base learners DIaM evaluated) |
# | `"drop"` | images holding any novel class are removed | GFS-Seg |
#
# With `"background"` the network learns to call future novel objects background (the *background shift* that
# seed 002's distillation addresses); with `"ignore"` it never sees a gradient on them. Notebook 04 (e) shows that
# the choice decides whether DIaM's distillation helps or erodes the novel classes.
#
# `QUICK=True` freezes the ImageNet backbone, caches its features once and trains only the head (minutes on a
# CPU); `QUICK=False` trains the whole network with scale/crop/flip augmentation (GPU).

# %% tags=["parameters"]
DEVICE = "auto"
SEED = 0
QUICK = True
DATASET = "synthetic"
DATA_ROOT = None
FOLD = 0
NOVEL_POLICY = "ignore"  # "ignore" | "background" | "drop"
CONTRASTIVE_WEIGHT = 0.0  # lambda of seed 002's pixel contrastive term (0: plain cross-entropy)
RESULTS_DIR = "results/01_base_training"
BASE_MODEL_DIR = "results/base_models"

# %%
from fss_lab.params import validate_parameters

PARAMS = validate_parameters(globals(), "01_base_training")  # types, ranges, unknown names; the error says the fix

# %%
import json
import time
from pathlib import Path

import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from fss_lab.data import create_dataset
from fss_lab.data.class_maps import GFSSClassMap
from fss_lab.experiments.base_model import BaseModelConfig, get_base_model
from fss_lab.viz import plot_predictions, show

t_start = time.time()
results_dir = Path(RESULTS_DIR)
results_dir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The three policies on one training image

# %%
train_ds = create_dataset(DATASET, DATA_ROOT, split="train")
cmap = GFSSClassMap.from_fold(train_ds, FOLD)
counts = train_ds.class_pixel_counts()
i = next(n for n, c in enumerate(counts) if cmap.has_novel(c) and any(b in c for b in cmap.base))
label = torch.from_numpy(train_ds.load_label(i).astype("int64"))
for policy in ("ignore", "background"):
    y = cmap.base_label(label, policy)
    print(f"{policy:>10}: labels present {sorted(set(y.unique().tolist()))}")
kept = sum(not cmap.has_novel(c) for c in counts)
print(f"      drop: this image is removed; {kept} of {len(train_ds)} training images hold no novel class")

# %% [markdown]
# ## Training (or loading the checkpoint another notebook already trained)

# %%
base_cfg = BaseModelConfig(DATASET, DATA_ROOT, FOLD, novel_policy=NOVEL_POLICY, quick=QUICK, seed=SEED,
                           device=DEVICE, contrastive_weight=CONTRASTIVE_WEIGHT, cache_dir=BASE_MODEL_DIR)
base = get_base_model(base_cfg)
steps, evals = base.history.steps_frame(), base.history.evals_frame()
print(f"checkpoint: {base.checkpoint.name}; {len(steps)} iterations")

# %%
# NBVAL_CHECK_OUTPUT
print(evals[["iteration", "base_miou", "base_miou_with_bg"]].assign(
    base_miou=lambda d: (100 * d["base_miou"]).round(1), base_miou_with_bg=lambda d: (100 * d["base_miou_with_bg"]).round(1)
).to_string(index=False))

# %%
fig = Figure(figsize=(10, 3.5), layout="constrained")
ax_loss, ax_miou = fig.subplots(1, 2)
sns.lineplot(steps.assign(smoothed=steps["loss"].rolling(20, min_periods=1).mean()), x="iteration", y="smoothed", ax=ax_loss)
ax_loss.set(title="training loss (smoothed)", ylabel="loss")
sns.lineplot(evals, x="iteration", y="base_miou", marker="o", ax=ax_miou)
ax_miou.set(title="base mIoU on the val split", ylabel="mIoU", ylim=(0, 1))
show(fig, results_dir / "curves.png")

# %% [markdown]
# ## Per-class IoU and qualitative predictions (base classes; novel pixels are ignored when scoring)

# %%
per_class = base.history.per_class_frame()
last = per_class[per_class["iteration"] == per_class["iteration"].max()]
names = ["background"] + [train_ds.class_name(c) for c in cmap.base]
print(", ".join(f"{names[int(r.label)]} {100 * r.iou:.0f}" for r in last.itertuples() if int(r.label) < len(names)))

# %%
val_ds = create_dataset(DATASET, DATA_ROOT, split="val")
model = base.model.eval()
images, labels = zip(*(base.transform(*val_ds.load(n)) for n in range(4)))
images, labels = torch.stack(images), torch.stack([cmap.base_label(y, "ignore") for y in labels])
with torch.no_grad():
    pred = model(images.to(next(model.parameters()).device)).argmax(1).cpu()
fig = plot_predictions(images, labels, pred, mean=base.transform.mean, std=base.transform.std, class_names=names)
show(fig, results_dir / "predictions.png")

# %%
final = float(evals["base_miou"].iloc[-1])
lines = [f"{DATASET} fold {FOLD} base model ({NOVEL_POLICY}, {'QUICK' if QUICK else 'full'}): base mIoU {100 * final:.1f} "
         f"after {len(steps)} iterations"]
print(lines[0])
_ = (results_dir / "results.json").write_text(json.dumps({  # `_ =`: no stray byte count under the cell
    "notebook": "01_base_training", "dataset": DATASET, "fold": FOLD, "base_miou": final, "summary_lines": lines,
    "seconds": round(time.time() - t_start, 1)}, indent=2))

# %% [markdown]
# ## Exercises
#
# **Exercise 1 · Change a parameter, predict first.** Re-run with `NOVEL_POLICY = "background"` (and then
# `"drop"`). Before running: will the base mIoU on val go up or down, and what will the model now predict on the
# novel objects in the prediction figure? The checkpoint name includes the policy, so nothing is overwritten.
#
# <details><summary>Hint</summary>
#
# With `"background"` the loss teaches "novel objects are background", which is what BAM's base learners do and
# what DIaM's distillation relies on (notebook 04, section e); with `"ignore"` novel pixels give no gradient, so
# the model tends to call them whichever base class looks closest. `"drop"` removes training images, so there are fewer
# of them: compare the image counts printed under "The three policies on one training image".
# </details>
#
# **Exercise 2 · Read a figure.** In the training curves, is the validation mIoU still rising at the last logged
# step? What would you change to find out whether the model is under-trained, and where is it set?
#
# <details><summary>Hint</summary>
#
# Compare the last two logged mIoU values in the curves figure (and the printed table). `QUICK=True` trains only
# the head on cached frozen features; the iteration count is in `RECIPES["quick"]` of
# `fss_lab/experiments/base_model.py`, and `BaseModelConfig(..., overrides={"iterations": ...})` changes it.
# </details>
#
# **Exercise 3 · Implement a variant.** Set `CONTRASTIVE_WEIGHT = 0.1` (seed 002's pixel contrastive term) and
# compare per-class IoU with the plain cross-entropy run. Then write down, before looking at notebook 03, which
# score you expect the contrastive term to improve: base mIoU here, or novel mIoU after fine-tuning?
#
# <details><summary>Hint</summary>
#
# The report's claim is about the **novel** classes: a more clustered embedding should make the few support
# pixels of an unseen class easier to separate. Base mIoU may not move. Notebook 03 (a) measures both.
# </details>
#
# **Exercise 4 · The protocol matters.** In the first figure, count the pixels that each policy turns into 255,
# into 0, or removes. Which of the three conventions would make a base-class mIoU computed on val *higher* for the
# same network, and why is that not a fair comparison between papers?
#
# <details><summary>Hint</summary>
#
# The scoring here ignores novel pixels, so it is the same for all policies; papers differ in whether the
# background class counts in base mIoU (GFS-Seg: yes; DIaM: no). See the protocol card in `datasets/README.md`.
# </details>
