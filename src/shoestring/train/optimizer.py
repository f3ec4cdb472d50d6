"""The optimizer every trainer builds: AdamW, weight decay on matrices only, fused kernels.

Why a module of its own: pretraining (:class:`~shoestring.train.trainer.Trainer`), the step-time
measurement of ``analyze`` and GRPO all step AdamW the same way; one definition keeps the
decay split and the fused-kernel fallback from drifting apart between them.
"""

from __future__ import annotations

from typing import Any

import torch

from shoestring.run_config import RunConfig

__all__ = ["adamw", "build_optimizer"]


def adamw(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW as one fused kernel for all parameters (CPU and CUDA); the per-tensor loop where
    this torch or device has no fused kernel."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def build_optimizer(
    model: torch.nn.Module, cfg: RunConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2) only; fused kernels where available.

    Norm gains and biases (dim < 2) are not decayed: shrinking them toward zero only fights the
    normalisation they implement (nanoGPT's split).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return adamw(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
