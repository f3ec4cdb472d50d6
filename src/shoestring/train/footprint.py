"""What training a configuration needs, from its shape alone: parameters and memory.

Why here, below ``analyze``: ``shoestring analyze`` reports these numbers and ``shoestring
train`` refuses a batch whose activations cannot fit the memory it has (:mod:`shoestring.train.
sizes`) - by the same estimate, so the two never disagree. Every formula is written from the
model's definition (:mod:`shoestring.models.gpt`), reads the shape through the one field table
(:mod:`shoestring.models.shape`) and is checked against the real model by ``tests/test_analyze``:
parameters against ``num_parameters_breakdown``, activation bytes against the tensors autograd
really saves. :mod:`shoestring.analyze.cost` adds FLOPs and cache fit on top.
"""

from __future__ import annotations

from typing import Any

from shoestring.models.shape import ModelConfig
from shoestring.run_config import RunConfig

__all__ = [
    "activation_bytes_estimate",
    "attention_matrices",
    "memory_estimate",
    "mlp_matrices",
    "norm_params",
    "param_counts",
]


def norm_params(m: ModelConfig) -> int:
    """Parameters per normalised dim: 2 for LayerNorm (weight, bias), 1 for RMSNorm."""
    return 2 if m.norm == "layernorm" else 1


def attention_matrices(m: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of every attention projection, in the model's layout (models/attention.py)."""
    d, h, r = m.d_model, m.n_heads, m.qk_rope_head_dim
    mats: list[tuple[int, int]] = []
    if m.q_lora_rank:
        mats += [(d, m.q_lora_rank), (m.q_lora_rank, h * m.qk_head_dim)]
    else:
        mats.append((d, h * m.qk_head_dim))
    if m.kv_lora_rank:
        mats.append((d, m.kv_lora_rank + r))  # the latent and the one shared RoPE key
        mats.append((m.kv_lora_rank, h * (m.head_dim + m.value_head_dim)))
    else:
        mats += [(d, h * m.head_dim + r), (d, h * m.value_head_dim)]
    mats.append((h * m.value_head_dim, d))
    return mats


def mlp_matrices(m: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of the MLP's matrices: fc/proj (GELU) or gate/up/down (SwiGLU)."""
    up = [(m.d_model, m.d_ff)] * (2 if m.mlp == "swiglu" else 1)
    return [*up, (m.d_ff, m.d_model)]


def param_counts(m: ModelConfig) -> dict[str, Any]:
    """Parameters from the config alone, split as ``num_parameters_breakdown`` splits them.

    ``embedding`` = token table + learned position table; ``lm_head`` = 0 when tied (the one
    matrix is counted once, as the embedding); ``non_embedding`` = total - embedding - lm_head.
    ``per_layer`` = {"attention" (projections, their biases and the low-rank latent norms),
    "mlp", "other" (the two block norms)}; ``attention_matmul``/``mlp_matmul`` are the weight
    matrices alone (what the FLOP formula multiplies by).
    """
    d, n_layers, norm = m.d_model, m.n_layers, norm_params(m)
    att_mats = sum(i * o for i, o in attention_matrices(m))
    att_bias = sum(o for _, o in attention_matrices(m)) if m.attention_bias else 0
    att_norms = norm * (m.q_lora_rank + m.kv_lora_rank)  # the low-rank latents' norms
    attention = att_mats + att_bias + att_norms
    mlp = sum(i * o for i, o in mlp_matrices(m))
    other = 2 * norm * d  # the block's two norms
    layer = attention + mlp + other
    learned_pos = m.max_seq_len if m.position == "learned" else 0
    embedding = m.vocab_size * d + learned_pos * d
    lm_head = 0 if m.tie_word_embeddings else m.vocab_size * d
    final_norm = norm * d
    non_embedding = n_layers * layer + final_norm
    return {
        "total": embedding + lm_head + non_embedding,
        "embedding": embedding,
        "lm_head": lm_head,
        "non_embedding": non_embedding,
        "attention": n_layers * attention,
        "mlp": n_layers * mlp,
        "norm": n_layers * other + final_norm,
        "layers": n_layers,
        "per_layer": {"attention": attention, "mlp": mlp, "other": other, "total": layer},
        "attention_matmul": att_mats,
        "mlp_matmul": mlp,
        "head_matmul": m.vocab_size * d,
    }


def _compute_bytes(dtype: str) -> int:
    return 2 if dtype == "bf16" else 4


def activation_bytes_estimate(
    m: ModelConfig, seq_len: int, micro_batch: int, dtype: str, device: str = "cpu"
) -> dict[str, Any]:
    """Bytes autograd keeps for the backward of one micro-batch, from the model's layout.

    Per layer and token (c = bytes of the compute dtype; norms and softmax statistics stay
    fp32): the norm inputs (fp32) and statistics, the inputs of every linear layer (under bf16
    autocast each linear casts its input separately, so q/k/v each keep a copy; in fp32 they
    share one), q, k and v and the output of attention plus its log-sum-exp, the low-rank
    latents and their norms, and the MLP's pre- and post-activation. Per micro-batch: the token
    ids, the final norm's input, the chunked head's hidden gradient (c per element) and its
    fp32 weight gradient (vocab x d_model), and under autocast the bf16 copies of every weight
    matrix. Dropout masks (dropout > 0) are not included.
    """
    bf16 = dtype == "bf16"
    c = _compute_bytes(dtype)
    d, h = m.d_model, m.n_heads
    qk, dv = m.qk_head_dim, m.value_head_dim  # per-head widths of q/k and of v
    r, q_rank, kv_rank = m.qk_rope_head_dim, m.q_lora_rank, m.kv_lora_rank
    swiglu = m.mlp == "swiglu"
    rms = norm_params(m) == 1
    stats = 4 if rms else 8  # LayerNorm keeps mean + rstd, RMSNorm rstd
    # RMSNorm (a composite op) also keeps its normalised output for the weight gradient
    block_norm = 4 * d + stats + (4 * d if rms else 0)
    # inputs read by the first projections: q (or q_a), k/kv_a, v (absent with low-rank kv)
    readers = 1 + 1 + (0 if kv_rank else 1)
    per_tok = block_norm  # input norm: input + statistics
    per_tok += (readers if bf16 else 1) * c * d  # normed input(s) kept by the linear layers
    if q_rank:  # latent: norm input + statistics (+ RMS output) + q_b input
        per_tok += c * q_rank + stats + (c * q_rank if rms else 0) + c * q_rank
    if kv_rank:  # the kv_a output also holds the shared RoPE key
        per_tok += c * (kv_rank + r) + stats + (c * kv_rank if rms else 0)
        per_tok += c * kv_rank
    # q, k and v kept by attention. With low-rank kv, k and v are views of the one kv_b
    # output (k gets its own buffer only when the RoPE key is concatenated onto it).
    # Under bf16 on a CPU the model runs attention in fp32 (models/attention.py): SDPA keeps
    # fp32 copies of q, k, v and its fp32 output, and o_proj keeps the bf16 cast of that output.
    fp32_attention = bf16 and device == "cpu"
    if fp32_attention:
        per_tok += 4 * (h * qk + h * qk + h * dv)  # q, k, v
        per_tok += 4 * h  # log-sum-exp per head
        per_tok += 4 * h * dv + c * h * dv  # fp32 output + o_proj's bf16 input
    else:
        if kv_rank:
            kv_store = h * (m.head_dim + dv) + (h * qk if r else 0)
        else:
            kv_store = h * qk + h * dv
        per_tok += c * (h * qk + kv_store)
        per_tok += 4 * h  # log-sum-exp per head
        per_tok += c * h * dv  # attention output = o_proj input
        if r:  # q/k built by cat are laid out per head: the output is copied for o_proj
            per_tok += c * h * dv
    per_tok += block_norm  # post-attention norm
    mlp_readers = 2 if swiglu else 1
    per_tok += (mlp_readers if bf16 else 1) * c * d
    per_tok += (4 if swiglu else 2) * c * m.d_ff  # pre- and post-activation (x2: gate and up)
    tokens = seq_len * micro_batch
    layers = per_tok * m.n_layers * tokens
    head = (8 + block_norm + c * d) * tokens + 4 * m.vocab_size * d
    rope = 2 * 4 * seq_len * m.rotary_dim  # cos and sin, shared by all layers
    weight_copies = 0
    if bf16:
        p = param_counts(m)
        weight_copies = 2 * m.n_layers * (p["attention_matmul"] + p["mlp_matmul"])
    total = layers + head + rope + weight_copies
    return {
        "bytes": total,
        "per_token_per_layer": per_tok,
        "layers": layers,
        "head": head,
        "rope": rope,
        "weight_copies": weight_copies,
        "note": "autograd saved tensors; dropout masks not included",
    }


def memory_estimate(cfg: RunConfig, dtype: str, device: str = "cpu") -> dict[str, Any]:
    """Training memory: fp32 weights, gradients, AdamW state (2 fp32 moments), activations.

    Parameters stay fp32 under bf16 autocast (it casts per op), so weights, gradients and the
    optimizer state are 4 bytes per parameter whatever the compute dtype.
    """
    p = param_counts(cfg.model)["total"]
    t = cfg.train
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    act = activation_bytes_estimate(cfg.model, t.seq_len, t.batch_size, dtype, device_type)
    weights, grads, optim = 4 * p, 4 * p, 8 * p
    tokens_per_micro = t.seq_len * t.batch_size
    return {
        "weights_bytes": weights,
        "gradients_bytes": grads,
        "optimizer_bytes": optim,
        "activations_bytes": act["bytes"],
        "activations": act,
        "total_bytes": weights + grads + optim + act["bytes"],
        "tokens_per_micro_batch": tokens_per_micro,
        "activation_bytes_per_token": act["bytes"] / tokens_per_micro,
        "batch_input_bytes": 2 * 8 * tokens_per_micro,  # int64 inputs + targets
    }
