"""The optimizer every trainer builds: AdamW, or Muon for hidden matrices with AdamW for the rest.

Why a module of its own: pretraining (:class:`~shoestring.train.trainer.Trainer`), the step-time
measurement of ``analyze`` and GRPO all build their optimizer here; one definition keeps the
parameter split, the decay rule and the fused-kernel fallback from drifting apart.

The split (``train.optimizer=muon``, :func:`split_parameters`): Muon takes the 2-D weights of
the ``nn.Linear`` layers inside the transformer blocks - attention and MLP projections,
including the low-rank query and key/value factors of the ``lora_*``/``enhanced_*`` variants.
AdamW keeps the token and position embeddings, the LM head (tied or not), norms and biases,
because Muon's orthogonalised update is meant for hidden layers: an embedding row is updated
only when its token occurs, and the head's rows are per-token classifiers (Keller Jordan's and
Moonshot's recipes both keep them on AdamW).
"""

from __future__ import annotations

from typing import Any

import torch

from shoestring.run_config import RunConfig
from shoestring.train.muon import MuonWithAdamW

__all__ = ["adamw", "build_optimizer", "split_parameters"]


def adamw(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW as one fused kernel for all parameters (CPU and CUDA); the per-tensor loop where
    this torch or device has no fused kernel."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def split_parameters(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Every trainable parameter in exactly one of ``muon``, ``adamw_decay``, ``adamw_no_decay``.

    ``muon``: 2-D weights of ``nn.Linear`` modules that are neither an input embedding nor the
    output head. ``adamw_decay``: the other matrices (embeddings, head). ``adamw_no_decay``:
    norm gains and biases (dim < 2; decaying them only fights the normalisation, nanoGPT's rule).
    """
    excluded: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.Embedding):
            excluded.add(id(mod.weight))
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None and getattr(head, "weight", None) is not None:
        excluded.add(id(head.weight))
    linear_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)
    } - excluded
    out: dict[str, list[tuple[str, torch.nn.Parameter]]] = {
        "muon": [],
        "adamw_decay": [],
        "adamw_no_decay": [],
    }
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        if p.dim() == 2 and id(p) in linear_weights:
            out["muon"].append((name, p))
        elif p.dim() >= 2:
            out["adamw_decay"].append((name, p))
        else:
            out["adamw_no_decay"].append((name, p))
    return out


def build_optimizer(
    model: torch.nn.Module,
    cfg: RunConfig,
    device: torch.device,
    compute_dtype: str | None = None,
) -> torch.optim.Optimizer:
    """``train.optimizer``: ``adamw`` (decay on matrices only) or ``muon`` (+ AdamW, see above).

    Muon's lr is ``train.muon_lr`` (0 = ``train.lr``, which Moonshot's RMS matching makes
    transferable), its momentum ``train.muon_momentum``. Its Newton-Schulz iteration runs in
    the run's compute dtype (``compute_dtype``, the runtime's ``"bf16"``/``"fp32"``; default:
    bf16 on CUDA, fp32 elsewhere), see :mod:`shoestring.train.muon`. Both halves share
    ``train.weight_decay``.
    """
    t = cfg.train
    default_ns = "bf16" if device.type == "cuda" else "fp32"
    groups = split_parameters(model)
    decay = [p for _, p in groups["adamw_decay"]]
    no_decay = [p for _, p in groups["adamw_no_decay"]]
    if t.optimizer == "adamw":
        decay = [p for _, p in groups["muon"]] + decay
    adamw_groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if t.optimizer == "adamw":
        return adamw(adamw_groups, lr=t.lr, betas=(t.beta1, t.beta2))
    return MuonWithAdamW(
        [p for _, p in groups["muon"]],
        adamw_groups,
        muon_lr=t.muon_lr or t.lr,
        adamw_lr=t.lr,
        weight_decay=t.weight_decay,
        betas=(t.beta1, t.beta2),
        momentum=t.muon_momentum,
        ns_dtype=torch.bfloat16 if (compute_dtype or default_ns) == "bf16" else torch.float32,
        make_adamw=adamw,
    )
