"""Device choice and seeding helpers (d2l's ``try_gpu`` habit; DIaM's restorable seed)."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA GPU if present, else the CPU; anything else is passed to ``torch.device``.

    Raises:
        ValueError: ``"cuda"`` requested on a machine without CUDA (says to use ``"auto"`` or ``"cpu"``).
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (library code itself takes explicit seeds)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Context manager: run a block under ``seed_everything(seed)`` and restore the previous RNG states."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
