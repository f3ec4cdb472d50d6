"""The trainer's bookkeeping: what a checkpoint must hold and what summary.json reports.

:class:`TrainState` is everything besides weights, optimizer and RNG that an exact resume
needs (step, current micro-batch split, best and last losses, time and token counters, the
out-of-memory back-offs so far). The functions here are the only places that change or read it
in bulk: the checkpoint payload, the micro-batch halving after an out-of-memory error, and the
end-of-run summary fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from shoestring.errors import UserError
from shoestring.run_config import TrainConfig
from shoestring.train.checkpoint import rng_state

__all__ = ["TrainState", "checkpoint_state", "halve_micro_batch", "summary_fields"]


@dataclass
class TrainState:
    """Everything besides weights that a checkpoint must hold for an exact resume."""

    step: int = 0
    micro_batch: int = 0
    grad_accum: int = 0
    best_val_loss: float = float("inf")
    best_step: int = -1
    initial_val_loss: float | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    tokens_seen: int = 0
    oom_events: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_state(
    ts: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    global_batch: int,
) -> dict[str, Any]:
    """The ``state.pt`` payload of a step checkpoint (plain tensors and Python values only)."""
    return {
        "train_state": dict(ts.__dict__),
        "data_position": ts.step * global_batch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }


def halve_micro_batch(
    ts: TrainState, step: int, exc: BaseException, distributed: bool
) -> dict[str, Any]:
    """After an out-of-memory error: half the micro-batch, twice the accumulation.

    Tokens per step stay the same, so the run trains on exactly the data it would have. Returns
    the event (also appended to ``ts.oom_events``); raises ``UserError`` when nothing smaller
    can be tried (micro-batch 1) or under DDP, where the ranks would have to agree on it.
    """
    if distributed or ts.micro_batch <= 1:
        raise UserError(
            f"out of memory at step {step} with micro-batch {ts.micro_batch}"
            + (
                " under DDP (back-off needs a single process)"
                if distributed
                else "; nothing smaller to try"
            )
            + "; lower train.batch_size or model size"
        ) from exc
    old = ts.micro_batch
    ts.micro_batch //= 2
    ts.grad_accum *= 2
    event = {
        "step": step,
        "micro_batch_from": old,
        "micro_batch_to": ts.micro_batch,
        "grad_accum": ts.grad_accum,
        "error": str(exc).splitlines()[0][:200],
    }
    ts.oom_events.append(event)
    return event


def summary_fields(ts: TrainState, t: TrainConfig, compile_info: dict[str, Any]) -> dict[str, Any]:
    """summary.json's training fields at the end of a run (whatever its status); the lifecycle
    adds status, wall time, system metrics and error."""
    return {
        "steps": ts.step,
        "max_steps": t.max_steps,
        "tokens": ts.tokens_seen,
        "train_seconds": round(ts.train_seconds, 3),
        "eval_seconds": round(ts.eval_seconds, 3),
        "tokens_per_second": (ts.tokens_seen / ts.train_seconds) if ts.train_seconds else None,
        "samples_per_second": (
            ts.tokens_seen / t.seq_len / ts.train_seconds if ts.train_seconds else None
        ),
        "throughput_note": "training-step time only; evaluation and checkpointing excluded",
        "initial_val_loss": ts.initial_val_loss,
        "final_val_loss": ts.last_val_loss,
        "final_train_loss": ts.last_train_loss,
        "best_val_loss": ts.best_val_loss if math.isfinite(ts.best_val_loss) else None,
        "best_step": ts.best_step,
        "micro_batch": ts.micro_batch,
        "grad_accum": ts.grad_accum,
        "oom_events": ts.oom_events,
        "compile": {k: v for k, v in compile_info.items() if k != "decided"},
    }
