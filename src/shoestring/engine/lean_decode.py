"""A lean forward for Llama-family models (Llama, Qwen2, Mistral) and the shoestring GPT's
plain variants: the one-token decode step, and the same step over a prompt's tokens (the
prefill). This module is one idea: the model's forward with nothing around its arithmetic that
generation does not need.

Why: a decode step multiplies one token per row by every weight of the model. On a small model
most of the step is overhead, not arithmetic: Python and small tensors - masks rebuilt every
step, module dispatch, three separate q/k/v products; on a 0.5B-class model on a CPU, the
bf16 matmuls themselves run far below the host's rate because oneDNN reorders each weight on
every call. ``benchmarks/decode_step.py`` (small models) and ``benchmarks/decode_profile.py``
(Qwen2.5-0.5B's shape, against the host's memory and matmul rates) measure the step against
the transformers forward, interleaved; the figures are in docs/generate.md.

:class:`LeanDecoder` runs the same arithmetic with less around it: the model's own weights
(q/k/v and gate/up concatenated into one product each when the copy is small; weights on a CPU
prepacked for oneDNN or shoestring's AVX2 kernel, :mod:`~shoestring.engine.packed_linear`,
under its exactness policy), one
attention mask per step for all layers, the model's own rotary embedding, and the engine's KV
cache updated through its public ``update``. Anything it does not recognise - another
architecture, sliding-window layers, the GPT's low-rank or decoupled-RoPE attention, hooks,
wrapped embeddings (:mod:`.lean_support` decides) - makes :meth:`LeanDecoder.build` return
``None`` and the engine uses the model's own forward; a linear layer it cannot read (peft LoRA,
quantised) is called as its own module. The tests check its logits against the model's forward
for each supported family and variant, with and without biases, grouped heads, RoPE scaling,
bf16 with the CPU's fp32 cache, autocast, and peft LoRA layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import shoestring.engine.decode_glue as decode_glue
from shoestring.engine.cpu_attention import mask_bias, single_query_attention
from shoestring.engine.lean_support import (
    SHOESTRING_GPT,
    gpt_norm,
    llama_norm,
    plain_linear,
    unsupported,
)
from shoestring.engine.packed_linear import (
    PackedWeight,
    can_pack,
    fp32_kernel,
    pack_weight,
    packed_linear,
)
from shoestring.engine.weight_packs import WeightPacks
from shoestring.models.attention import sdpa_mask
from shoestring.models.rope import apply_rope, rotate_half

# Concatenating q/k/v (and gate/up) costs a copy of those weights per generation call; above
# this size the products are large enough that one fused launch saves nothing measurable.
FUSE_MAX_BYTES = 128 * 2**20


@dataclass(frozen=True)
class _Packing:
    """How a decoder multiplies its weights: prepacked (``pack``) for ``kernel``; through a
    caller's kept copies (``packs``) where given; fp32 weights that are all bf16 values copied
    in bf16 for the AVX2 kernel (``bf16_copies``: lossless, half the bytes)."""

    pack: bool
    kernel: str
    packs: WeightPacks | None = None
    bf16_copies: bool = False


class _Proj:
    """One or more linear layers applied to the same input, their outputs split back apart.

    Fused (one concatenated weight) when every part is a plain ``nn.Linear`` and the copy is
    allowed; otherwise each part is called as its own module (peft LoRA layers, quantised
    layers), which is exactly what the model's forward does. With ``pack``, a plain or fused
    weight is multiplied prepacked for its kernel (:mod:`~shoestring.engine.packed_linear`:
    bit-identical in bf16, within fp32 rounding in fp32). With a caller's kept ``packs``
    (:class:`~.weight_packs.WeightPacks`, AVX2 fp32), each part is multiplied through its own
    kept copy instead: the copies the caller's training pass multiplies through too."""

    def __init__(self, mods: list[Any], fuse: bool, how: _Packing) -> None:
        pack, kernel, packs = how.pack, how.kernel, how.packs
        self.mods = mods
        self.sizes = [m.out_features for m in mods]
        self.weight: torch.Tensor | None = None  # the plain or concatenated weight
        self.bias: torch.Tensor | None = None
        self.packed: PackedWeight | None = None  # the same, prepacked (then ``weight`` is None)
        self.parts: list[PackedWeight] = []  # one kept copy per part (then nothing fused)
        plain = all(plain_linear(m) for m in mods)
        fp32 = all(m.weight.dtype == torch.float32 for m in mods)
        if plain and fp32 and pack and packs is not None and kernel == "avx2":
            self.parts = [packs.get(m.weight) for m in mods]
            return
        # packing copies the weights anyway, so packed parts are always concatenated
        if not plain or not (len(mods) == 1 or fuse or pack):
            return
        biases = [m.bias for m in mods]
        weight = mods[0].weight if len(mods) == 1 else torch.cat([m.weight for m in mods])
        if len(mods) == 1:
            self.bias = biases[0]
        elif any(b is not None for b in biases):
            self.bias = torch.cat(
                [
                    b if b is not None else m.weight.new_zeros(m.out_features)
                    for m, b in zip(mods, biases, strict=True)
                ]
            )
        if pack:
            self.packed = pack_weight(weight, kernel, how.bf16_copies)
        else:
            self.weight = weight

    @property
    def single(self) -> bool:
        """One product for all parts (plain, concatenated or packed)."""
        return self.weight is not None or self.packed is not None

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        assert self.weight is not None
        return F.linear(x, self.weight, self.bias)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.parts:
            return [packed_linear(x, p, m.bias) for p, m in zip(self.parts, self.mods, strict=True)]
        if self.single:
            y = self._linear(x)
            return list(y.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]
        return [m(x) for m in self.mods]

    def fused(self, x: torch.Tensor) -> torch.Tensor | None:
        """The whole concatenated output, where the parts are fused (else ``None``)."""
        if not self.single or len(self.sizes) == 1:
            return None
        return self._linear(x)


def _fused_bytes(model: Any) -> int:
    total = 0
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        groups = [(a.q_proj, a.k_proj, a.v_proj)]
        if hasattr(m, "gate_proj"):
            groups.append((m.gate_proj, m.up_proj))
        for mods in groups:
            if all(plain_linear(x) for x in mods):
                total += sum(x.weight.numel() * x.weight.element_size() for x in mods)
    return total


def _plain_weights(model: Any) -> list[torch.Tensor]:
    """The weights the lean step multiplies through ``F.linear``: every plain linear layer of
    the decoder layers, and the output head."""
    out = [m.weight for layer in model.model.layers for m in layer.modules() if plain_linear(m)]
    return [*out, model.lm_head.weight]


class _Layer:
    def __init__(self, layer: Any, gpt: bool, fuse: bool, how: _Packing) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        make_norm = gpt_norm if gpt else llama_norm
        n1, n2 = make_norm(layer.input_layernorm), make_norm(layer.post_attention_layernorm)
        assert n1 is not None and n2 is not None  # checked by _supported
        self.norm1, self.norm2 = n1, n2
        self.qkv = _Proj([attn.q_proj, attn.k_proj, attn.v_proj], fuse, how)
        self.o = _Proj([attn.o_proj], False, how)
        self.swiglu = not gpt or mlp.kind == "swiglu"
        if self.swiglu:
            self.up = _Proj([mlp.gate_proj, mlp.up_proj], fuse, how)
            self.down = _Proj([mlp.down_proj], False, how)
        else:  # the GPT's GELU MLP: fc -> GELU -> proj
            self.up = _Proj([mlp.fc], False, how)
            self.down = _Proj([mlp.proj], False, how)
        if gpt:
            self.scaling = float(attn.qk_head_dim) ** -0.5  # SDPA's default, as the GPT uses
        else:
            self.scaling = float(attn.scaling)  # the model's own (may differ from 1/sqrt(d))
        # the RMSNorms' weights and epsilons, for the glued step (decode_glue)
        norms = () if gpt else (layer.input_layernorm, layer.post_attention_layernorm)
        self.rms = [(m.weight, float(m.variance_epsilon)) for m in norms]
        # the glued step's conditions on a layer: fp32 RMSNorms (the products may be fused,
        # kept copies or the modules themselves: it reads their outputs)
        self.gluable = not gpt and all(w.dtype == torch.float32 for w, _ in self.rms)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = self.up(x)  # one fused product split in two where allowed
            # in place on silu's fresh output: one activation-sized buffer, not two (same bits)
            return self.down(F.silu(gate).mul_(up))[0]
        return self.down(F.gelu(self.up(x)[0]))[0]


class LeanDecoder:
    """One-token forward of a supported model; build with :meth:`build` per generation call
    (fused weights are copies of the weights at that moment)."""

    def __init__(
        self,
        model: Any,
        fuse: bool,
        pack: bool = False,
        kernel: str = "auto",
        packs: WeightPacks | None = None,
        bf16_copies: bool = False,
        glue: bool = True,
    ) -> None:
        self.model = model
        how = _Packing(pack, kernel, packs, bf16_copies)
        self.gpt = type(model).__name__ == SHOESTRING_GPT
        inner = model.model
        self.inner = inner
        cfg = model.config
        if self.gpt:
            self.n_heads = self.n_kv = int(cfg.n_heads)
            self.head_dim, self.v_head_dim = int(cfg.head_dim), int(cfg.value_head_dim)
            self.rope = cfg.position == "rope"
            norm = gpt_norm(inner.norm)
        else:
            attn0 = inner.layers[0].self_attn
            self.n_heads = int(cfg.num_attention_heads)
            self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
            self.head_dim = self.v_head_dim = int(attn0.head_dim)
            self.rope = True
            norm = llama_norm(inner.norm)
        assert norm is not None
        self.final_norm = norm
        self.layers = [_Layer(layer, self.gpt, fuse, how) for layer in inner.layers]
        self.fused = fuse
        self.packed = pack
        self.head = _Proj([model.lm_head], False, how)
        # a CPU decode step's work between products in C (decode_glue), where it all fits
        self.glue = (
            glue
            and not self.gpt
            and all(layer.gluable for layer in self.layers)
            and inner.norm.weight.dtype == torch.float32
            and self.head_dim % 8 == 0
            and self.head_dim <= decode_glue.MAX_HEAD_DIM
            and self.n_heads % self.n_kv == 0
            and self.n_heads // self.n_kv <= decode_glue.MAX_GROUP
            and decode_glue.available()
        )

    @classmethod
    def build(
        cls,
        model: Any,
        fuse: bool | None = None,
        pack: bool | None = None,
        kernel: str = "auto",
        packs: WeightPacks | None = None,
        bf16_copies: bool = False,
        glue: bool = True,
    ) -> LeanDecoder | None:
        """A decoder for ``model``, or ``None`` where only the model's own forward is right.

        ``pack`` (default: where :func:`~shoestring.engine.packed_linear.can_pack` allows it,
        i.e. bf16 weights, or fp32 weights too big for the caches, on a CPU with memory to
        spare) multiplies prepacked weights; ``kernel`` picks the fp32 kernel
        (:func:`~shoestring.engine.packed_linear.fp32_kernel`); ``packs``, the caller's kept
        copies (:class:`~.weight_packs.WeightPacks`), are used where the weights are packed
        for the AVX2 kernel, instead of copies made for this decoder; ``bf16_copies`` stores
        the AVX2 kernel's copy of an fp32 weight whose values are all bf16 values in bf16 - the
        same products bit for bit from half the bytes, faster where a step has few rows
        (:data:`~.packed_linear.BF16_COPIES_MAX_ROWS`); ``glue`` runs a CPU decode step's
        work between its products in C (:mod:`.decode_glue`) where the model allows it."""
        if unsupported(model) is not None:
            return None
        if fuse is None:
            fuse = _fused_bytes(model) <= FUSE_MAX_BYTES
        if kernel == "auto":  # read the host class once, not once per weight
            kernel = fp32_kernel()
        if pack is None:
            pack = can_pack(_plain_weights(model), kernel)
        return cls(model, fuse, pack, kernel, packs, bf16_copies, glue)

    def _embed(
        self, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Hidden states [B, S, D] and cos/sin [B, S, 1, d] (``None`` without RoPE)."""
        # F.embedding, not the module: no dispatch, same lookup; [B, S] -> [B, S, D]
        h = F.embedding(input_ids, self.inner.embed_tokens.weight)
        if not self.gpt:
            cos, sin = self.inner.rotary_emb(h, positions)  # [B, S, d] in h's dtype
            return h, (cos[:, :, None], sin[:, :, None])  # broadcast over heads
        if self.inner.embed_positions is not None:
            h = h + F.embedding(positions, self.inner.embed_positions.weight)
        if not self.rope:
            return h, None
        cos, sin = self.inner._rope_cos_sin(positions, h.device)  # fp32 [B, 1, S, d]
        return h, (cos.transpose(1, 2), sin.transpose(1, 2))

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
        return self.forward(input_ids[:, None], mask, positions[:, None], cache)

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """Logits (fp32, [B, V]) of the token after the last of ``input_ids`` [B, S] at
        ``positions`` [B, S]; ``mask`` [B, T] covers the cache plus these S tokens. Appends
        their keys and values to ``cache``. S = 1 is a decode step; S > 1 is a prefill (or a
        refill's), which gains the same fused, prepacked products: the model's own forward
        would multiply a prompt's few hundred rows by the unpacked weights."""
        s = input_ids.shape[1]
        h, rope = self._embed(input_ids, positions)
        bias = None
        if s == 1:
            attn_mask = mask[:, None, None, :].bool()  # [B, 1, 1, T], shared by every layer
            # the same mask as an additive fp32 bias, for the CPU's single-query attention
            bias = mask_bias(attn_mask) if input_ids.device.type == "cpu" else None
            if bias is not None and self._glued(h, cache):
                assert rope is not None
                return self.head(self._glued_layers(h, rope, bias, cache))[0].float()
        else:  # causal over cache + input, padding masked; the forward's own rule
            attn_mask, _ = sdpa_mask(mask, s, mask.shape[1] - s, mask.device)  # [B, 1, S, T]

        def attend(
            i: int, layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
        ) -> torch.Tensor:
            keys, values = cache.update(k, v, i)  # [B, hkv, T, d], these tokens' included
            return self._attend(q, keys, values, attn_mask, bias, layer.scaling)

        h = self._layers(h, rope, attend)
        h = self.final_norm(h[:, -1])  # only the last position's logits are wanted
        return self.head(h)[0].float()  # [B, D] -> [B, V], fp32 for sampling

    def prefill_sequences(
        self,
        ids_list: list[list[int]],
        place: Callable[[int, int, torch.Tensor, torch.Tensor], None],
        store_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Logits (fp32, [N, V]) of the token after each of ``ids_list``'s N prompts, run as
        one sequence of all their tokens: no padding, and every product as tall as the
        prompts together. Attention stays within each prompt (causal), and ``place(layer,
        prompt, keys, values)`` receives each prompt's keys and values [1, hkv, len, d] per
        layer, for the caller to write into its cache (``store_dtype``: the cache's dtype,
        which attention reads them in, as the model's forward reads its cache)."""
        lengths = [len(x) for x in ids_list]
        ids = torch.tensor([t for x in ids_list for t in x], dtype=torch.long)
        positions = torch.cat([torch.arange(n) for n in lengths])  # each prompt from 0
        device = self.inner.embed_tokens.weight.device
        h, rope = self._embed(ids.to(device)[None], positions.to(device)[None])  # [1, N, D]
        ends = torch.tensor(lengths).cumsum(0).tolist()
        starts = [e - n for e, n in zip(ends, lengths, strict=True)]

        def attend(
            i: int, layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
        ) -> torch.Tensor:
            outs = []
            for j, (a, e) in enumerate(zip(starts, ends, strict=True)):
                ks, vs = k[:, :, a:e], v[:, :, a:e]
                place(i, j, ks, vs)
                if store_dtype is not None:
                    ks, vs = ks.to(store_dtype), vs.to(store_dtype)
                # no mask: causal within the prompt, which has no padding
                outs.append(self._attend(q[:, :, a:e], ks, vs, None, None, layer.scaling))
            return torch.cat(outs, dim=2)  # [1, hq, N, dv]

        h = self._layers(h, rope, attend)
        last = torch.tensor([e - 1 for e in ends], device=device)
        h = self.final_norm(h[0].index_select(0, last))  # [N prompts, D]
        return self.head(h)[0].float()

    def _layers(
        self,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attend: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """Every decoder layer over hidden states ``h`` [B, S, D]; ``attend(layer index,
        layer, q, k, v)`` (each [B, heads, S, d], k/v rotated) stores the keys and values
        where the caller keeps them and returns the attention output [B, hq, S, dv]."""
        b, s = h.shape[:2]
        hq, hkv, d, dv = self.n_heads, self.n_kv, self.head_dim, self.v_head_dim
        for i, layer in enumerate(self.layers):
            x = layer.norm1(h)
            # q/k as [B, S, heads, d]; RoPE on both with one rotation where they are adjacent
            # columns of the fused product (dtypes as the model's own forward gets them)
            y = layer.qkv.fused(x)
            if y is not None:
                # fused columns: [q heads | k heads | v heads]; q and k rotate as one tensor
                qk = y[..., : (hq + hkv) * d].view(b, s, hq + hkv, d)
                v = y[..., (hq + hkv) * d :]
                if rope is not None:
                    qk = self._rotate(qk, rope)
                q, k = qk.split([hq, hkv], dim=2)
            else:
                q, k, v = layer.qkv(x)
                q, k = q.view(b, s, hq, d), k.view(b, s, hkv, d)
                if rope is not None:
                    q, k = self._rotate(q, rope), self._rotate(k, rope)
            # [B, S, heads, d] -> [B, heads, S, d]: the cache and SDPA want heads first
            out = attend(
                i,
                layer,
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.view(b, s, hkv, dv).transpose(1, 2),
            )
            # [B, hq, S, dv] -> [B, S, hq*dv]; back to the activations' dtype (fp32 cache)
            h = h + layer.o(out.transpose(1, 2).reshape(b, s, hq * dv).to(x.dtype))[0]
            h = h + layer.mlp(layer.norm2(h))
        return h

    def _glued(self, h: torch.Tensor, cache: Any) -> bool:
        """Whether this decode step runs its work between products in C: a model it fits
        (``self.glue``), fp32 activations outside autocast, the engine's fp32 cache."""
        return (
            self.glue
            and h.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and decode_glue.cache_ready(cache)
        )

    def _glued_layers(
        self,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        bias: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """:meth:`_layers` and the final norm for one token per row, with the work between
        products in C (:func:`.decode_glue.decode_layers`); the final norm's output [B, D]."""
        heads = (self.n_heads, self.n_kv, self.head_dim)
        return decode_glue.decode_layers(self.layers, self.inner.norm, h, rope, bias, cache, heads)

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cos, sin = rope
        if self.gpt:  # the GPT's own rotation (cos/sin cast to the activations' dtype)
            return apply_rope(x, cos, sin)
        return x * cos + rotate_half(x) * sin  # transformers': dtypes promoted

    def _attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attn_mask: torch.Tensor | None,
        bias: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """Attention of the new queries [B, hq, S, d] over the cache, in the cache's dtype
        (fp32 for the CPU's fp32 cache of a bf16 model, as the engine's registered attention
        does); the GPT upcasts bf16 attention on a CPU to fp32, as its forward does. On a CPU
        (``bias`` given) it is :func:`single_query_attention`, in fp32. Without a mask it is
        causal over S queries and S keys (one unpadded prompt: SDPA's own causal kernel)."""
        if bias is not None:
            out = single_query_attention(q, keys, values, bias, scale)
            return out if self.gpt else out.to(keys.dtype)
        upcast = self.gpt and q.dtype == torch.bfloat16 and q.device.type == "cpu"
        if upcast:
            q, keys, values = q.float(), keys.float(), values.float()
        else:
            q = q.to(keys.dtype)
        ctx = torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext()
        with ctx:
            return F.scaled_dot_product_attention(
                q,
                keys,
                values,
                attn_mask=attn_mask,
                is_causal=attn_mask is None,
                scale=scale,
                enable_gqa=keys.shape[1] != q.shape[1],  # fewer kv heads: no repeat copy
            )


__all__ = [
    "FUSE_MAX_BYTES",
    "LeanDecoder",
]
