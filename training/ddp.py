"""Distributed data-parallel helpers: one process per device, started by ``torchrun``.

``torchrun --nproc-per-node N -m edgereg.cli.main train DATA --out RUN`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the process group (gloo on CPU, nccl on CUDA). Without them it
returns a single-process context and every helper here is a no-op, so the trainer has one code path.

Every rank loads the same dataset and split (both are deterministic), trains on its own shard of
each epoch's shuffled indices, and evaluates the whole validation set (identical weights give
identical numbers); only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from edgereg.errors import EdgeregError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0  # global index of this process; rank 0 writes files and prints
    world_size: int = 1  # number of processes sharing each batch
    local_rank: int = 0  # index on this node: picks the CUDA device
    local_world_size: int = 1  # processes on this node: they share its CPU cores
    device: str = "cpu"  # "cpu" or "cuda:<local_rank>"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise EdgeregError(f"environment variable {name}={text!r} must be an integer (torchrun sets it); "
                           "unset it or launch with torchrun") from None


def resolve_device(device: str = "auto") -> str:
    """The device of a --device choice: "cuda" or "cpu" ("auto": CUDA when torch sees one)."""
    if device not in ("auto", "cpu", "cuda"):
        raise EdgeregError(f"--device {device!r} is unknown; expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeregError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def setup(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment, or run alone.

    Args:
        device: "auto" (CUDA when available), "cpu" or "cuda".

    Returns:
        The context; with ``WORLD_SIZE`` > 1 the default process group is initialized.
    """
    use_cuda = resolve_device(device) == "cuda"
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    device_name = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank,
                       local_world_size=local_world_size, device=device_name)


def teardown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def threads_per_process(ctx: DistContext, requested: int | None = None) -> int:
    """CPU threads for this process: ``requested``, else the node's cores split between its processes."""
    if requested:
        return int(requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, ctx.local_world_size))


def shard(indices: np.ndarray, ctx: DistContext) -> np.ndarray:
    """This rank's part of an epoch's (already shuffled) indices.

    Like ``DistributedSampler``: the list is padded by wrapping around to a multiple of the world
    size, so every rank runs the same number of steps (DDP would hang otherwise).

    Args:
        indices: (N,) int, the same on every rank.

    Returns:
        (ceil(N / world_size),) int.
    """
    if not ctx.distributed:
        return indices
    per_rank = -(-len(indices) // ctx.world_size)
    padded = np.resize(indices, per_rank * ctx.world_size)  # np.resize repeats from the start
    return padded[ctx.rank::ctx.world_size]


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` in a multi-process job, else the module itself."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    """The mean of a float over all ranks (itself for a single process)."""
    if not ctx.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / ctx.world_size


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps stop decisions in step)."""
    if not ctx.distributed:
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(ctx))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's ``value`` on every rank."""
    if not ctx.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(ctx))
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (e.g. rank 0 finished writing a file the others read)."""
    if ctx.distributed:
        dist.barrier()


def _comm_device(ctx: DistContext) -> str:
    """nccl needs CUDA tensors; gloo takes CPU tensors."""
    return ctx.device if ctx.device.startswith("cuda") else "cpu"
