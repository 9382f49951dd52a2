"""Multi-process helpers for ``torchrun``: process-group setup from its environment variables, sharding, reductions.

``torchrun --nproc_per_node N -m fss_lab.engine.train_cli config.json`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed` reads them and
joins the process group (``nccl`` on CUDA, ``gloo`` on CPU). Without those variables everything runs as one process
(:data:`SINGLE_PROCESS`), so the same code path serves a laptop, one GPU and several.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .device import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly one-process) run.

    Attributes:
        rank: global rank ``0..world_size-1``; local_rank: rank on this machine (picks the GPU).
        world_size: number of processes; device: this process's device; backend: ``"gloo"``, ``"nccl"`` or
        ``None`` (no process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        """True when a process group is active (``world_size > 1``)."""
        return self.world_size > 1 and self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes checkpoints and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op for one process)."""
        if self.is_distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes, returned on its original device (in place where possible).

        ``nccl`` needs CUDA tensors: the sum is done on :attr:`device` and copied back.
        """
        if not self.is_distributed:
            return tensor
        work = tensor.to(self.device) if self.backend == "nccl" else tensor
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device) if work is not tensor else tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` for one process); objects must be picklable."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running mean / var) over processes, in place.

        DDP keeps parameters identical but each rank updates BatchNorm statistics with its own batches; averaging
        them before validation, checkpoints and the end of training leaves every rank with the same model.
        """
        if not self.is_distributed:
            return
        for buf in module.buffers():
            if buf.is_floating_point():
                buf.copy_(self.all_reduce_sum(buf.detach().clone()) / self.world_size)

    def shard(self, n: int) -> list[int]:
        """This rank's share of ``range(n)`` (``rank, rank + W, ...``), no padding: each item seen once overall."""
        return list(range(self.rank, n, self.world_size))


SINGLE_PROCESS = DistributedContext()


def init_distributed(backend: str | None = None, device: str | torch.device = "auto") -> DistributedContext:
    """Join the process group described by torchrun's environment variables, or return a one-process context.

    Args:
        backend: ``None`` picks ``"nccl"`` when the device is CUDA, else ``"gloo"``.
        device: ``"auto"`` (CUDA ``cuda:LOCAL_RANK`` when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns:
        The :class:`DistributedContext` of this process.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` but ``RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` are missing (start the
            processes with torchrun), or more processes per node than GPUs with the nccl backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistributedContext(device=dev)
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {missing} are not set; start the processes with torchrun "
                           "(python -m torch.distributed.run --nproc_per_node N -m fss_lab.engine.train_cli ...)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                               "use --nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def cleanup_distributed() -> None:
    """Leave the process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistributedContext", "SINGLE_PROCESS", "init_distributed", "cleanup_distributed"]
