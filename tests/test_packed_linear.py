"""Prepacked oneDNN weights in the CPU's bf16 decode step: bit-identical to ``F.linear``, used
only where they are exact and fit in memory, and invisible in the engine's output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _helpers import char_tokenizer
from shoestring.engine import Engine, EngineOptions, Sampling, lean_decode, packed_linear
from shoestring.engine.cpu_attention import cpu_fp32_attention
from shoestring.engine.lean_decode import LeanDecoder
from test_lean_decode import VOCAB, _prefill, make

needs_packing = pytest.mark.skipif(
    not packed_linear.packing_available(), reason="no bf16 oneDNN packing on this CPU"
)


@needs_packing
@pytest.mark.parametrize("rows", [1, 5, 16, 33])
def test_packed_product_equals_f_linear(rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(70, 96, generator=g).to(torch.bfloat16)
    b = torch.randn(70, generator=g).to(torch.bfloat16)
    x = torch.randn(rows, 1, 96, generator=g).to(torch.bfloat16)
    packed = packed_linear.pack_weight(w)
    assert torch.equal(packed_linear.packed_linear(x, packed, b), F.linear(x, w, b))
    assert torch.equal(packed_linear.packed_linear(x, packed, None), F.linear(x, w))


def test_only_bf16_cpu_weights_with_memory_to_spare_are_packed(monkeypatch) -> None:
    w = torch.zeros(8, 8)
    assert not packed_linear.can_pack([w])  # fp32: packed sums differ, so never packed
    assert not packed_linear.can_pack([])
    if packed_linear.packing_available():
        assert packed_linear.can_pack([w.to(torch.bfloat16)])
        monkeypatch.setattr(packed_linear, "MEMORY_MARGIN_BYTES", 2**60)
        assert not packed_linear.can_pack([w.to(torch.bfloat16)])
    model = make("qwen2")
    lean = LeanDecoder.build(model)
    assert lean is not None and not lean.packed  # an fp32 model keeps F.linear


@needs_packing
@pytest.mark.parametrize("family", ["qwen2", "llama_bias_rope", "gpt_bias_vdim", "gpt_baseline"])
@pytest.mark.parametrize("fuse", [True, False])
def test_packed_step_is_bit_identical_to_the_unpacked_step(family: str, fuse: bool) -> None:
    model = make(family).to(torch.bfloat16)
    packed = LeanDecoder.build(model, fuse=fuse, pack=True)
    plain = LeanDecoder.build(model, fuse=fuse, pack=False)
    assert packed is not None and plain is not None and packed.packed and not plain.packed
    assert all(x.packed is not None for x in (packed.layers[0].qkv, packed.layers[0].up))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    with cpu_fp32_attention(model, True) as store, torch.inference_mode():
        logits, cache_a = _prefill(model, ids, mask, store)
        _, cache_b = _prefill(model, ids, mask, store)
        pos, nxt = mask.sum(-1), logits.argmax(-1)
        for _ in range(5):
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=1)
            a = packed.step(nxt, mask, pos, cache_a)
            b = plain.step(nxt, mask, pos, cache_b)
            assert torch.equal(a, b)
            nxt, pos = a.argmax(-1), pos + 1


@needs_packing
def test_engine_gives_the_same_tokens_with_and_without_packing(monkeypatch) -> None:
    tok = char_tokenizer()
    model = make("qwen2", vocab_size=len(tok)).to(torch.bfloat16)
    prompts = ["Question: 2+2?", "Hi", "a b c d e f g h", "xyz"]
    cfg = Sampling(max_new_tokens=10, eos_token_ids=[])
    engine = Engine(model, tok, EngineOptions(batch_size=2))
    built: list[bool] = []
    real_build = LeanDecoder.build

    def recording(m, fuse=None, pack=None):  # type: ignore[no-untyped-def]
        lean = real_build(m, fuse, pack)
        built.append(bool(lean and lean.packed))
        return lean

    monkeypatch.setattr(LeanDecoder, "build", recording)
    packed = [r.token_ids for r in engine.generate(prompts, cfg)]
    monkeypatch.setattr(lean_decode, "can_pack", lambda weights: False)
    plain = [r.token_ids for r in engine.generate(prompts, cfg)]
    assert built == [True, False]  # the engine packed the first time, not the second
    assert packed == plain
