"""Atomic, checksummed, weights-only training checkpoints.

A checkpoint is written to a temporary file in the target's folder, flushed and ``fsync``-ed, then moved over the
target with ``os.replace`` (atomic on POSIX and Windows) and the folder is ``fsync``-ed: a run killed at any moment
leaves either the previous checkpoint or the new one, never a half-written file under the checkpoint's name.

File layout (format 2): a fixed-size header ``b"FSSLAB-CKPT 2\\n"`` + ``b"sha256=<64 hex digits>\\n"``, then the
``torch.save`` zip archive. The SHA-256 is of that archive: a flipped or missing byte is reported, not loaded.
Everything is read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings and plain containers only
(RNG states are stored as tensors and lists), so a file crafted to run code when unpickled is refused, never run.

Temporary files are named ``.tmp-<name>.<host>.<pid>.<random>``: :func:`stale_temp_files` lists only those whose
writer is dead (same host, no such process), never the in-progress file of a live run.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import random
import re
import secrets
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn

log = logging.getLogger("fss_lab.engine")

CHECKPOINT_FORMAT = 2
TMP_PREFIX = ".tmp-"
#: First bytes of every checkpoint file (format 2), followed by ``sha256=<hex>\n`` and the torch.save archive.
MAGIC = b"FSSLAB-CKPT 2\n"
_HASH_LINE = len(b"sha256=") + 64 + 1
HEADER_SIZE = len(MAGIC) + _HASH_LINE


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model/optimizer; the message names the file."""


def rng_states() -> dict[str, Any]:
    """The global RNG states: Python ``random``, NumPy, torch CPU and (when present) every CUDA device.

    Returns:
        ``{"python": [version, [625 ints], gauss_next], "numpy": {"bit_generator": str, "keys": int64 tensor [624],
        "pos": int, "has_gauss": int, "cached_gaussian": float}, "torch": uint8 tensor, "cuda": [uint8 tensors]}``:
        only tensors, lists, numbers and strings, so a checkpoint holding them loads with ``weights_only=True``.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": [int(version), [int(v) for v in internal], gauss],
              "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                        "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_states` (CUDA states only when CUDA is available here)."""
    version, internal, gauss = states["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = states["numpy"]
    keys = npst["keys"].numpy() if isinstance(npst["keys"], torch.Tensor) else np.asarray(npst["keys"])
    np.random.set_state((npst["bit_generator"], keys.astype(np.uint32), int(npst["pos"]), int(npst["has_gauss"]),
                         float(npst["cached_gaussian"])))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_path(path: Path) -> Path:
    """``.tmp-<name>.<host>.<pid>.<random>`` beside ``path``: the tag tells others whether the writer is alive."""
    return path.parent / f"{TMP_PREFIX}{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}"


def atomic_save(obj: Any, path: str | Path, *, checksum: bool = False) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (owner-tagged temp file in the same folder + fsync +
    ``os.replace``).

    Args:
        obj: what to save.
        path: the target file (its folder is created).
        checksum: prepend the checkpoint header (:data:`MAGIC` + SHA-256 of the archive; see the module docstring).
            Such files are read by :func:`read_checkpoint`, not by a plain ``torch.load``.

    Raises:
        OSError: the folder is not writable (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            if checksum:
                fh.write(b"\0" * HEADER_SIZE)  # placeholder; the real header is written once the hash is known
            torch.save(obj, fh)
            fh.flush()
            if checksum:
                digest = hashlib.sha256()
                with open(tmp, "rb") as rd:
                    rd.seek(HEADER_SIZE)
                    for block in iter(lambda: rd.read(1 << 20), b""):
                        digest.update(block)
                fh.seek(0)
                fh.write(MAGIC + b"sha256=" + digest.hexdigest().encode() + b"\n")
                fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # an ordinary readable checkpoint file
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process) or cannot tell: keep its file
    return True


def temp_file_owner(tmp: str | Path) -> tuple[str, int] | None:
    """``(host, pid)`` of the writer named in a temporary file's tag, or ``None`` for an untagged (legacy) name."""
    parts = Path(tmp).name.rsplit(".", 3)
    if len(parts) == 4 and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


def stale_temp_files(path: str | Path) -> list[Path]:
    """Leftover temporary files of ``path`` whose writer is dead (a run killed while writing): safe to delete.

    A file whose tag names a live process on this host, or another host (its writer cannot be checked from here),
    is not listed: it may be the in-progress checkpoint of a running job. Untagged names (older fss_lab) are.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = []
    for tmp in sorted(path.parent.glob(f"{TMP_PREFIX}{path.name}.*")):
        owner = temp_file_owner(tmp)
        if owner is None or (owner[0] == _host() and not _pid_alive(owner[1])):
            stale.append(tmp)
    return stale


def checkpoint_lock(path: str | Path, timeout: float | None = None) -> FileLock:
    """Acquire the inter-process lock of checkpoint ``path`` (``<path>.lock``, a :class:`filelock.FileLock`).

    Held by :func:`~fss_lab.engine.train.train_base` for a whole run, so two runs training the same checkpoint
    (e.g. two notebooks needing the same cached base model) never write it at once: the second waits, then resumes
    from (or directly reuses) the first one's result. The OS releases the lock when its holder dies.

    Args:
        path: the checkpoint file. timeout: seconds to wait; ``None`` waits as long as it takes, ``0`` not at all.

    Returns:
        The acquired lock; call ``release()`` when done.

    Raises:
        CheckpointError: still locked by another run after ``timeout`` seconds (names the lock file and the fix).
    """
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout is not None and timeout <= 0:
            lock = None
        else:
            log.warning("%s is locked by another run; waiting for it to finish (its checkpoint is then reused)",
                        path)
            try:
                lock.acquire(timeout=-1 if timeout is None else timeout)
            except Timeout:
                lock = None
        if lock is None:
            raise CheckpointError(
                f"checkpoint {path} is being trained by another run (it holds {lock_path}); gave up after "
                f"{timeout or 0:g} s. Wait for that run to finish (its checkpoint is then reused), or use another "
                "checkpoint_path.") from None
    return lock


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None, iteration: int = 0, history: dict | None = None,
                    config: dict | None = None, extra: dict | None = None) -> Path:
    """Write a training checkpoint atomically, with the checksum header (see the module docstring).

    Contents: ``format``, ``model`` (state dict; a DDP wrapper is unwrapped), ``model_config`` (the model's
    ``config`` attribute when it has one, so :func:`~fss_lab.models.pspnet.build_pspnet` can rebuild it),
    ``optimizer``, ``scheduler``, ``scaler`` (AMP grad scaler) states, ``iteration`` (optimiser steps done),
    ``rng`` (:func:`rng_states`), ``history``, ``config`` and ``extra``. Everything must be tensors, numbers,
    strings, ``None`` or lists / tuples / dicts of them: other objects are written but :func:`read_checkpoint`
    refuses the file.

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
    return atomic_save(state, path, checksum=True)


def _payload(path: Path) -> bytes:
    """The verified torch.save archive of a format-2 checkpoint file."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        kind = ("a plain torch.save file (an older fss_lab checkpoint, format 1, or someone else's file)"
                if data[:2] == b"PK" else f"not an fss_lab checkpoint (it starts with {data[:16]!r})")
        raise CheckpointError(
            f"checkpoint {path} has no fss_lab checksum header: {kind}. fss_lab only loads checksummed, "
            "weights-only checkpoints (unpickling a foreign file can run code hidden in it). Delete the file to "
            "train again, or point to a checkpoint written by this version of fss_lab.")
    line = data[len(MAGIC):HEADER_SIZE]
    match = re.fullmatch(rb"sha256=([0-9a-f]{64})\n", line)
    if match is None:
        raise CheckpointError(f"checkpoint {path} has a damaged header ({line[:40]!r}); the file is corrupt. "
                              "Delete it to train from scratch, or point to another checkpoint.")
    payload = data[HEADER_SIZE:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != match.group(1).decode():
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated: it fails its checksum (SHA-256 {actual[:16]}... of "
            f"{len(payload)} bytes, header says {match.group(1).decode()[:16]}...; a flipped or lost byte). Delete it "
            "to train from scratch, or point to another checkpoint.")
    return payload


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint file written by :func:`save_checkpoint` (no model needed), always with
    ``torch.load(..., weights_only=True)`` after checking its SHA-256.

    Raises:
        FileNotFoundError: no file at ``path``. CheckpointError (the message names the file and the fix): no
            checksum header (older format or a foreign file), a checksum mismatch (corrupt), objects other than
            tensors / numbers / strings / plain containers (refused: unpickling them could run code), a truncated
            archive, or not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = _payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        detail = lines[0] if lines else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path}: fss_lab refuses to unpickle it ({detail}); it holds objects other than tensors, "
            "numbers, strings and plain containers, and unpickling them can run code hidden in the file. Do not "
            "load it with full unpickling (torch.load without weights_only); delete it, or re-save it with only "
            "tensors and plain data in 'extra'.") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, ImportError) as exc:
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
           "load_model_state", "load_pspnet", "rng_states", "set_rng_states", "stale_temp_files", "temp_file_owner",
           "CHECKPOINT_FORMAT", "MAGIC", "checkpoint_lock"]
