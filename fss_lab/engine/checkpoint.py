"""Atomic, resumable training checkpoints.

A checkpoint is written to a temporary file in the target's folder, flushed and ``fsync``-ed, then moved over the
target with ``os.replace`` (atomic on POSIX and Windows) and the folder is ``fsync``-ed: a run killed at any moment
leaves either the previous checkpoint or the new one, never a half-written file under the checkpoint's name.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = 1
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model/optimizer; the message names the file."""


def rng_states() -> dict[str, Any]:
    """The global RNG states: Python ``random``, NumPy, torch CPU and (when present) every CUDA device."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_states` (CUDA states only when CUDA is available here)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file in the same folder + fsync + ``os.replace``).

    Raises:
        OSError: the folder is not writable (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; a checkpoint is an ordinary readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(path: str | Path) -> list[Path]:
    """Leftover temporary files of ``path`` (from a run killed while writing); safe to delete."""
    path = Path(path)
    return sorted(path.parent.glob(f"{TMP_PREFIX}{path.name}.*")) if path.parent.is_dir() else []


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None, iteration: int = 0, history: dict | None = None,
                    config: dict | None = None, extra: dict | None = None) -> Path:
    """Write a training checkpoint atomically.

    Contents: ``format``, ``model`` (state dict; a DDP wrapper is unwrapped), ``model_config`` (the model's
    ``config`` attribute when it has one, so :func:`~fss_lab.models.pspnet.build_pspnet` can rebuild it),
    ``optimizer``, ``scheduler``, ``scaler`` (AMP grad scaler) states, ``iteration`` (optimiser steps done),
    ``rng`` (:func:`rng_states`), ``history``, ``config`` and ``extra``.

    Returns:
        ``path`` as a :class:`Path`.
    """
    net = _unwrap(model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "model_config": getattr(net, "config", None),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "rng": rng_states(),
        "history": history,
        "config": config,
        "extra": extra or {},
    }
    return atomic_save(state, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint file written by :func:`save_checkpoint` (no model needed).

    Raises:
        FileNotFoundError: no file at ``path``. CheckpointError: the file is truncated, corrupt or not a
            checkpoint of this format (the message names the file and says to delete it or resume from another).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, ImportError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}). Delete it to train from "
            "scratch, or point to another checkpoint.") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise CheckpointError(
            f"{path} is not an fss_lab training checkpoint (format {CHECKPOINT_FORMAT}); it holds "
            f"{type(state).__name__} with keys {sorted(state)[:8] if isinstance(state, dict) else '-'}.")
    return state


def load_model_state(model: nn.Module, state_dict: dict, where: str | Path) -> None:
    """Load weights strictly, except that auxiliary-head keys (``aux.*``) may be missing or unexpected.

    (A model trained with a frozen backbone has no auxiliary head; the head is used only in training.)

    Raises:
        CheckpointError: other missing / unexpected keys or shape mismatches, naming ``where`` and the keys.
    """
    net = _unwrap(model)
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith("aux.")]
    unexpected = [k for k in state_dict if k not in own and not k.startswith("aux.")]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state_dict.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {where} does not fit this {type(net).__name__}: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]}, shape mismatches {shapes[:4]}. Build the model with the checkpoint's settings "
            "(its 'model_config': backbone, num_classes, bottleneck_dim, ...).")
    net.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
                    *, restore_rng: bool = False, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint and load it into the given objects.

    Args:
        path: the checkpoint file.
        model: receives the weights (see :func:`load_model_state`); a DDP wrapper is unwrapped.
        optimizer / scheduler / scaler: receive their saved states when given (and saved).
        restore_rng: also restore the global RNG states saved with it (exact resumption).
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict (``iteration``, ``history``, ``config``, ``model_config``, ...).

    Raises:
        FileNotFoundError: no file. CheckpointError: corrupt file, or a model/optimizer it does not fit
            (names the file).
    """
    state = read_checkpoint(path, map_location)
    if model is not None:
        load_model_state(model, state["model"], path)
    try:
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: optimizer/scheduler state does not fit ({exc}); it was saved for other "
            "parameters. Train from scratch (resume=False) or use matching settings.") from exc
    if restore_rng and state.get("rng") is not None:
        set_rng_states(state["rng"])
    return state


def load_pspnet(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the saved :class:`~fss_lab.models.pspnet.PSPNet` (random backbone init, then the saved weights).

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: the checkpoint has no ``model_config`` or does not fit it.
    """
    from ..models.pspnet import build_pspnet

    state = read_checkpoint(path, map_location)
    if not state.get("model_config"):
        raise CheckpointError(f"checkpoint {path} has no model_config; build the model yourself and use "
                              "load_checkpoint(path, model)")
    model = build_pspnet(state["model_config"], weights=None)
    load_model_state(model, state["model"], path)
    return model.eval()


__all__ = ["CheckpointError", "atomic_save", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "load_model_state", "load_pspnet", "rng_states", "set_rng_states", "stale_temp_files"]
