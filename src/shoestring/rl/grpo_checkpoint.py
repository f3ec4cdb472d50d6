"""GRPO's resumable checkpoints: the trained parameters, optimizer, RNG and the rollout buffer.

Why not ``train``'s checkpoint: a GRPO run often trains a few LoRA adapters on a frozen model,
so only the parameters that require gradients are stored (megabytes, not the whole model), and
the state carries the rollout of the current generation batch, so a run cut between the
``num_iterations`` steps that share a batch resumes with the same result as an uninterrupted one.
The atomic ``step_N/`` writer, the RNG capture and the pruning are ``train``'s
(:mod:`shoestring.train.checkpoint`), so both commands' checkpoint directories read alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shoestring.errors import UserError
from shoestring.rundir.directory import RunDir
from shoestring.train.checkpoint import (
    load_newest_intact,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from shoestring.util.safe_load import read_safetensors, read_torch_state

__all__ = ["load_grpo_checkpoint", "save_grpo_checkpoint"]


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad
    }


def save_grpo_checkpoint(
    checkpoints_dir: Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int
) -> Path:
    """Write ``step_<step>/`` (trained weights + ``state`` + the RNG state now) atomically and
    keep the newest ``keep`` step checkpoints."""
    ckpt = save_checkpoint(
        checkpoints_dir / f"step_{step}",
        model,
        {**state, "step": step, "rng": rng_state()},
        tensors=_trainable_state(model),
    )
    prune_checkpoints(checkpoints_dir, keep)
    return ckpt


def load_grpo_checkpoint(
    rundir: RunDir, model: torch.nn.Module, device: torch.device
) -> tuple[Path, dict[str, Any]]:
    """Load the newest intact checkpoint of ``rundir`` into ``model``, restore the RNG, and
    return the checkpoint's path and its state (``step``, ``optimizer``, ``rollout`` ...);
    damaged newer ones are named in the run's log and skipped
    (:func:`~shoestring.train.checkpoint.load_newest_intact`)."""
    named = dict(model.named_parameters())

    def load(ckpt: Path) -> dict[str, Any]:
        # read both files before touching the model, so a damaged one leaves it as it was
        tensors = read_safetensors(ckpt / "model.safetensors", device=str(device))
        state = read_torch_state(ckpt / "state.pt", map_location=device)
        for k in tensors:
            if k not in named:
                raise UserError(f"checkpoint {ckpt} does not match the model (no parameter {k})")
        with torch.no_grad():
            for k, v in tensors.items():
                named[k].copy_(v)
        return state

    ckpt, state = load_newest_intact(rundir.checkpoints_dir, load, rundir.log)
    set_rng_state(state["rng"])
    return ckpt, state
