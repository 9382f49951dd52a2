"""Command-line base training, one process or several under torchrun.

    python -m fss_lab.engine.train_cli config.json
    python -m torch.distributed.run --nproc_per_node 2 -m fss_lab.engine.train_cli config.yaml --set train.lr=0.02

The config (JSON, or YAML when PyYAML is installed) holds::

    dataset: synthetic            # fss_lab.data.create_dataset name
    data_root: null               # its root (not needed by "synthetic")
    dataset_kwargs: {}            # for both splits; train_dataset_kwargs / val_dataset_kwargs add per split
    train_split: train
    val_split: val                # null: no validation
    fold: 0
    novel_policy: ignore          # ignore | background | drop
    min_base_area: 1
    image_size: [192, 192]
    augment: true
    model: {backbone: efficientnet_lite0, weights: imagenet, bottleneck_dim: null, freeze_backbone: false}
    train: {iterations: 300, batch_size: 8, ...}   # TrainConfig fields
    checkpoint: runs/fold0.pt
    resume: true
    history_json: null            # also write the TrainHistory as JSON (rank 0)

Rank 0 writes checkpoints and shows progress; every rank prints nothing else except errors. The last line of
rank 0's output is a JSON summary (``{"iterations": ..., "base_miou": ...}``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import logging
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import create_dataset
from ..data.base import DatasetError
from ..data.base_training import BaseTrainingSet
from ..data.class_maps import GFSSClassMap
from ..data.transforms import PairTransform
from ..models.pspnet import PSPNET_ARGUMENTS, PSPNet
from .distributed import cleanup_distributed, init_distributed
from .train import TrainConfig, train_base

DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic", "data_root": None, "dataset_kwargs": {}, "train_dataset_kwargs": {},
    "val_dataset_kwargs": {}, "train_split": "train", "val_split": "val", "fold": 0, "novel_policy": "ignore",
    "min_base_area": 1, "image_size": [192, 192], "augment": True, "model": {}, "train": {}, "checkpoint": None,
    "resume": True, "history_json": None, "backend": None,
}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Read a JSON/YAML config, fill :data:`DEFAULTS`, apply ``key.sub=value`` overrides (values parsed as JSON).

    Raises:
        DatasetError: missing or malformed file, an unknown key at any level or a value of the wrong type, after the
            overrides are applied (see :func:`check_config`), or a malformed override (names the key and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional dependency

            cfg = yaml.safe_load(text) or {}
        else:
            cfg = json.loads(text)
    except Exception as exc:  # json / yaml errors
        raise DatasetError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(cfg, dict):
        raise DatasetError(f"config file {path} must hold a mapping of keys, got {type(cfg).__name__}")
    merged = copy.deepcopy({**DEFAULTS, **cfg})  # overrides must never write into DEFAULTS' nested sections
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DatasetError(f"config {path}: --set {item!r}: expected key=value, e.g. train.lr=0.02")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = merged
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:depth + 1])
                raise DatasetError(f"config {path}: --set {item!r}: {section} is not a section (it holds {node!r}); "
                                   f"set it directly, e.g. --set {section}=...")
        node[leaf] = value
    check_config(merged, f"config {path}" + (f" with --set {list(overrides)}" if overrides else ""))
    return merged


def _allowed_types(hint: Any) -> tuple[type, ...] | None:
    """Python types a TrainConfig field accepts (``None``: anything, e.g. a callable hook)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_allowed_types(a) for a in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if hint is type(None):
        return (type(None),)
    if hint is float:
        return (int, float)
    if hint in (int, bool, str):
        return (hint,)
    return None


def _type_error(where: str, key: str, value: Any, allowed: tuple[type, ...]) -> str | None:
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if ok:
        return None
    names = sorted({t.__name__ for t in allowed if t is not type(None)}) + ["None"] * (type(None) in allowed)
    names = " or ".join(names)
    shown = f"the string {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
    return (f"{where}: {key} must be {names}, got {shown}; fix the value, e.g. --set {key}=<{names.split()[0]}> "
            "(--set values are parsed as JSON: 100, 0.02, true, null, [1, 2], \"text\")")


def check_config(cfg: dict, where: str = "config") -> None:
    """Check a merged config (after ``--set`` overrides): known keys at every level, value types.

    Top-level keys must be :data:`DEFAULTS` keys; ``train`` keys :class:`TrainConfig` fields with their types
    (``int`` fields take ints, ``float`` fields numbers, ``bool`` fields ``true``/``false``, ``X | None`` also
    ``null``); ``model`` keys :class:`PSPNet` arguments; ``image_size`` two ints; the ``*_kwargs`` sections mappings.

    Raises:
        DatasetError: naming ``where``, the key (e.g. ``train.iterations``), the value and the valid keys / types.
    """
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        close = {k: difflib.get_close_matches(k, DEFAULTS, n=1) for k in unknown}
        hints = "".join(f" ({k}: did you mean {c[0]!r}?)" for k, c in close.items() if c)
        raise DatasetError(f"{where}: unknown keys {unknown}{hints}; valid keys: {sorted(DEFAULTS)}")
    for section in ("model", "train", "dataset_kwargs", "train_dataset_kwargs", "val_dataset_kwargs"):
        if not isinstance(cfg[section], dict):
            raise DatasetError(f"{where}: {section} must be a mapping of keys, got {cfg[section]!r}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    bad = sorted(set(cfg["train"]) - set(fields))
    if bad:
        raise DatasetError(f"{where}: unknown train keys {bad}{_did_you_mean(bad, fields)}; valid train keys "
                           f"(TrainConfig fields): {sorted(fields)}")
    for key, value in cfg["train"].items():
        allowed = _allowed_types(hints[key])
        msg = _type_error(where, f"train.{key}", value, allowed) if allowed is not None else None
        if msg:
            raise DatasetError(msg)
    model_args = list(PSPNET_ARGUMENTS)
    bad = sorted(set(cfg["model"]) - set(model_args))
    if bad:
        raise DatasetError(f"{where}: unknown model keys {bad}{_did_you_mean(bad, model_args)}; valid model keys "
                           f"(PSPNet arguments; num_classes is set from the fold): {sorted(model_args)}")
    size = cfg["image_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(type(v) is int and v >= 8 for v in size)):
        raise DatasetError(f"{where}: image_size must be [H, W], two ints >= 8, got {size!r}; e.g. "
                           "--set image_size=[192,192]")
    for key in ("fold", "min_base_area"):
        msg = _type_error(where, key, cfg[key], (int,))
        if msg:
            raise DatasetError(msg)
    for key in ("augment", "resume"):
        msg = _type_error(where, key, cfg[key], (bool,))
        if msg:
            raise DatasetError(msg)


def _did_you_mean(bad: list[str], valid) -> str:
    close = {k: difflib.get_close_matches(k, list(valid), n=1) for k in bad}
    return "".join(f" ({k}: did you mean {c[0]!r}?)" for k, c in close.items() if c)


def build_run(cfg: dict) -> tuple[PSPNet, BaseTrainingSet, BaseTrainingSet | None, TrainConfig]:
    """The model, training set, validation set and :class:`TrainConfig` a config describes."""
    common = dict(cfg["dataset_kwargs"])
    train_ds = create_dataset(cfg["dataset"], cfg["data_root"], split=cfg["train_split"],
                              **common, **cfg["train_dataset_kwargs"])
    class_map = GFSSClassMap.from_fold(train_ds, int(cfg["fold"]))
    model = PSPNet(num_classes=1 + class_map.num_base, **cfg["model"])
    mean, std = model.preprocessing.mean, model.preprocessing.std
    transform = PairTransform(size=tuple(cfg["image_size"]), mean=mean, std=std)
    kw = {"class_map": class_map, "novel_policy": cfg["novel_policy"], "transform": transform,
          "min_base_area": int(cfg["min_base_area"])}
    seed = int(cfg["train"].get("seed", 0))
    train_set = BaseTrainingSet(train_ds, augment=bool(cfg["augment"]), seed=seed, **kw)
    val_set = None
    if cfg["val_split"]:
        val_ds = create_dataset(cfg["dataset"], cfg["data_root"], split=cfg["val_split"],
                                **common, **cfg["val_dataset_kwargs"])
        val_set = BaseTrainingSet(val_ds, augment=False, **{**kw, "novel_policy": "ignore"})
    return model, train_set, val_set, TrainConfig(**cfg["train"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (also under ``torchrun``): parse ``argv``, train, write the checkpoint; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fss_lab.engine.train_cli", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="JSON or YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.iterations=100 (repeatable)")
    parser.add_argument("--save-rank-states", metavar="DIR", default=None,
                        help="each rank writes its final weights to DIR/rank<r>.pt (to check DDP consistency)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    ctx = init_distributed(cfg["backend"], cfg["train"].get("device", "auto"))
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[rank {ctx.rank}] %(message)s", stream=sys.stderr)
    try:
        torch.manual_seed(int(cfg["train"].get("seed", 0)))  # same initial weights on every rank
        model, train_set, val_set, config = build_run(cfg)
        if ctx.is_main:
            logging.getLogger("fss_lab.engine").info("%s; %d processes on %s", train_set.describe(),
                                                     ctx.world_size, ctx.device)
        history = train_base(model, train_set, val_set, config, checkpoint_path=cfg["checkpoint"],
                             resume=bool(cfg["resume"]), progress=not args.no_progress, ctx=ctx)
        if args.save_rank_states:
            out = Path(args.save_rank_states)
            out.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / f"rank{ctx.rank}.pt")
        if ctx.is_main:
            if cfg["history_json"]:
                Path(cfg["history_json"]).write_text(json.dumps(history.to_dict(), default=str))
            miou = history.last_miou
            print(json.dumps({"iterations": history.steps[-1]["iteration"] if history.steps else 0,
                              "world_size": ctx.world_size,
                              "base_miou": None if math.isnan(miou) else miou,
                              "final_loss": history.steps[-1]["loss"] if history.steps else None}), flush=True)
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
