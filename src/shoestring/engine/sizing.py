"""How many rows fit in one batch: a per-row peak-memory estimate from the model's shape, the
memory that is actually free, and a per-device cap.

Why an estimate and not trial and error: running out of memory halfway through a benchmark
costs far more than a slightly smaller batch, so the estimate errs on the large side (and
:meth:`~shoestring.engine.engine.Engine.generate` still halves a batch that runs out).
"""

from __future__ import annotations

from typing import Any

import psutil
import torch

from shoestring.engine.config import EngineOptions
from shoestring.engine.model_io import forward_params, model_device, model_dtype
from shoestring.runtime import DTYPE_NAMES

__all__ = [
    "DEFAULT_MAX_BATCH",
    "MEMORY_FRACTION",
    "auto_batch_size",
    "available_memory",
    "estimate_row_bytes",
]

# Largest batch the auto sizing picks. On a CPU throughput stops improving long before memory
# runs out, while a larger batch pads more and waits longer for its slowest row.
DEFAULT_MAX_BATCH = {"cpu": 64, "cuda": 256, "mps": 64}
# Fraction of the free memory the auto batch size may plan to use.
MEMORY_FRACTION = {"cpu": 0.5, "cuda": 0.8, "mps": 0.5}


def _cfg_get(config: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` the config sets (model families name the same field differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def estimate_row_bytes(
    config: Any, prompt_len: int, max_new_tokens: int, dtype_bytes: int, logits_to_keep: bool = True
) -> int:
    """Memory one row of a batch needs at its peak: the KV cache at full length (with room for
    the copy ``torch.cat`` makes while the cache grows) plus prefill activations and logits.

    A deliberate over-estimate: running out of memory halfway through a benchmark costs far
    more than a slightly smaller batch.
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layers = int(
        _cfg_get(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers", default=12)
    )
    hidden = int(_cfg_get(config, "hidden_size", "n_embd", "d_model", default=768))
    heads = int(_cfg_get(config, "num_attention_heads", "n_head", "n_heads", default=12))
    kv_heads = int(_cfg_get(config, "num_key_value_heads", "n_kv_heads", default=heads))
    head_dim = int(_cfg_get(config, "head_dim", default=hidden // max(heads, 1)))
    k_dim = head_dim
    if getattr(config, "qk_rope_head_dim", 0) or getattr(config, "qk_nope_head_dim", 0):
        k_dim = int(getattr(config, "qk_nope_head_dim", 0) or head_dim) + int(
            getattr(config, "qk_rope_head_dim", 0) or 0
        )
    v_dim = int(getattr(config, "v_head_dim", 0) or head_dim)
    inter = int(_cfg_get(config, "intermediate_size", "n_inner", "d_ff", default=4 * hidden))
    vocab = int(_cfg_get(config, "vocab_size", default=32000))
    seq = prompt_len + max_new_tokens
    kv = layers * kv_heads * (k_dim + v_dim) * seq * dtype_bytes
    kv = int(kv * 1.5)  # a growing cache briefly holds its old and new copy
    # prefill activations of one layer: hidden-size tensors, the MLP's, the [H, T, T] scores
    acts = prompt_len * (6 * hidden + 3 * inter + 2 * heads * prompt_len) * dtype_bytes
    # logits in the model dtype plus an fp32 copy, twice (the softmax's output)
    logits = (1 if logits_to_keep else prompt_len) * vocab * (dtype_bytes + 4) * 2
    return kv + acts + logits


def available_memory(device: torch.device) -> int:
    """Bytes free for generation on ``device`` (CUDA: free device memory; else host RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def auto_batch_size(
    model: Any,
    prompt_len: int,
    max_new_tokens: int,
    options: EngineOptions | None = None,
    free_bytes: int | None = None,
) -> int:
    """Largest number of rows of ``prompt_len + max_new_tokens`` positions whose estimated peak
    memory fits a fraction of the free memory, capped (``options.max_batch_size`` or the
    device default) because past a point a bigger batch only adds padding and tail latency."""
    options = options or EngineOptions()
    device = model_device(model)
    dev = device.type if device.type in DEFAULT_MAX_BATCH else "cpu"
    cap = options.max_batch_size or DEFAULT_MAX_BATCH[dev]
    free = available_memory(device) if free_bytes is None else free_bytes
    dtype = (
        DTYPE_NAMES.get(options.dtype, model_dtype(model))
        if options.dtype != "auto"
        else model_dtype(model)
    )
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    per_row = estimate_row_bytes(
        getattr(model, "config", None),
        prompt_len,
        max_new_tokens,
        dtype_bytes,
        "logits_to_keep" in forward_params(model),
    )
    fit = int(free * MEMORY_FRACTION[dev]) // max(per_row, 1)
    return max(1, min(cap, fit))
