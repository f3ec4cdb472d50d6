"""The CPU decode step's work between products in C (engine/decode_glue.py): the same results as
the model's forward within fp32 rounding, on every path the C file has, and a fallback to torch
operations wherever its conditions do not hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from shoestring.engine import decode_glue, make_cache
from shoestring.engine.cpu_attention import mask_bias, single_query_attention
from shoestring.engine.lean_decode import LeanDecoder
from test_lean_decode import VOCAB, compare_steps, make, with_lora

pytestmark = pytest.mark.skipif(
    not decode_glue.available(), reason=f"no decode glue here: {decode_glue.build_error()}"
)

WIDE = {"hidden_size": 128, "intermediate_size": 64}  # 32-wide heads: the vectorised RoPE


@pytest.fixture
def glued_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the decode steps that went through the glued layers."""
    calls = {"n": 0}
    real = LeanDecoder._glued_layers

    def counting(self, *args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(self, *args)

    monkeypatch.setattr(LeanDecoder, "_glued_layers", counting)
    return calls


@pytest.mark.parametrize("shape", [{}, WIDE], ids=["8-wide heads", "32-wide heads"])
@pytest.mark.parametrize("family", ["llama", "llama_bias_rope", "qwen2", "mistral"])
def test_glued_step_equals_the_models_forward(
    family: str, shape: dict, glued_steps: dict[str, int]
) -> None:
    """Left-padded rows, grouped heads (2 and 4 query heads per kv head), biases, scaled RoPE:
    the glued steps' logits within fp32 rounding of the transformers forward's."""
    model = make(family, **shape)
    lean = LeanDecoder.build(model)
    assert lean is not None and lean.glue
    compare_steps(model)
    assert glued_steps["n"] == 6  # every decode step of compare_steps


def test_glued_steps_grow_the_cache_and_match_the_torch_steps() -> None:
    """Past the cache's reserve the glued step grows it (doubling) and keeps going: 40 steps of
    three left-padded rows, against the same decoder with torch operations."""
    model = make("qwen2", **WIDE)
    glued, plain = LeanDecoder.build(model), LeanDecoder.build(model, glue=False)
    assert glued is not None and plain is not None and glued.glue and not plain.glue
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = mask[2, :4] = 0
    caches = [make_cache(model, 1), make_cache(model, 1)]  # one free position past the prompt
    with torch.inference_mode():
        prompt_pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = [
            d.forward(ids, mask, prompt_pos, c) for d, c in zip((glued, plain), caches, strict=True)
        ]
        pos = mask.sum(-1)
        for _ in range(40):
            nxt = logits[1].argmax(-1)
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=1)
            logits = [
                d.step(nxt, mask, pos, c) for d, c in zip((glued, plain), caches, strict=True)
            ]
            torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
            pos = pos + 1
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == 6 + 40
    torch.testing.assert_close(caches[0].layers[0].keys, caches[1].layers[0].keys)


def test_where_the_glue_does_not_apply_the_step_uses_torch_operations(
    monkeypatch: pytest.MonkeyPatch, glued_steps: dict[str, int]
) -> None:
    """bf16 weights, autocast, a transformers DynamicCache, the shoestring GPT, and a host where
    the library cannot be built: no glued step, and the same logits as the model's forward."""
    assert not LeanDecoder.build(make("qwen2").to(torch.bfloat16)).glue  # type: ignore[union-attr]
    assert not LeanDecoder.build(make("gpt_llama_like")).glue  # type: ignore[union-attr]
    model = make("llama")
    lean = LeanDecoder.build(model)
    assert lean is not None and lean.glue
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 4, dtype=torch.long)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        lean.forward(ids, mask[:, :3], torch.arange(3)[None], cache)
        got = lean.step(torch.tensor([8]), mask, torch.tensor([3]), cache)
        want = model(input_ids=torch.tensor([[5, 6, 7, 8]]), attention_mask=mask).logits[:, -1]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        cache = make_cache(model, 4)
        lean.forward(ids, mask[:, :3], torch.arange(3)[None], cache)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lean.step(torch.tensor([8]), mask, torch.tensor([3]), cache)
    assert glued_steps["n"] == 0
    monkeypatch.setattr(decode_glue, "_library", lambda: (None, "no compiler"))
    assert not decode_glue.available() and decode_glue.build_error() == "no compiler"
    assert not LeanDecoder.build(model).glue  # type: ignore[union-attr]


@pytest.mark.parametrize("width", [4000, 4003])
def test_silu_mul_is_torchs_within_rounding_over_the_whole_range(width: int) -> None:
    """The polynomial exp behind SiLU: within a few ulp of torch's, from e^-100 (0 for both)
    to e^100 (inf: silu(-100) is -0), on the halves of one product's rows and on separate
    tensors alike, a width that is a multiple of 8 and one that is not."""
    g = torch.Generator().manual_seed(0)
    n = width // 2
    gate = torch.cat([torch.linspace(-100, 100, n), torch.randn(width - n, generator=g) * 5])
    gu = torch.cat([gate.view(1, -1), torch.randn(1, width, generator=g)], dim=1)
    gu = torch.cat([gu, gu.flip(1)]).contiguous()  # two rows
    got = decode_glue.silu_mul(gu[:, :width], gu[:, width:])  # halves of one product's rows
    want = F.silu(gu[:, :width]) * gu[:, width:]
    torch.testing.assert_close(got, want, atol=1e-30, rtol=4e-7)
    separate = decode_glue.silu_mul(gu[:, :width].clone(), gu[:, width:].clone())
    assert torch.equal(separate, got)


@pytest.mark.parametrize(("rows", "cached", "heads"), [(1, 5, (4, 4, 8)), (4, 300, (14, 2, 64))])
def test_attention_is_sdpas_and_never_reads_masked_positions(
    rows: int, cached: int, heads: tuple[int, int, int]
) -> None:
    """The glued attention (one thread at few positions, threads over rows and kv heads at
    many) against the plain fp32 single-query attention: masked positions hold huge values,
    which must not leak into any output; this token's rotated key and its value land in the
    cache's next column."""
    hq, hkv, d = heads
    g = torch.Generator().manual_seed(1)
    model = make("qwen2")  # only for a cache layer's class and bookkeeping
    cache = make_cache(model, 2)
    keys = torch.randn(rows, hkv, cached, d, generator=g)
    values = torch.randn(rows, hkv, cached, d, generator=g)
    mask = torch.ones(rows, cached + 1, dtype=torch.bool)
    mask[0, : cached // 2] = False  # a left-padded row
    keys[0, :, : cached // 2] = 1e4
    values[0, :, : cached // 2] = 1e4
    cache.update(keys, values, 0)
    layer = cache.layers[0]
    qkv = torch.randn(rows, (hq + 2 * hkv) * d, generator=g)
    angles = torch.randn(rows, d // 2, generator=g)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    bias = mask_bias(mask)
    parts = qkv.split([hq * d, hkv * d, hkv * d], dim=1)  # columns of one product's rows
    out = decode_glue.attend(*parts, cos, sin, layer, bias, heads, 0.125)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x [rows, heads, d]
        rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
        return x * cos[:, None] + rotated * sin[:, None]

    q = rope(qkv[:, : hq * d].view(rows, hq, d))
    k = rope(qkv[:, hq * d : (hq + hkv) * d].view(rows, hkv, d))
    v = qkv[:, (hq + hkv) * d :].view(rows, hkv, d)
    torch.testing.assert_close(layer.keys[:, :, -1], k, atol=1e-6, rtol=1e-6)
    assert torch.equal(layer.values[:, :, -1], v)
    want = single_query_attention(
        q[:, :, None], layer.keys, layer.values, bias[:, None, None], 0.125
    )
    torch.testing.assert_close(out, want.reshape(rows, hq * d), atol=1e-5, rtol=1e-5)
    assert float(out.abs().max()) < 100  # nothing of the 1e4 padding leaked in


@pytest.mark.parametrize("dim", [896, 899])
def test_rmsnorm_adds_the_residual_in_place(dim: int) -> None:
    g = torch.Generator().manual_seed(2)
    h, delta = torch.randn(3, dim, generator=g), torch.randn(3, dim, generator=g)
    weight = torch.randn(dim, generator=g)
    want_h = h + delta
    want = weight * (want_h * torch.rsqrt(want_h.pow(2).mean(-1, keepdim=True) + 1e-6))
    out = decode_glue.add_rmsnorm(h, delta, weight, 1e-6)
    torch.testing.assert_close(h, want_h, atol=0, rtol=0)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)
    alone = decode_glue.add_rmsnorm(want_h.clone(), None, weight, 1e-6)  # no residual add
    assert torch.equal(alone, out)


def test_lora_layers_run_as_modules_through_the_glued_step(glued_steps: dict[str, int]) -> None:
    """Products the decoder cannot fuse (peft LoRA layers, called as their modules) give q, k, v
    and gate, up as separate outputs: the glued step reads them as they are."""
    base = with_lora(make("qwen2", **WIDE)).get_base_model().eval()
    lean = LeanDecoder.build(base)
    assert lean is not None and lean.glue and not lean.layers[0].qkv.single
    compare_steps(base)
    assert glued_steps["n"] == 6
