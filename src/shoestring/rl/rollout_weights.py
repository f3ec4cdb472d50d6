"""The weights a CPU rollout samples with: a bf16 copy of a full fine-tune's fp32 policy.

Why: a full fine-tune keeps fp32 master weights (the optimizer needs them) and trains under
bf16 autocast. Sampling with them runs every decode step in fp32 (twice the weight bytes read
per token, and fp32 matmuls, on a CPU whose bf16 units are the fast ones), and sampling under
autocast instead re-casts every weight at every decode step. With ``dtype=bf16`` on a CPU the
rollout therefore decodes with a bf16 copy of the weights, made before each rollout and
dropped after it (one cast of each weight per rollout instead of one per token) - what TRL's
bf16 run computes in, without its per-step casts. Dropping it keeps the copy out of the
training step, where the run's peak memory is (gradients, optimizer state, activations).
LoRA runs need none: their frozen base is stored in the run's dtype already, and the engine
samples with the adapters merged into plain linear layers (``EngineOptions.merge_lora``, on a
CPU as on a GPU), which its decode step fuses and prepacks like a full model's. A model with
hooks (gradient checkpointing's input hooks, offloading) is left as it is.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["RolloutWeights", "bf16_copy"]


def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters are bf16, frozen and in eval mode, without an
    intermediate fp32 copy (tied parameters stay tied); buffers are copied as they are."""
    memo: dict[int, Any] = {}
    for p in model.parameters():  # a tied parameter appears once
        memo[id(p)] = torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
    # deepcopy takes the memo's entries for those ids: no fp32 copy is made on the way
    shadow = copy.deepcopy(model, memo)
    return shadow.eval()


def _hooked(model: torch.nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or getattr(m, "_hf_hook", None) is not None
        for m in model.modules()
    )


class RolloutWeights:
    """Hands the rollout the model to sample with (:meth:`model_for`) and drops the bf16
    copy once the rollout is done (:meth:`release`)."""

    def __init__(self) -> None:
        self.shadow: torch.nn.Module | None = None

    @staticmethod
    def wanted(policy: Any) -> bool:
        """A CPU full fine-tune with fp32 weights whose run asked for bf16."""
        model = policy.model
        return (
            policy.device.type == "cpu"
            and policy.runtime.dtype == "bf16"
            and policy.peft_model is None
            and all(p.dtype == torch.float32 for p in model.parameters())
            and not _hooked(model)
        )

    @torch.no_grad()
    def model_for(self, policy: Any) -> torch.nn.Module:
        """The model the next rollout samples with: ``policy.model`` itself, or a bf16 copy
        of its current weights."""
        if not self.wanted(policy):
            return policy.model
        self.shadow = bf16_copy(policy.model)
        return self.shadow

    def release(self) -> None:
        """Drop the bf16 copy (the rollout is done)."""
        self.shadow = None
