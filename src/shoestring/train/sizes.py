"""Sizes checked before the first step: a batch must fit the data and the memory it has.

Why: ``--set train.batch_size=1e9`` was accepted - 128 billion tokens per step on a 256k-token
data set - and the run then spent minutes building one step's window list while its memory grew,
until the host gave out. Both limits are known before the model is built: the training shard's
number of windows, and the memory a micro-batch needs by the estimate ``shoestring analyze``
reports (:func:`shoestring.train.footprint.memory_estimate`), so a size that cannot work is one
line with the numbers and the largest size that would, instead of a run that never steps.
"""

from __future__ import annotations

import dataclasses

import psutil
import torch

from shoestring.errors import UserError
from shoestring.run_config import RunConfig
from shoestring.train.footprint import memory_estimate

__all__ = ["available_memory_bytes", "check_batch_fits_data", "check_batch_fits_memory"]

GB = 2**30


def check_batch_fits_data(cfg: RunConfig, n_windows: int, world_size: int, data_path: str) -> None:
    """Refuse a step that needs more sequences than the training shard holds.

    A step of ``batch_size x grad_accum x world_size`` sequences larger than the data would read
    every window more than once within one step: no run means that, and a typo (``1e9``) does.
    """
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * world_size
    if per_step <= n_windows:
        return
    largest = max(1, n_windows // (t.grad_accum * world_size))
    raise UserError(
        f"train.batch_size={t.batch_size} x grad_accum={t.grad_accum} x {world_size} "
        f"process(es) = {per_step:,} sequences per step, but the training data in {data_path} "
        f"holds {n_windows:,} sequences of {t.seq_len + 1} tokens; set train.batch_size to "
        f"{largest:,} or less (or prepare more data)"
    )


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a run on ``device`` can still take: free GPU memory on CUDA, available host
    memory on the CPU; None where it cannot be known (MPS)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        return int(psutil.virtual_memory().available)
    return None


def check_batch_fits_memory(cfg: RunConfig, dtype: str, device: torch.device) -> None:
    """Refuse a micro-batch whose training memory (weights, gradients, AdamW state and the
    activations autograd keeps, by analyze's estimate) exceeds the memory available now.

    The estimate leaves out temporaries and dropout masks, so it errs low: what it refuses
    cannot fit; what it passes may still meet the step's out-of-memory back-off.
    """
    available = available_memory_bytes(device)
    if available is None:
        return
    t = cfg.train
    need = memory_estimate(cfg, dtype, device.type)
    if need["total_bytes"] <= available:
        return
    fixed = need["weights_bytes"] + need["gradients_bytes"] + need["optimizer_bytes"]
    one = memory_estimate(_with_batch(cfg, 1), dtype, device.type)["activations_bytes"]
    two = memory_estimate(_with_batch(cfg, 2), dtype, device.type)["activations_bytes"]
    per_sequence = max(two - one, 1)  # activations grow linearly with the micro-batch
    largest = (available - fixed - (one - per_sequence)) // per_sequence
    advice = (
        f"set train.batch_size to {largest:,} or less (train.grad_accum keeps the batch per step)"
        if largest >= 1
        else "the model alone does not fit: choose a smaller model or another device"
    )
    raise UserError(
        f"train.batch_size={t.batch_size} needs about {need['total_bytes'] / GB:,.1f} GB on "
        f"{device.type} ({need['activations_bytes'] / GB:,.1f} GB of activations for "
        f"{t.batch_size:,} x {t.seq_len} tokens, {fixed / GB:,.2f} GB of weights, gradients and "
        f"AdamW state; the estimate `shoestring analyze` reports), but {available / GB:,.1f} GB "
        f"is available; {advice}"
    )


def _with_batch(cfg: RunConfig, batch_size: int) -> RunConfig:
    """A copy of ``cfg`` whose micro-batch is ``batch_size`` (for the estimate only)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))
