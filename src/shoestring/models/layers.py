"""The GPT's small building blocks: its norms (LayerNorm or a dtype-following RMSNorm) and its
MLP (GELU or SwiGLU).

Why apart from ``gpt.py``: attention (``attention.py``) normalises its low-rank latents with the
same norm the blocks use, and keeping norm and MLP here lets both import them without importing
the model definition. Layers take the ``ShoestringGPTConfig`` typed as its HF base class,
``PretrainedConfig``, so this module needs nothing from ``gpt.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig


class ShoestringRMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that casts its weight to the input dtype.

    Under bf16 autocast the low-rank latents reach their norm in bf16 while the weight is fp32;
    torch then refuses the fused kernel and falls back to a slow composite. Casting the (tiny)
    weight keeps the fused kernel, which accumulates in fp32 internally anyway.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight is not None and weight.dtype != x.dtype:
            weight = weight.to(x.dtype)  # mixed dtypes would miss the fused kernel
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def make_norm(config: PretrainedConfig, dim: int) -> nn.Module:
    """The norm ``config.norm`` names (``rmsnorm`` or ``layernorm``) over ``dim`` features."""
    if config.norm == "rmsnorm":
        return ShoestringRMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)


class ShoestringMLP(nn.Module):
    """GELU MLP (``fc`` -> GELU -> ``proj``, nanoGPT) or SwiGLU (``gate/up/down_proj``, Llama)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)
            self.down_proj._shoestring_residual = True  # scaled init: it feeds the residual
        else:
            self.fc = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.act = nn.GELU()
            self.proj = nn.Linear(config.d_ff, config.d_model, bias=False)
            self.proj._shoestring_residual = True  # scaled init: it feeds the residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            # SwiGLU: silu(gate) selects, up carries the value; [B, T, d_ff] -> [B, T, d_model]
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.proj(self.act(self.fc(x)))
