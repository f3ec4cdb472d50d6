"""What a configuration costs, computed from its shape: parameters, FLOPs, memory, cache fit.

Parameters and training memory are :mod:`shoestring.train.footprint`'s (re-exported here), so
``train`` refuses a batch by the estimate this command reports; FLOPs and cache fit are here.

Why closed-form formulas next to counted values: hand-computed tables of model shapes are easy
to get wrong (embeddings left out, attention counted twice). Every formula here is written from
the model's definition (:mod:`shoestring.models.gpt`), reads the shape through the one field
table (:mod:`shoestring.models.shape`) and is checked against the real model: parameters against
``num_parameters_breakdown`` of a built model, FLOPs against ``FlopCounterMode``
(:mod:`shoestring.analyze.count`), activation bytes against the tensors autograd really saves.

FLOP conventions (stated once, used everywhere):

* a multiply-add is 2 FLOPs; only matrix products are counted (``FlopCounterMode`` counts
  exactly those): the linear layers, the LM head (``d_model x vocab``, counted whether or not it
  is tied to the embedding, because the head's matmul runs either way) and the two attention
  products ``Q K^T`` and ``P V``. Norms, activations, softmax, RoPE, bias adds and the embedding
  lookup are not counted (they are O(d) per token, <1% here);
* training = forward + backward = 3 x forward (the backward of a matmul is two matmuls);
* attention: "full" counts every (query, key) pair - what a dense kernel computes and what
  ``FlopCounterMode`` sees under the MATH backend; "causal" counts only the pairs a causal mask
  keeps, on average (T + 1) / 2 keys per query;
* Kaplan's ``6N`` uses the non-embedding parameter count N and leaves out both the head and
  attention; it is shown so a user sees how far it is off for small vocabulary-heavy models.
"""

from __future__ import annotations

from typing import Any

from shoestring.models.shape import ModelConfig
from shoestring.run_config import RunConfig
from shoestring.train.footprint import (
    activation_bytes_estimate,
    attention_matrices,
    memory_estimate,
    mlp_matrices,
    param_counts,
)

__all__ = [
    "CACHE_LEVELS",
    "activation_bytes_estimate",
    "attention_matrices",
    "cache_fit",
    "flops_per_token",
    "memory_estimate",
    "mlp_matrices",
    "param_counts",
]


def flops_per_token(m: ModelConfig, seq_len: int) -> dict[str, Any]:
    """Analytic FLOPs per token (conventions in the module docstring) at sequence length T.

    Returns forward and training (3x) figures for: ``six_n`` (Kaplan, non-embedding N),
    ``matmul`` (all weight matmuls incl. the head, no attention), and the two attention
    accountings ``full`` / ``causal`` added to ``matmul``; plus the pieces.
    """
    p = param_counts(m)
    t = seq_len
    weights = m.n_layers * (p["attention_matmul"] + p["mlp_matmul"]) + p["head_matmul"]
    fwd_matmul = 2 * weights
    # per layer per token: Q K^T is 2 * T * H * qk_dim, P V is 2 * T * H * v_dim (full)
    att_full = 2 * t * m.n_heads * (m.qk_head_dim + m.value_head_dim) * m.n_layers
    att_causal = att_full * (t + 1) / (2 * t)
    fwd = {
        "matmul": fwd_matmul,
        "attention_full": att_full,
        "attention_causal": att_causal,
        "full": fwd_matmul + att_full,
        "causal": fwd_matmul + att_causal,
        "head": 2 * p["head_matmul"],
    }
    return {
        "seq_len": t,
        "matmul_weights": weights,
        "forward": fwd,
        "train": {k: 3 * v for k, v in fwd.items()},
        "six_n": 6 * p["non_embedding"],
        "six_n_note": "6 x non-embedding parameters (Kaplan): no LM head, no attention",
    }


# ----------------------------------------------------------------------------- cache fit

CACHE_LEVELS = ("L1d", "L2", "L3")


def working_sets(cfg: RunConfig) -> dict[str, int]:
    """The working sets the CPU-cache study reasoned about, in bytes (fp32, one sequence).

    ``activation_block`` = d_model x seq x 4, ``mlp_block`` = d_ff x seq x 4 (one sequence's
    hidden states and MLP activations), ``layer_weights`` = one block's parameters x 4,
    ``layer_weights_bf16`` = the same in bf16 (what the matmuls read under autocast),
    ``micro_batch_activations`` = d_model x seq x batch x 4 (what a matmul really streams).
    """
    m, t = cfg.model, cfg.train
    layer = param_counts(m)["per_layer"]["total"]
    return {
        "activation_block": m.d_model * t.seq_len * 4,
        "mlp_block": m.d_ff * t.seq_len * 4,
        "layer_weights": layer * 4,
        "layer_weights_bf16": layer * 2,
        "micro_batch_activations": m.d_model * t.seq_len * t.batch_size * 4,
    }


def fits_in(size: int, caches: dict[str, int | None]) -> str:
    """The smallest cache level that holds ``size`` bytes ('L1d', 'L2', 'L3') or 'DRAM'."""
    for level in CACHE_LEVELS:
        cap = caches.get(level)
        if cap and size <= cap:
            return level
    return "DRAM"


def cache_fit(cfg: RunConfig, caches: dict[str, int | None]) -> dict[str, Any]:
    """Each working set with its size and the level it fits in on this host (per-core L1d/L2,
    shared L3, as the OS reports them)."""
    sets = working_sets(cfg)
    return {
        name: {
            "bytes": size,
            "fits": fits_in(size, caches),
            **{
                f"fraction_of_{lvl}": (round(size / caches[lvl], 3) if caches.get(lvl) else None)
                for lvl in CACHE_LEVELS
            },
        }
        for name, size in sets.items()
    }
