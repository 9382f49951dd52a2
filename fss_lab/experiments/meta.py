"""Meta-trained FSS models for notebooks: train once on base-class episodes, then reuse the checkpoint.

Notebooks 05 (attention / MM-Former), 06 (EFTNet) and 08 (benchmark) need the same episodically trained models
(the PFENet-style meta-learner, MM-Former's matching module). :func:`meta_train` names each checkpoint after
everything that defines the trained weights, so the second notebook that asks for the same model loads it in
seconds instead of training it again; a killed run resumes from its last checkpoint
(:func:`fss_lab.engine.episodic.train_episodic` does the work).

The QUICK recipes (:data:`QUICK_RECIPES`) are sized for a 2-core CPU in CI (the PFENet-style learner: 800 steps of 8
episodes, 80 s on one thread, 36 % novel-class mIoU on the default data, where the prototype baseline has about 25 %;
at lr 1e-3 and 4 episodes per step it needed 1,600 steps for the same; CamVid has per-dataset entries, 400 steps
with the FEM on s16_expanded: 9.7 %, where the prototype baseline has 10.6 % on s16: see the comment at the entry);
the full ones follow the papers (PFENet: SGD lr 0.0025, batch 4, 200 epochs; MM-Former: AdamW lr 1e-4).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..engine.episodic import EpisodicConfig, EpisodicHistory, train_episodic
from ..methods.base import Method
from .fss import FSSExperiment

#: Episodic recipes by learner name and scale (``EpisodicConfig`` fields; ``iterations`` is the number of steps).
#: A ``(learner, dataset)`` key holds that dataset's changes to the learner's entry (:func:`episodic_recipe`).
QUICK_RECIPES: dict[str, dict[str, Any]] = {
    "pfenet-meta": dict(iterations=800, batch_episodes=8, optimizer="adamw", lr=2e-3, weight_decay=0.01),
    "mmformer": dict(iterations=150, batch_episodes=4, optimizer="adamw", lr=1e-3, weight_decay=0.05),
    # CamVid (fold 0: base = sky, building, pole, road, pavement, tree; novel = the small "things"): 400 steps, with
    # the FEM on the wider s16_expanded level (QUICK_LEARNERS). CamVid's base classes are big stuff regions (a base
    # query is 16-32 % foreground, a novel one 1.5-5 %) and the default learner (s16, 800 steps) maps a novel
    # prototype onto a base class (70 % of its foreground on novel episodes is building): 2.9 % novel mIoU, 25 min
    # under load; at 200 steps 4.8 %. On s16_expanded it needs 240+ steps to predict any foreground and peaks
    # near 400 (9.7 %; 800 steps: 7.0 %, the base classes fitted better). Training-free on the same 40 episodes:
    # prototype 10.6 % (s16) / 15.3 % (s16_expanded), PFENet prior 5.3 %. A query-prototype cosine channel in the
    # FEM, a narrower FEM (32 channels, 1 bin), weight decay 0.2 and lr 5e-4 / 5e-3 did not help (0.0-3.8 %).
    ("pfenet-meta", "camvid"): dict(iterations=400),
    # CamVid's MM-Former stage 2: 60 steps (CI time: its SLIC proposals and episodes cost 2-3x the default data's)
    ("mmformer", "camvid"): dict(iterations=60),
}
FULL_RECIPES: dict[str, dict[str, Any]] = {
    "pfenet-meta": dict(iterations=20000, batch_episodes=4, optimizer="sgd", lr=0.0025, weight_decay=1e-4),
    "mmformer": dict(iterations=10000, batch_episodes=4, optimizer="adamw", lr=1e-4, weight_decay=0.05),  # paper, PASCAL
}

#: Learner settings by name and scale (the QUICK ones: narrow networks a CPU trains in about a minute); a
#: ``(learner, dataset)`` key holds that dataset's changes (:func:`meta_learner`).
QUICK_LEARNERS: dict[str, dict[str, Any]] = {
    "pfenet-meta": dict(reduce_dim=64, bins=(1.0, 0.5)),
    "mmformer": dict(levels=("s32", "s16"), hidden_dim=64, nhead=4, dim_feedforward=128, num_layers=1),
    ("pfenet-meta", "camvid"): dict(fem_level="s16_expanded"),  # see the CamVid recipe in QUICK_RECIPES
}
FULL_LEARNERS: dict[str, dict[str, Any]] = {
    "pfenet-meta": dict(reduce_dim=256),
    "mmformer": dict(hidden_dim=256, nhead=4, dim_feedforward=512, num_layers=2),
}


def _entry(table: dict, name: str, dataset: str | None) -> dict[str, Any]:
    """``table[name]`` updated with ``table[(name, dataset)]`` where that per-dataset entry exists."""
    return {**table[name], **table.get((name, dataset), {})} if dataset else dict(table[name])


def episodic_recipe(learner: Method | str, quick: bool = True, dataset: str | None = None,
                    **overrides) -> EpisodicConfig:
    """The :class:`~fss_lab.engine.episodic.EpisodicConfig` of a learner's QUICK or full recipe.

    Args:
        learner: a learner or its registered name (``"pfenet-meta"``, ``"mmformer"``).
        quick: the CPU-sized recipe (:data:`QUICK_RECIPES`) or the paper's (:data:`FULL_RECIPES`).
        dataset: the dataset's name; its per-dataset entry (``table[(name, dataset)]``, e.g. CamVid's QUICK
            PFENet-style recipe) updates the learner's entry. ``None``: the learner's entry alone.
        overrides: ``EpisodicConfig`` fields to change (``device``, ``seed``, ``iterations``...).

    Raises:
        KeyError: a learner with no recipe (lists those that have one).
    """
    name = learner if isinstance(learner, str) else learner.name
    table = QUICK_RECIPES if quick else FULL_RECIPES
    if name not in table:
        raise KeyError(f"no episodic recipe for {name!r}; recipes exist for "
                       f"{sorted(k for k in table if isinstance(k, str))} (or build an EpisodicConfig yourself)")
    return EpisodicConfig(**{**_entry(table, name, dataset), **overrides})


def _simple(value: Any) -> Any:
    """``value`` if it is JSON-able data (numbers, strings, tuples/lists/dicts of them), else ``None``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = [_simple(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if isinstance(value, dict):
        items = {str(k): _simple(v) for k, v in value.items()}
        return None if any(items[str(k)] is None and v is not None for k, v in value.items()) else items
    return None


def learner_settings(learner: Method) -> dict[str, Any]:
    """The learner's constructor-level settings: its public attributes that are plain data (levels, widths,
    bins, weights, seed...); modules, tensors and fitted state are left out."""
    out = {"name": learner.name}
    for key, value in sorted(vars(learner).items()):
        if key.startswith("_") or key in ("network", "inputs", "task"):
            continue
        simple = _simple(value)
        if simple is not None or value is None:
            out[key] = simple
    return out


def meta_model_key(exp: FSSExperiment, learner: Method, config: EpisodicConfig) -> dict[str, Any]:
    """Everything that defines the meta-trained weights, JSON-able: the experiment's data (dataset, resolved data
    root, dataset options, fold, image size, transform, backbone), the learner's settings and the recipe
    (``device`` left out: it does not change the model)."""
    cfg = exp.config
    root = None if cfg.data_root is None else str(Path(cfg.data_root).expanduser().resolve())
    recipe = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("device", "eval_every",
                                                                                "checkpoint_every")}
    return dict(dataset=cfg.dataset, data_root=root, dataset_kwargs=_simple(cfg.dataset_kwargs), fold=cfg.fold,
                image_size=list(cfg.image_size), transform=cfg.transform_mode, backbone=cfg.backbone,
                learner=learner_settings(learner), recipe=recipe)


def meta_checkpoint_path(exp: FSSExperiment, learner: Method, config: EpisodicConfig,
                         cache_dir: str | Path = "results/meta_models") -> Path:
    """``<cache_dir>/<learner>_<dataset>_fold<f>_<backbone>_<steps>it_<hash>.pt`` (hash: 8 hex digits of SHA-256 over
    :func:`meta_model_key`)."""
    key = json.dumps(meta_model_key(exp, learner, config), sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    cfg = exp.config
    return Path(cache_dir) / f"{learner.name}_{cfg.dataset}_fold{cfg.fold}_{cfg.backbone}_{config.iterations}it_{digest}.pt"


def meta_train(exp: FSSExperiment, learner: Method, config: EpisodicConfig, *,
               cache_dir: str | Path = "results/meta_models", validation_shots: int | None = 1,
               resume: bool = True, progress: bool = True) -> EpisodicHistory:
    """Meta-train ``learner`` (in place) on the base-class episodes of the experiment's fold, or load the finished
    checkpoint of the same model (:func:`meta_checkpoint_path`).

    Training uses the experiment's training split and frozen features (one cache per level the learner reads);
    validation (every ``iterations // 5`` steps and at the end) scores FSS mIoU on the experiment's novel-class
    episodes of the validation split.

    Args:
        exp: the :class:`~fss_lab.experiments.fss.FSSExperiment` (dataset, fold, backbone, transform).
        learner: an episodic method (``episodic_training = True``), e.g.
            :class:`~fss_lab.methods.pfenet.PFENetMetaLearner` or :class:`~fss_lab.methods.mmformer.MMFormer`.
        config: the recipe (:func:`episodic_recipe`).
        cache_dir: where checkpoints live (git-ignored ``results/meta_models`` beside the notebooks).
        validation_shots: K of the validation episodes (``None``: no validation).
        resume / progress: as :func:`~fss_lab.engine.episodic.train_episodic`.

    Returns:
        :class:`~fss_lab.engine.episodic.EpisodicHistory` (a loaded checkpoint returns its saved history; its
        ``seconds`` are those of the run that trained it).

    Raises:
        ValueError / CheckpointError / DatasetError: as :func:`~fss_lab.engine.episodic.train_episodic`.
    """
    levels = tuple(learner.feature_levels)
    train_items, train_features = exp.train_split(levels)
    val = {}
    if validation_shots is not None:
        q_caches, s_caches = exp.level_caches(levels)
        val = dict(val_episodes=exp.episodes(validation_shots), val_items=exp.query_items, val_features=q_caches,
                   val_support_items=exp.support_items, val_support_features=s_caches)
        if config.eval_every is None:
            config = dataclasses.replace(config, eval_every=max(1, config.iterations // 5))
    path = meta_checkpoint_path(exp, learner, config, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if config.device == "auto" and exp.device.type != "cpu":
        config = dataclasses.replace(config, device=str(exp.device))
    with torch.random.fork_rng(devices=[]):
        return train_episodic(learner, config, fold=exp.config.fold, train_items=train_items,
                              train_features=train_features, checkpoint_path=path, resume=resume, progress=progress,
                              **val)


def meta_learner(name: str, exp: FSSExperiment, *, quick: bool = True, recipe: dict | None = None,
                 cache_dir: str | Path = "results/meta_models", progress: bool = True, **settings):
    """The registered episodic learner ``name`` with the QUICK or full settings (:data:`QUICK_LEARNERS`), meta-trained
    on ``exp``'s base classes with :func:`episodic_recipe` or loaded from the checkpoint a previous notebook wrote.

    This is the one call notebooks 05, 06 and 08 make, so the same (name, data, settings, recipe) trains once::

        learner, history = meta_learner("pfenet-meta", exp, quick=QUICK)

    Args:
        name: ``"pfenet-meta"`` or ``"mmformer"`` (any learner with a recipe).
        exp: the experiment (its backbone is shared with learners that take ``backbone=``).
        quick: CPU-sized settings and recipe, or the papers'; a per-dataset entry of the tables
            (``(name, exp.config.dataset)``, e.g. CamVid's) updates the learner's entry.
        recipe: ``EpisodicConfig`` fields overriding the recipe (``device``, ``iterations``...).
        cache_dir / progress: as :func:`meta_train`.
        settings: constructor keywords overriding :data:`QUICK_LEARNERS` / :data:`FULL_LEARNERS`.

    Returns:
        ``(learner, history)``: the trained :class:`~fss_lab.methods.base.Method` (eval mode) and its
        :class:`~fss_lab.engine.episodic.EpisodicHistory`.

    Raises:
        KeyError: an unknown learner or one without a recipe. TypeError: a keyword the learner does not take.
    """
    from ..methods.pfenet import _PriorLevels
    from ..methods.registry import create_method, method_class
    table = QUICK_LEARNERS if quick else FULL_LEARNERS
    dataset = exp.config.dataset
    kwargs = {**(_entry(table, name, dataset) if name in table else {}), **settings}
    if issubclass(method_class(name), _PriorLevels):  # learners with PFENet's frozen layer-3 -> layer-4 path
        kwargs.setdefault("backbone", exp.backbone)
    learner = create_method(name, **kwargs)
    config = episodic_recipe(name, quick, dataset, **{"device": exp.config.device, **(recipe or {})})
    history = meta_train(exp, learner, config, cache_dir=cache_dir, progress=progress)
    return learner, history


__all__ = ["QUICK_LEARNERS", "FULL_LEARNERS", "meta_learner", "QUICK_RECIPES", "FULL_RECIPES", "episodic_recipe", "learner_settings", "meta_model_key",
           "meta_checkpoint_path", "meta_train"]
