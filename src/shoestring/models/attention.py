"""This module is one idea: the GPT's causal self-attention and its variants.

One class covers plain multi-head attention (MHA), DeepSeek-style low-rank queries
(``q_lora_rank``) and keys/values (``kv_lora_rank``), RoPE on the whole head or decoupled RoPE
dims (``qk_rope_head_dim``), and a narrower value head (``v_head_dim``), so a comparison changes
one switch at a time (``docs/variants.md``). :func:`sdpa_mask` decides which mask, if any,
``scaled_dot_product_attention`` gets: the training path builds none and uses ``is_causal=True``
so the fused kernels stay eligible.

The attention takes the ``ShoestringGPTConfig`` typed as its HF base, ``PretrainedConfig``, so
this module does not import the model definition that imports it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

# Relative imports: a model directory ships this file next to its modeling code (gpt.py).
from .layers import make_norm
from .rope import apply_rope


class ShoestringAttention(nn.Module):
    """Causal self-attention with the DeepSeek-style switches; see ``docs/variants.md``.

    Layout of the projections (H heads, d = head_dim, r = qk_rope_head_dim, dv = v head dim):

    * queries: ``q_proj`` (d_model -> H*(d+r)), or low rank ``q_a_proj`` (d_model -> q_lora_rank)
      -> ``q_a_norm`` -> ``q_b_proj`` (-> H*(d+r)).
    * keys/values: ``k_proj`` (d_model -> H*d + r) and ``v_proj`` (d_model -> H*dv), or shared
      low rank ``kv_a_proj`` (d_model -> kv_lora_rank + r) -> ``kv_a_norm`` on the latent ->
      ``kv_b_proj`` (-> H*(d+dv)) giving per-head k_nope and v.
    * the extra ``r`` key dims are one RoPE key shared by all heads (DeepSeek's decoupled RoPE),
      taken from the same matmul as the keys / the latent so no extra kernel launch is needed.
    * ``o_proj``: H*dv -> d_model.

    The KV cache stores the per-head keys (RoPE already applied) and values, i.e. the low-rank
    variants save parameters and FLOPs but not KV-cache memory (no latent caching/absorption).
    """

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.qk_head_dim = config.qk_head_dim
        self.v_head_dim = config.value_head_dim
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.dropout = config.dropout
        if config.position != "rope":
            self.rope_mode = "none"
        else:
            self.rope_mode = "decoupled" if self.rope_dim else "full"
        d, h, bias = config.d_model, config.n_heads, config.attention_bias

        if self.q_lora_rank:
            self.q_a_proj = nn.Linear(d, self.q_lora_rank, bias=bias)
            self.q_a_norm = make_norm(config, self.q_lora_rank)
            self.q_b_proj = nn.Linear(self.q_lora_rank, h * self.qk_head_dim, bias=bias)
        else:
            self.q_proj = nn.Linear(d, h * self.qk_head_dim, bias=bias)

        if self.kv_lora_rank:
            self.kv_a_proj = nn.Linear(d, self.kv_lora_rank + self.rope_dim, bias=bias)
            self.kv_a_norm = make_norm(config, self.kv_lora_rank)
            self.kv_b_proj = nn.Linear(
                self.kv_lora_rank, h * (self.head_dim + self.v_head_dim), bias=bias
            )
        else:
            self.k_proj = nn.Linear(d, h * self.head_dim + self.rope_dim, bias=bias)
            self.v_proj = nn.Linear(d, h * self.v_head_dim, bias=bias)

        self.o_proj = nn.Linear(h * self.v_head_dim, d, bias=bias)
        self.o_proj._shoestring_residual = True  # scaled init (nanoGPT's c_proj rule)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        bsz, q_len, _ = x.shape
        h = self.n_heads

        if self.q_lora_rank:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))  # d_model -> rank -> H*(d+r)
        else:
            q = self.q_proj(x)
        q = q.view(bsz, q_len, h, self.qk_head_dim).transpose(1, 2)  # [B, H, T, hd + r]

        k_rope = None
        if self.kv_lora_rank:
            latent = self.kv_a_proj(x)  # [B, T, kv_lora_rank + r]
            if self.rope_dim:  # the last r outputs are the one RoPE key all heads share
                latent, k_rope = latent.split([self.kv_lora_rank, self.rope_dim], dim=-1)
            kv = self.kv_b_proj(self.kv_a_norm(latent))  # the latent expands to every head
            kv = kv.view(bsz, q_len, h, self.head_dim + self.v_head_dim).transpose(1, 2)
            k, v = kv.split([self.head_dim, self.v_head_dim], dim=-1)  # [B, H, T, d], [.., dv]
        else:
            k = self.k_proj(x)
            if self.rope_dim:  # the last r outputs are the one RoPE key all heads share
                k, k_rope = k.split([h * self.head_dim, self.rope_dim], dim=-1)
            # [B, T, H*d] -> [B, H, T, d]: SDPA wants the heads before the sequence
            k = k.view(bsz, q_len, h, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(bsz, q_len, h, self.v_head_dim).transpose(1, 2)

        if self.rope_mode == "full":
            assert rope is not None
            cos, sin = rope
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        elif self.rope_mode == "decoupled":
            assert rope is not None and k_rope is not None
            cos, sin = rope
            # rotate only the last r dims of each query head; the content dims stay unrotated
            q_nope, q_pe = q.split([self.head_dim, self.rope_dim], dim=-1)
            q = torch.cat((q_nope, apply_rope(q_pe, cos, sin)), dim=-1)
            # the shared key is rotated once, as one head, then appended to every head's key
            k_pe = apply_rope(k_rope.view(bsz, 1, q_len, self.rope_dim), cos, sin)
            # expand is a view (no per-head copy); the cat gives keys [B, H, T, d + r]
            k = torch.cat((k, k_pe.expand(bsz, h, q_len, self.rope_dim)), dim=-1)

        if past_key_values is not None:  # cache the rotated keys; get the whole sequence back
            k, v = past_key_values.update(k, v, self.layer_idx)  # [B, H, past + T, *]

        out_dtype = q.dtype
        fp32_attention = q.dtype == torch.bfloat16 and q.device.type == "cpu"
        if fp32_attention:
            # CPU flash attention is slower in bf16 than in fp32 (docs/train.md has the
            # figures); attention is a small share of the FLOPs, so run it in fp32.
            # Autocast must be off around the call: it would cast fp32 inputs back to bf16.
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast("cpu", enabled=False) if fp32_attention else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=is_causal,
            )
        # [B, H, T, dv] -> [B, T, H*dv]: the heads side by side again for o_proj
        y = y.to(out_dtype).transpose(1, 2).reshape(bsz, q_len, h * self.v_head_dim)
        return self.o_proj(y)


def sdpa_mask(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(attn_mask, is_causal) for SDPA; ``None, True`` on the training fast path."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask, False  # caller built the full mask already
    if attention_mask is None:
        if past_len == 0:
            return None, q_len > 1  # SDPA's own causal mask; one token needs none
        if q_len == 1:
            return None, False  # one new token sees the whole cache
    kv_len = past_len + q_len
    if attention_mask is not None and attention_mask.shape[-1] != kv_len:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[-1]} positions but the cache "
            f"plus input hold {kv_len}; pass the mask of the whole sequence so far"
        )
    q_idx = torch.arange(past_len, kv_len, device=device)[:, None]  # new tokens' positions
    k_idx = torch.arange(kv_len, device=device)[None, :]
    mask = k_idx <= q_idx  # [T, kv_len], True = may attend (causal over cache + input)
    if attention_mask is not None:
        # [B, kv_len] padding mask -> [B, 1, 1, kv_len]: broadcast over heads and queries
        keep = attention_mask[:, None, None, -kv_len:].to(device=device, dtype=torch.bool)
        # A padded query row would see no key at all (softmax of all -inf = NaN, which
        # then leaks through 0 * NaN); letting every query see itself keeps it finite.
        mask = (mask & keep) | (k_idx == q_idx)
    else:
        mask = mask[None, None]  # broadcast over batch and heads
    return mask, False
