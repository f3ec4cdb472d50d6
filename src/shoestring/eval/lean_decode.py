"""A lean one-token decode step for Llama-family models (Llama, Qwen2, Mistral).

Why: a decode step of a small model on a CPU is mostly overhead, not arithmetic. For a 3.3M-
parameter Qwen2 (hidden 256, 4 layers) and 16 rows, the transformers forward takes ~2.8 ms a
token, of which the matrix products are ~0.8 ms; the rest is Python and small tensors: masks
rebuilt every step, module dispatch, three separate q/k/v products. GRPO and ``bench`` on
small models spend most of their time there.

:class:`LeanDecoder` runs the same arithmetic with less around it: the model's own weights
(q/k/v and gate/up concatenated into one product each when the copy is small), one attention
mask per step for all layers, the model's own rotary module, and the engine's KV cache updated
through its public ``update``. Anything it does not recognise - another architecture,
sliding-window layers, hooks, wrapped embeddings - makes :meth:`LeanDecoder.build` return
``None`` and the engine uses the transformers forward; a linear layer it cannot read (peft
LoRA, quantised) is called as its own module. The tests check its logits against the
transformers forward for each supported family, with and without biases, grouped heads, RoPE
scaling, bf16 with the CPU's fp32 cache, autocast, and peft LoRA layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Architectures whose decoder layer is exactly: x + o(attn(rope(q, k), v)) of rmsnorm(x), then
# x + down(silu(gate) * up) of rmsnorm(x), with HF's rotate-half RoPE.
SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}
# Concatenating q/k/v (and gate/up) costs a copy of those weights per generation call; above
# this size the products are large enough that one fused launch saves nothing measurable.
FUSE_MAX_BYTES = 128 * 2**20


def _plain_linear(m: Any) -> bool:
    return type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


class _Proj:
    """One or more linear layers applied to the same input, their outputs split back apart.

    Fused (one concatenated weight) when every part is a plain ``nn.Linear`` and the copy is
    allowed; otherwise each part is called as its own module (peft LoRA layers, quantised
    layers), which is exactly what the transformers forward does."""

    def __init__(self, mods: list[Any], fuse: bool) -> None:
        self.mods = mods
        self.sizes = [m.out_features for m in mods]
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        if len(mods) == 1 and _plain_linear(mods[0]):
            self.weight, self.bias = mods[0].weight, mods[0].bias
        elif fuse and all(_plain_linear(m) for m in mods):
            biases = [m.bias for m in mods]
            self.weight = torch.cat([m.weight for m in mods])
            if any(b is not None for b in biases):
                self.bias = torch.cat(
                    [
                        b if b is not None else m.weight.new_zeros(m.out_features)
                        for m, b in zip(mods, biases, strict=True)
                    ]
                )

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.weight is not None:
            y = F.linear(x, self.weight, self.bias)
            return list(y.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]
        return [m(x) for m in self.mods]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: fp32 statistics, weight applied in the input dtype. In fp32
    that is exactly torch's fused ``rms_norm`` (one kernel instead of seven); otherwise it is
    done op for op, so the lean step gives the same numbers."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


_RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")


def _norm_params(m: Any) -> tuple[torch.Tensor, float] | None:
    """(weight, eps) of a transformers RMSNorm this module can replace, else ``None``."""
    weight = getattr(m, "weight", None)
    eps = getattr(m, "variance_epsilon", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(eps, float):
        return None
    if m._forward_hooks or m._forward_pre_hooks or type(m).__name__ not in _RMS_NORMS:
        return None
    return weight, eps


class _Layer:
    def __init__(self, layer: Any, fuse: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        n1 = _norm_params(layer.input_layernorm)
        n2 = _norm_params(layer.post_attention_layernorm)
        assert n1 is not None and n2 is not None  # checked by _supported
        self.n1, self.n2 = n1, n2
        self.qkv = _Proj([attn.q_proj, attn.k_proj, attn.v_proj], fuse)
        self.o = _Proj([attn.o_proj], False)
        self.gate_up = _Proj([mlp.gate_proj, mlp.up_proj], fuse)
        self.down = _Proj([mlp.down_proj], False)
        self.scaling = float(attn.scaling)


def _supported(model: Any) -> str | None:
    """``None`` when the lean step reproduces this model's forward, else the reason not."""
    if type(model).__name__ not in SUPPORTED:
        return f"architecture {type(model).__name__}"
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if cfg is None or inner is None or not hasattr(inner, "layers"):
        return "no decoder layers"
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
    for m in model.modules():
        if getattr(m, "_hf_hook", None) is not None or m._forward_hooks or m._forward_pre_hooks:
            return "module hooks (offloading, instrumentation, input grads)"
    if type(inner.embed_tokens) is not nn.Embedding or not _plain_linear(model.lm_head):
        return "wrapped embedding or output layer"
    if _norm_params(inner.norm) is None:
        return "final norm"
    for layer in inner.layers:
        attn = layer.self_attn
        if getattr(attn, "sliding_window", None):
            return "sliding-window attention"
        if _norm_params(layer.input_layernorm) is None:
            return "layer norm"
        if _norm_params(layer.post_attention_layernorm) is None:
            return "layer norm"
        if not hasattr(layer.mlp, "gate_proj"):
            return "MLP layout"
    return None


def _fused_bytes(inner: Any) -> int:
    total = 0
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        for mods in ((a.q_proj, a.k_proj, a.v_proj), (m.gate_proj, m.up_proj)):
            if all(_plain_linear(x) for x in mods):
                total += sum(x.weight.numel() * x.weight.element_size() for x in mods)
    return total


class LeanDecoder:
    """One-token forward of a supported model; build with :meth:`build` per generation call
    (fused weights are copies of the weights at that moment)."""

    def __init__(self, model: Any, fuse: bool) -> None:
        self.model = model
        inner = model.model
        self.inner = inner
        cfg = model.config
        attn0 = inner.layers[0].self_attn
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(attn0.head_dim)
        self.layers = [_Layer(layer, fuse) for layer in inner.layers]
        norm = _norm_params(inner.norm)
        assert norm is not None
        self.norm_w, self.norm_eps = norm
        self.fused = fuse

    @classmethod
    def build(cls, model: Any, fuse: bool | None = None) -> LeanDecoder | None:
        """A decoder for ``model``, or ``None`` where only the transformers forward is right."""
        if _supported(model) is not None:
            return None
        if fuse is None:
            fuse = _fused_bytes(model.model) <= FUSE_MAX_BYTES
        return cls(model, fuse)

    def step(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """Logits (fp32, [B, V]) of the next token after ``input_ids`` [B] at ``positions``
        [B]; ``mask`` [B, T] covers the cache plus this token (1 = attend). Appends this
        token's keys and values to ``cache`` (a transformers ``Cache``)."""
        b = input_ids.shape[0]
        hq, hkv, d = self.n_heads, self.n_kv, self.head_dim
        h = F.embedding(input_ids[:, None], self.inner.embed_tokens.weight)  # [B, 1, D]
        cos, sin = self.inner.rotary_emb(h, positions[:, None])  # [B, 1, d]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, 1, d]: broadcast over heads
        attn_mask = mask[:, None, None, :].bool()  # [B, 1, 1, T], shared by every layer
        for i, layer in enumerate(self.layers):
            x = _rms_norm(h, *layer.n1)
            # [B, 1, heads, d]: RoPE on q and k (dtypes promoted as transformers does); one
            # rotation for both where they are adjacent columns of one fused product
            if layer.qkv.weight is not None:
                y = F.linear(x, layer.qkv.weight, layer.qkv.bias)
                qk = y[..., : (hq + hkv) * d].view(b, 1, hq + hkv, d)
                qk = qk * cos + _rotate_half(qk) * sin
                q, k = qk.split([hq, hkv], dim=2)
                v = y[..., (hq + hkv) * d :]
            else:
                q, k, v = layer.qkv(x)
                q = q.view(b, 1, hq, d)
                k = k.view(b, 1, hkv, d)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            keys, values = cache.update(
                k.transpose(1, 2), v.view(b, 1, hkv, d).transpose(1, 2), i
            )  # [B, hkv, T, d]
            # attention of the one new query over the cache; in the cache's dtype (fp32 for the
            # CPU's fp32 cache of a bf16 model, as the engine's registered attention does)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2).to(keys.dtype),
                keys,
                values,
                attn_mask=attn_mask,
                scale=layer.scaling,
                enable_gqa=hkv != hq,
            )
            out = out.transpose(1, 2).reshape(b, 1, hq * d).to(x.dtype)
            h = h + layer.o(out)[0]
            x = _rms_norm(h, *layer.n2)
            gate, up = layer.gate_up(x)
            h = h + layer.down(F.silu(gate) * up)[0]
        h = _rms_norm(h, self.norm_w, self.norm_eps)
        return F.linear(h[:, -1], self.model.lm_head.weight, self.model.lm_head.bias).float()


__all__ = ["FUSE_MAX_BYTES", "SUPPORTED", "LeanDecoder"]
