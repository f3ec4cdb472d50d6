"""What a DDP run needs beyond the single-process trainer: join, agree, and leave together.

Launched by ``torchrun``, every rank runs the same :class:`~shoestring.train.trainer.Trainer`;
this module holds the few places where ranks differ or must meet: the process group (gloo on
CPU, nccl on CUDA), each rank's device, the mean of a scalar across ranks, each rank's slice
of the validation set, and the barrier before the group is torn down. A single process
(``WORLD_SIZE`` unset or 1) passes through every function unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_mean",
    "init_distributed",
    "launched_distributed",
    "leave_group",
    "rank_device",
    "rank_slice",
    "wait_for_all",
]


@dataclass
class DistInfo:
    """This process's place in the run: how many ranks, which one, which local GPU."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """True under torchrun with more than one process (every rank must agree on the run path)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _wants_cuda(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if _wants_cuda(device_name) else "gloo")
    return DistInfo(world, rank, local)


def rank_device(device_name: str, info: DistInfo) -> str:
    """The device this rank trains on: its own GPU under DDP on CUDA, else as configured."""
    if info.enabled and _wants_cuda(device_name):
        return f"cuda:{info.local_rank}"
    return device_name


def all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    if not info.enabled:
        return value
    # on the rank's device: nccl reduces CUDA tensors only; fp64 keeps the sum exact enough
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)  # SUM by default; divided below
    return float(t.item()) / info.world_size


def rank_slice(
    batches: list[tuple[torch.Tensor, torch.Tensor]], info: DistInfo
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of each (inputs, targets) batch; empty slices are dropped.

    The validation set is defined by the global batch, so a DDP run and a single process at
    equal global batch evaluate exactly the same sequences; each rank takes a slice.
    """
    world, rank = info.world_size, info.rank
    mine = []
    for x, y in batches:
        per = -(-x.shape[0] // world)  # ceil: the last rank may get fewer rows, or none
        lo, hi = rank * per, (rank + 1) * per
        if x[lo:hi].shape[0]:  # evaluate weighs by rows, so an empty slice just drops out
            mine.append((x[lo:hi], y[lo:hi]))
    return mine


def wait_for_all(info: DistInfo) -> None:
    """Barrier before leaving: every rank waits until all (rank 0 included) are done.

    Leave together: a rank that tears gloo down while rank 0 is still writing ``model/`` can
    abort ("terminate called without an active exception", exit -6).
    """
    if info.enabled and dist.is_initialized():
        dist.barrier()


def leave_group(info: DistInfo) -> None:
    """Tear the process group down (a no-op in a single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
