"""Attention on a CPU: fp32 attention for a bf16/fp16 model (an attention function registered
with transformers that attends in the KV cache's dtype, and the context that switches a model
to it), and the lean decode step's single-query attention.

Why: PyTorch's CPU flash-attention kernel is several times slower in bf16 than in fp32 for one
query token, so a bf16 decode step spends most of its time there; the weights' matmuls stay in
bf16, where bf16 is fast. For one query even fp32 SDPA pays for blocking it does not need.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from shoestring.engine.model_io import model_device, model_dtype

__all__ = ["cpu_fp32_attention", "mask_bias", "single_query_attention"]

_CPU_ATTENTION = "shoestring_cpu_fp32_sdpa"
_cpu_attention_registered: bool | None = None


def _register_cpu_attention() -> bool:
    """Register an SDPA variant that runs attention in the KV cache's dtype (fp32) when the
    model computes in bf16/fp16. Returns False where this transformers has no registry."""
    global _cpu_attention_registered
    if _cpu_attention_registered is not None:
        return _cpu_attention_registered
    # deferred: these transformers internals exist only in recent versions, and only a bf16
    # model on a CPU needs them
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # pragma: no cover - older transformers
        _cpu_attention_registered = False
        return False

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> Any:
        dtype = query.dtype
        if key.dtype == dtype:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(key.dtype)
        out, weights = sdpa_attention_forward(
            module, query.to(key.dtype), key, value, attention_mask, **kwargs
        )
        return out.to(dtype), weights

    AttentionInterface.register(_CPU_ATTENTION, attention)
    AttentionMaskInterface.register(_CPU_ATTENTION, sdpa_mask)
    _cpu_attention_registered = True
    return True


@contextlib.contextmanager
def cpu_fp32_attention(model: Any, enabled: bool) -> Iterator[torch.dtype | None]:
    """For a bf16/fp16 model on a CPU: keep the KV cache in fp32 and attend in fp32.

    Why: PyTorch's CPU flash-attention kernel is several times slower in bf16 than in fp32 for
    one query token (decode), enough to dominate a bf16 decode step (docs/generate.md has the
    figures). The matmuls of the weights stay bf16 (where bf16 is fast). Only models whose
    attention goes through the transformers attention registry (Llama, Qwen2, GPT-2, ...) and
    that use ``sdpa`` are switched; the setting is restored on exit. Yields the cache dtype
    to use (``None`` = the model's own).
    """
    config = getattr(model, "config", None)
    module = sys.modules.get(type(model).__module__)
    ok = (
        enabled
        and config is not None
        and not getattr(model, "_shoestring_no_fp32_attention", False)
        and model_device(model).type == "cpu"
        and model_dtype(model) in (torch.bfloat16, torch.float16)
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and module is not None
        and hasattr(module, "ALL_ATTENTION_FUNCTIONS")
        and _register_cpu_attention()
    )
    if not ok:
        yield None
        return
    config._attn_implementation = _CPU_ATTENTION
    try:
        yield torch.float32
    finally:
        config._attn_implementation = "sdpa"


def mask_bias(attn_mask: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask (True = attend) as an additive fp32 bias (0 or -inf)."""
    bias = torch.zeros(attn_mask.shape, dtype=torch.float32, device=attn_mask.device)
    return bias.masked_fill_(~attn_mask, float("-inf"))


def single_query_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one query token per row over the whole cache, as plain fp32
    matmul-softmax-matmul: ``q`` [B, hq, 1, d], ``keys``/``values`` [B, hkv, T, d] (grouped
    heads: query head ``i`` reads kv head ``i // (hq / hkv)``, as ``enable_gqa``), ``bias``
    [B, 1, 1, T] additive (0 or -inf); returns fp32 [B, hq, 1, dv].

    Why not ``scaled_dot_product_attention``: PyTorch's CPU flash kernel is built for many
    queries; for one it pays its blocking for nothing, and in bf16 it is several times slower
    still. With the query heads of a group as the rows of one matmul this is faster than SDPA
    in fp32 and far faster than SDPA in bf16 (``benchmarks/decode_step.py`` measures both;
    figures in docs/generate.md)."""
    b, hq, _, d = q.shape
    hkv, t = keys.shape[1], keys.shape[2]
    qg = q.reshape(b, hkv, hq // hkv, d).float()  # the query heads that share a kv head
    scores = torch.matmul(qg, keys.float().transpose(-1, -2))  # [B, hkv, g, T]
    scores.mul_(scale).add_(bias.view(b, 1, 1, t))  # in place: one [B, hkv, g, T] buffer
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, values.float())  # [B, hkv, g, dv]
    return out.view(b, hq, 1, values.shape[-1])
