"""What a command needs to run as N ranks under ``torchrun``: join, split, agree, gather, leave.

Why one module below every command: ``train``, ``grpo``, ``progressive``, ``bench`` and
``generate`` all run under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA) with no change to
the command or its config, and they need the same few meeting points - the process group,
each rank's device and threads, a split of the work that keeps GRPO groups whole, sums and
means across ranks, the records of every rank back in one order on rank 0, and the barrier
before the group is torn down. A single process (``WORLD_SIZE`` unset or 1) passes through
every function unchanged, so commands call them unconditionally.

Failure policy (docs/distributed.md): a rank that raises exits non-zero and ``torchrun``
stops the other workers of its node; a peer whose process is gone makes gloo's next
collective fail at once on the survivors; a peer that is alive but stuck (a deadlock, a rank
on another code path) fails every collective after ``SHOESTRING_DIST_TIMEOUT`` seconds
(:data:`DEFAULT_TIMEOUT_S` unless set) instead of torch's 30 minutes. No run hangs forever.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from shoestring.errors import UserError
from shoestring.runtime import physical_cores

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistInfo",
    "all_gather",
    "all_gather_objects",
    "all_mean",
    "all_sum",
    "all_sum_grads",
    "broadcast_from_main",
    "command_group",
    "decided_by_main",
    "gather_ordered",
    "init_distributed",
    "is_main_process",
    "launched_distributed",
    "leave_group",
    "rank_device",
    "rank_slice",
    "rank_threads",
    "refuse_distributed",
    "shard",
    "shard_positions",
    "timeout_seconds",
    "wait_for_all",
]

T = TypeVar("T")

#: The environment variable that sets how long a collective waits for a stuck peer (seconds).
TIMEOUT_ENV = "SHOESTRING_DIST_TIMEOUT"
#: Ten minutes: longer than any skew between ranks of one step (a 0.5B GRPO step on a CPU
#: takes a minute or two), far shorter than torch's default of 30.
DEFAULT_TIMEOUT_S = 600


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


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a torchrun job: the one that prints what
    a command prints once (the run directory's path, a results table)."""
    return int(os.environ.get("RANK", "0")) == 0


def refuse_distributed(what: str) -> None:
    """Stop at once, in one line, where ``what`` cannot be split over ranks but was launched
    by torchrun with several (e.g. ``refuse_distributed("train.trainer=hybrid")``)."""
    if launched_distributed():
        raise UserError(
            f"{what} runs in a single process, but torchrun started "
            f"{os.environ['WORLD_SIZE']}; launch it without torchrun (or --nproc_per_node=1)"
        )


def timeout_seconds() -> int:
    """How long a collective waits for a stuck peer: ``SHOESTRING_DIST_TIMEOUT`` or the default."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(
            f"{TIMEOUT_ENV}={raw!r} is not a positive whole number of seconds; set e.g. "
            f"{TIMEOUT_ENV}={DEFAULT_TIMEOUT_S} or unset it"
        )
    return value


def _wants_cuda(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA).

    On CUDA the rank's own GPU becomes the current device first: nccl and the object
    collectives below address "the current device".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = _wants_cuda(device_name)
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_seconds())
        )
    return DistInfo(world, rank, local)


@contextlib.contextmanager
def command_group(device_name: str) -> Iterator[DistInfo]:
    """A command's time in torchrun's process group: join it (a no-op in one process), and
    after a run that ended well wait for every rank before leaving (rank 0 may still be
    writing). A caller that joined already - a curriculum running GRPO stages, a script running
    several commands in one launch - stays in the group: only the joiner leaves it, since gloo
    cannot reliably join again through the same launcher's store."""
    joined = launched_distributed() and not dist.is_initialized()
    info = init_distributed(device_name)
    try:
        yield info
        wait_for_all(info)
    finally:
        if joined:
            leave_group(info)


def decided_by_main(decide: Callable[[], T], info: DistInfo) -> T:
    """``decide()`` on rank 0 and its value on every rank (a new run directory's name, what a
    killed attempt left). A :class:`UserError` rank 0 raises is raised on every rank with the
    same line, so no rank is left waiting for a value that never comes."""
    if not info.enabled:
        return decide()
    value, refusal = None, None
    if info.is_main:
        try:
            value = decide()
        except UserError as exc:
            refusal = str(exc)
    value, refusal = broadcast_from_main((value, refusal), info)
    if refusal is not None:
        raise UserError(refusal)
    return value  # type: ignore[return-value]


def rank_device(device_name: str, info: DistInfo) -> str:
    """The device this rank runs on: its own GPU under DDP on CUDA, else as configured."""
    if info.enabled and _wants_cuda(device_name):
        return f"cuda:{info.local_rank}"
    return device_name


def rank_threads(asked: int, info: DistInfo) -> int:
    """Threads for this rank: ``asked`` when set, else the host's cores split between the
    ranks of this node (oversubscribed threads slow every rank down)."""
    if asked:
        return asked
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size)))
    return max(1, physical_cores() // max(1, local_world))


# ----------------------------------------------------------------------------- splitting work


def shard_positions(
    n_items: int, info: DistInfo, group_size: int = 1, strided: bool = False
) -> list[int]:
    """Positions (into a list of ``n_items``) that this rank owns.

    The items are cut into groups of ``group_size`` consecutive items (a GRPO prompt's
    completions), and whole groups are dealt out: ``strided=False`` gives each rank one
    contiguous run of groups (rank 0 the first ceil(groups / N)); ``strided=True`` deals them
    round-robin (rank r gets groups r, r+N, ...), which balances work that grows along the
    list. Every rank can compute every other rank's positions, so no positions are exchanged.
    """
    if group_size < 1 or n_items % group_size:
        raise ValueError(f"{n_items} items do not split into groups of {group_size}")
    n_groups = n_items // group_size
    if strided:
        groups = range(info.rank, n_groups, info.world_size)
    else:
        per = -(-n_groups // info.world_size)  # ceil: the last ranks may get fewer, or none
        groups = range(min(info.rank * per, n_groups), min((info.rank + 1) * per, n_groups))
    return [g * group_size + k for g in groups for k in range(group_size)]


def shard(
    items: Sequence[T], info: DistInfo, group_size: int = 1, strided: bool = False
) -> list[T]:
    """This rank's share of ``items`` (all of them in a single process); see
    :func:`shard_positions` for how groups are kept whole."""
    return [items[i] for i in shard_positions(len(items), info, group_size, strided)]


def gather_ordered(
    local: Sequence[T], n_items: int, info: DistInfo, group_size: int = 1, strided: bool = False
) -> list[T]:
    """Every rank's share of a list of ``n_items`` back in the original order, on every rank.

    ``local`` is what this rank made from :func:`shard` with the same arguments, one result
    per item in the same order. Every rank gets the whole list (not only rank 0), so all
    ranks go on with the same state; rank 0 is the one that writes it. The results travel
    pickled (``all_gather_object``): use it for records, not for large tensors.
    """
    if not info.enabled:
        return list(local)
    mine = shard_positions(n_items, info, group_size, strided)
    if len(local) != len(mine):
        raise ValueError(f"rank {info.rank} gathers {len(local)} results for {len(mine)} items")
    shares: list[Any] = [None] * info.world_size
    dist.all_gather_object(shares, list(local))
    out: list[Any] = [None] * n_items
    for rank, share in enumerate(shares):
        there = shard_positions(n_items, DistInfo(info.world_size, rank), group_size, strided)
        for pos, value in zip(there, share, strict=True):
            out[pos] = value
    return out


def all_gather_objects(value: T, info: DistInfo) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process);
    for small records whose lengths differ by rank (what reward functions logged)."""
    if not info.enabled:
        return [value]
    values: list[Any] = [None] * info.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_from_main(value: T, info: DistInfo) -> T:
    """Rank 0's ``value`` on every rank (e.g. a run directory only rank 0 may name)."""
    if not info.enabled:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- reductions


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise sum of ``t`` over all ranks, as a new tensor (``t`` itself alone).

    For statistics that span the global batch (token counts, sums of rewards and of their
    squares): each rank sums its share, and every rank gets the batch's total.
    """
    if not info.enabled:
        return t
    total = t.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


#: Bytes of gradients summed per collective: big enough that a LoRA step is one call, small
#: enough that a full fine-tune's flat copy stays a few buckets rather than a second model.
GRAD_BUCKET_BYTES = 64 * 2**20


def all_sum_grads(params: Sequence[torch.nn.Parameter], info: DistInfo) -> None:
    """Replace every parameter's gradient by its sum over all ranks (in place).

    This is what DDP's all-reduce does, done once after the step's backward passes: GRPO
    computes its loss with the whole step's denominators on every rank, so the sum of the
    ranks' gradients is the gradient one process takes on the whole batch. A rank that had no
    rows this step (more ranks than micro-batches) contributes zeros. Gradients travel in
    flat buckets of :data:`GRAD_BUCKET_BYTES`, one collective each.
    """
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:  # this rank ran no backward through it: it adds nothing
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in [*params, None]:
        if p is not None:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
        if bucket and (p is None or size >= GRAD_BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket])  # one collective per bucket
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def all_gather(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order (ranks may hold different
    numbers of rows); ``t`` itself in a single process.

    For statistics that need the whole batch's values, not only their sums (a median, a
    histogram); with contiguous shards the result is the batch in its original order.
    """
    if not info.enabled:
        return t
    rows = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(rows) for _ in range(info.world_size)]
    dist.all_gather(counts, rows)
    sizes = [int(c.item()) for c in counts]
    # all_gather needs equal shapes: pad every share to the longest, then trim
    longest = max(sizes)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t.detach()
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def all_mean(value: float, info: DistInfo, device: torch.device | str = "cpu") -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    if not info.enabled:
        return value
    # on the rank's device: nccl reduces CUDA tensors only; fp64 keeps the sum exact enough
    t = torch.tensor([value], dtype=torch.float64, device=device)
    return float(all_sum(t, info).item()) / info.world_size


def rank_slice(
    batches: list[tuple[torch.Tensor, torch.Tensor]], info: DistInfo
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of each (inputs, targets) batch; empty slices are dropped.

    The validation set is defined by the global batch, so a DDP run and a single process at
    equal global batch evaluate exactly the same sequences; each rank takes a slice.
    """
    mine = []
    for x, y in batches:
        rows = shard_positions(x.shape[0], info)
        if rows:  # evaluate weighs by rows, so an empty slice just drops out
            lo, hi = rows[0], rows[-1] + 1
            mine.append((x[lo:hi], y[lo:hi]))
    return mine


# ----------------------------------------------------------------------------- leaving


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
