"""Which models the lean forward (:mod:`.lean_decode`) reproduces exactly, and the pieces of
theirs it calls as they are: Llama-family models (Llama, Qwen2, Mistral) without sliding
windows, tensor-parallel pretraining or other activations, and the shoestring GPT's plain
variants (no low-rank or decoupled-RoPE attention); never a model with hooks or a wrapped
embedding or head. :func:`unsupported` says why not, so the engine falls back to the model's
own forward instead of computing something else.

Why apart: what the lean forward computes and which architectures it may compute it for are two
questions; the second grows with every family taught to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "LLAMA_FAMILY",
    "SHOESTRING_GPT",
    "SUPPORTED",
    "Norm",
    "gpt_norm",
    "llama_norm",
    "plain_linear",
    "unsupported",
]

# Architectures whose decoder layer is exactly: x + o(attn(rope(q, k), v)) of rmsnorm(x), then
# x + down(silu(gate) * up) of rmsnorm(x), with HF's rotate-half RoPE.
LLAMA_FAMILY = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}
SHOESTRING_GPT = "ShoestringGPTForCausalLM"
SUPPORTED = LLAMA_FAMILY | {SHOESTRING_GPT}
Norm = Callable[[torch.Tensor], torch.Tensor]


def plain_linear(m: Any) -> bool:
    return type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


def _hooked(m: Any) -> bool:
    return bool(
        getattr(m, "_hf_hook", None) is not None or m._forward_hooks or m._forward_pre_hooks
    )


# ----------------------------------------------------------------------------- Llama family

_RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")


def llama_norm(m: Any) -> Norm | None:
    """A transformers RMSNorm's own ``forward`` (called without module dispatch), or ``None``
    if this module is something else."""
    if type(m).__name__ not in _RMS_NORMS:
        return None
    return m.forward


def _llama_unsupported(model: Any) -> str | None:
    cfg = model.config
    inner = model.model
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)}"
    if (getattr(cfg, "pretraining_tp", 1) or 1) != 1:
        return "pretraining_tp > 1"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    if getattr(cfg, "sliding_window", None) and type(model).__name__ == "MistralForCausalLM":
        return "sliding window"
    if getattr(cfg, "_attn_implementation", "sdpa") not in (
        "sdpa",
        "eager",
        "shoestring_cpu_fp32_sdpa",
    ):
        return f"attention implementation {cfg._attn_implementation}"
    if llama_norm(inner.norm) is None:
        return "final norm"
    for layer in inner.layers:
        if getattr(layer.self_attn, "sliding_window", None):
            return "sliding-window attention"
        if llama_norm(layer.input_layernorm) is None:
            return "layer norm"
        if llama_norm(layer.post_attention_layernorm) is None:
            return "layer norm"
        if not all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "MLP layout"
    return None


# ----------------------------------------------------------------------------- shoestring GPT


def gpt_norm(m: Any) -> Norm | None:
    """The GPT's LayerNorm or ShoestringRMSNorm ``forward``, or ``None`` for anything else."""
    if type(m) is nn.LayerNorm or type(m).__name__ == "ShoestringRMSNorm":
        return m.forward
    return None


def _gpt_unsupported(model: Any) -> str | None:
    cfg = model.config
    if cfg.q_lora_rank or cfg.kv_lora_rank:
        return "low-rank q/kv projections"
    if cfg.qk_rope_head_dim:
        return "decoupled RoPE"
    inner = model.model
    if gpt_norm(inner.norm) is None:
        return "final norm"
    for layer in inner.layers:
        if gpt_norm(layer.input_layernorm) is None:
            return "layer norm"
        if gpt_norm(layer.post_attention_layernorm) is None:
            return "layer norm"
        mlp = layer.mlp
        if mlp.kind == "gelu" and (
            type(mlp.act) is not nn.GELU or getattr(mlp.act, "approximate", "none") != "none"
        ):
            return "GELU variant"
    return None


def unsupported(model: Any) -> str | None:
    """``None`` when the lean step reproduces this model's forward, else the reason not."""
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"architecture {name}"
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if cfg is None or inner is None or not hasattr(inner, "layers"):
        return "no decoder layers"
    if any(_hooked(m) for m in model.modules()):
        return "module hooks (offloading, instrumentation, input grads)"
    if type(inner.embed_tokens) is not nn.Embedding or not plain_linear(model.lm_head):
        return "wrapped embedding or output layer"
    return _gpt_unsupported(model) if name == SHOESTRING_GPT else _llama_unsupported(model)
