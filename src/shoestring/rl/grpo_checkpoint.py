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
from safetensors.torch import load_file

from shoestring.errors import UserError
from shoestring.train.checkpoint import (
    latest_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

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
    checkpoints_dir: Path, model: torch.nn.Module, device: torch.device
) -> tuple[Path, dict[str, Any]]:
    """Load the newest checkpoint's weights into ``model``, restore the RNG, and return the
    checkpoint's path and its state (``step``, ``optimizer``, ``rollout`` ...)."""
    ckpt = latest_checkpoint(checkpoints_dir)
    if ckpt is None:
        raise UserError(f"{checkpoints_dir.parent} has no complete checkpoint to resume from")
    tensors = load_file(str(ckpt / "model.safetensors"), device=str(device))
    named = dict(model.named_parameters())
    for k, v in tensors.items():
        if k not in named:
            raise UserError(f"checkpoint {ckpt} does not match the model (no parameter {k})")
        with torch.no_grad():
            named[k].copy_(v)
    state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
    set_rng_state(state["rng"])
    return ckpt, state
