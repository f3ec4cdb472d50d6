"""The lean decode step against the models' own forward, and the exact sampler.

:class:`LeanDecoder` must give the logits the model's forward gives, step after step, for every
family it accepts (Llama, Qwen2 with q/k/v biases, Mistral, the shoestring GPT's plain
variants), with left padding, grouped query heads, RoPE scaling, bf16 weights with the CPU's
fp32 cache, bf16 autocast, and peft LoRA layers (adapters on and disabled); it must refuse what
it cannot reproduce. The sampler must draw from the distribution it is given and never a masked
token.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from _helpers import char_tokenizer
from shoestring.engine import Engine, EngineOptions, Sampling, make_cache, prefill
from shoestring.engine.cache import cache_layers
from shoestring.engine.cpu_attention import cpu_fp32_attention, mask_bias, single_query_attention
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.model_io import forward_params
from shoestring.engine.sampling import (
    SAMPLE_BLOCK,
    choose_next_tokens,
    sample_categorical,
    stream_uniforms,
)
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM

VOCAB = 61


def _uniforms(rows: int, seed: int = 0, position: int = 0) -> torch.Tensor:
    """One number per row, as the engine draws them: row ``r`` on stream key ``r``."""
    return stream_uniforms(seed, torch.arange(rows), torch.tensor(position))


def _common(**kw: object) -> dict:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(kw)
    return base


_GPT_BASE = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64)
GPT = {  # the shoestring GPT's plain variants (presets/variants) plus norm/MLP switches
    "gpt_baseline": _GPT_BASE,
    "gpt_rope": {**_GPT_BASE, "position": "rope", "rope_scaling": 2.0},
    "gpt_bias_vdim": {**_GPT_BASE, "attention_bias": True, "v_head_dim": 12},
    "gpt_llama_like": {**_GPT_BASE, "position": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
}


def make(family: str, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_common(**kw)))
    elif family == "llama_bias_rope":
        model = LlamaForCausalLM(
            LlamaConfig(
                **_common(
                    attention_bias=True,
                    mlp_bias=True,
                    rope_scaling={"rope_type": "linear", "factor": 2.0},
                    num_key_value_heads=1,
                    **kw,
                )
            )
        )
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**_common(tie_word_embeddings=True, **kw)))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**_common(sliding_window=None, **kw)))
    elif family.startswith("gpt"):
        model = ShoestringGPTForCausalLM(ShoestringGPTConfig(**{**GPT[family], **kw}))
    else:
        raise ValueError(family)
    for p in model.parameters():  # biases are zero-initialised: make them count
        if p.dim() == 1:
            p.data.normal_(0, 0.3)
    return model.eval()


def _prefill(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, store=None):
    cache = make_cache(model, 16, store)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
    )
    return out.logits[:, -1].float(), cache


def compare_steps(model: torch.nn.Module, steps: int = 6, store=None, atol: float = 1e-5):
    """Prefill the same left-padded prompts and decode ``steps`` tokens twice - transformers
    forward, and the lean forward (its prefill, then its steps), each with its own cache - and
    compare logits after the prefill and at every step."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    lean = LeanDecoder.build(model)
    assert lean is not None
    with torch.inference_mode():
        ref_logits, ref_cache = _prefill(model, ids, mask, store)
        lean_cache = make_cache(model, 16, store)
        prompt_pos = (mask.cumsum(-1) - 1).clamp(min=0)
        got = lean.forward(ids, mask, prompt_pos, lean_cache)
        assert got.dtype == torch.float32 and got.shape == ref_logits.shape
        worst = float((got - ref_logits).abs().max())
        assert lean_cache.get_seq_length() == ids.shape[1]
        pos = mask.sum(-1)
        nxt = ref_logits.argmax(-1)
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=1)
            ref = (
                model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=pos[:, None],
                    past_key_values=ref_cache,
                    use_cache=True,
                )
                .logits[:, -1]
                .float()
            )
            got = lean.step(nxt, mask, pos, lean_cache)
            assert got.dtype == torch.float32 and got.shape == ref.shape
            worst = max(worst, float((got - ref).abs().max()))
            nxt = ref.argmax(-1)
            pos = pos + 1
    assert worst <= atol, f"lean forward differs from the transformers forward by {worst}"
    return worst


@pytest.mark.parametrize("family", ["llama", "llama_bias_rope", "qwen2", "mistral", *sorted(GPT)])
def test_lean_step_equals_the_models_forward(family: str) -> None:
    compare_steps(make(family))


@pytest.mark.parametrize("family", ["gpt_rope", "gpt_llama_like"])
def test_gpt_under_bf16(family: str) -> None:
    """bf16 autocast and bf16 weights: the GPT attends in fp32 on a CPU, as its forward does."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compare_steps(make(family), atol=0.05)
    compare_steps(make(family).to(torch.bfloat16), atol=0.05)


@pytest.mark.parametrize("fuse", [True, False])
def test_fused_and_separate_projections_agree(fuse: bool) -> None:
    model = make("qwen2")
    lean = LeanDecoder.build(model, fuse=fuse)
    assert lean is not None and lean.fused is fuse
    compare_steps(model)


def test_bf16_weights_with_fp32_cache() -> None:
    """The CPU engine keeps a bf16 model's cache in fp32 and attends in fp32."""
    model = make("qwen2").to(torch.bfloat16)
    with cpu_fp32_attention(model, True) as store:
        assert store == torch.float32
        compare_steps(model, store=store, atol=0.05)


def test_bf16_autocast() -> None:
    model = make("llama")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compare_steps(model, atol=0.05)


def with_lora(model: torch.nn.Module) -> Any:
    """``model`` with peft LoRA adapters (r4) on every linear layer, their B matrices
    non-zero so that the adapters change the output."""
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    pm = peft.get_peft_model(model, cfg)
    for name, p in pm.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapters change the output
            p.data.normal_(0, 0.3)
    return pm


def test_lora_layers_are_run_as_modules() -> None:
    pm = with_lora(make("qwen2"))
    base = pm.get_base_model().eval()
    lean = LeanDecoder.build(base)
    assert lean is not None and not lean.layers[0].qkv.single  # LoRA parts not fused
    compare_steps(base)
    with pm.disable_adapter():
        compare_steps(base)


def test_refuses_what_it_cannot_reproduce() -> None:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    assert LeanDecoder.build(gpt2) is None
    sliding = Qwen2ForCausalLM(
        Qwen2Config(**_common(use_sliding_window=True, sliding_window=4, max_window_layers=0))
    )
    assert LeanDecoder.build(sliding) is None
    gelu = LlamaForCausalLM(LlamaConfig(**_common(hidden_act="gelu")))
    assert LeanDecoder.build(gelu) is None
    hooked = make("llama")
    hooked.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert LeanDecoder.build(hooked) is None
    low_rank = make("gpt_baseline", q_lora_rank=8, kv_lora_rank=8)
    assert LeanDecoder.build(low_rank) is None
    decoupled = make("gpt_rope", qk_rope_head_dim=4)
    assert LeanDecoder.build(decoupled) is None


@pytest.mark.parametrize("family", ["qwen2", "gpt_baseline"])
def test_generation_engine_same_tokens_with_and_without_lean_step(family: str) -> None:
    tok = char_tokenizer()
    model = make(family, vocab_size=len(tok))
    prompts = ["Question: 2+2?", "Hi", "a b c d e f g h"]
    outs = []
    greedy = Sampling(max_new_tokens=12, eos_token_ids=[])
    sampling = Sampling(
        max_new_tokens=12, temperature=1.0, seed=5, eos_token_ids=[], num_return_sequences=2
    )
    for lean in (True, False):
        engine = Engine(model, tok, EngineOptions(lean_decode=lean))
        outs.append([r.token_ids for r in engine.generate(prompts, greedy)])
    assert outs[0] == outs[1]
    sampled = []
    for lean in (True, False):
        engine = Engine(model, tok, EngineOptions(lean_decode=lean))
        sampled.append([r.token_ids for r in engine.generate(prompts, sampling)])
    assert sampled[0] == sampled[1]


# ----------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("vocab", [5, SAMPLE_BLOCK * 2 + 17])
def test_sampler_follows_the_distribution(vocab: int) -> None:
    """Frequencies of 20,000 draws within 4.5 standard errors of the probabilities; tokens of
    probability zero never drawn (in the padded tail of the last block too)."""
    probs = torch.zeros(vocab)
    hot = [0, 2, vocab - 3] if vocab > 5 else [0, 2, 3]
    if vocab > 5:
        hot += [SAMPLE_BLOCK - 1, SAMPLE_BLOCK]  # both sides of a block boundary
    weights = torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1][: len(hot)])
    probs[hot] = weights / weights.sum()
    n = 20_000
    draws = sample_categorical(probs.repeat(n, 1), _uniforms(n))
    counts = torch.bincount(draws, minlength=vocab).double()
    assert counts.sum() == n
    zero = torch.ones(vocab, dtype=torch.bool)
    zero[hot] = False
    assert counts[zero].sum() == 0
    p = probs[hot].double()
    se = (p * (1 - p) / n).sqrt()
    assert ((counts[hot] / n - p).abs() <= 4.5 * se).all()


def test_sampler_unnormalised_rows_and_tiny_probabilities() -> None:
    probs = torch.full((20_000, 2 * SAMPLE_BLOCK), 1e-9)
    probs[:, 7] = 3.0  # rows sum to ~3.000002: only the ratio matters
    draws = sample_categorical(probs, _uniforms(20_000, seed=3)[:, None])  # [B, 1] taken too
    share = float((draws == 7).double().mean())
    assert share > 0.999
    # the 2047 tiny tokens hold 2047e-9/3 of the mass: never drawn in 20,000 rows (p ~ 1.4e-2)
    assert int((draws != 7).sum()) <= 2


def test_sampler_is_seeded_and_top_k_1_is_greedy() -> None:
    logits = torch.randn(8, 3000, generator=torch.Generator().manual_seed(0))
    cfg = Sampling(temperature=0.8, top_p=0.9)
    a = choose_next_tokens(logits, cfg, _uniforms(8, seed=11))
    b = choose_next_tokens(logits, cfg, _uniforms(8, seed=11))
    assert torch.equal(a, b)
    k1 = Sampling(temperature=1.0, top_k=1)
    assert torch.equal(choose_next_tokens(logits, k1, _uniforms(8, seed=2)), logits.argmax(-1))
    assert torch.equal(choose_next_tokens(logits, Sampling(), None), logits.argmax(-1))
    # top-p keeps only the nucleus: every draw lies inside it
    p = logits.div(0.8).softmax(-1)
    sorted_p, order = p.sort(-1, descending=True)
    inside = (sorted_p.cumsum(-1) - sorted_p) < 0.9
    for seed in range(20):
        t = choose_next_tokens(logits, cfg, _uniforms(8, seed=seed))
        rank = (order == t[:, None]).float().argmax(-1)
        assert inside.gather(1, rank[:, None]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (14, 2)])
def test_single_query_attention_equals_sdpa(dtype: torch.dtype, heads: tuple[int, int]) -> None:
    """The CPU decode step's plain matmul-softmax-matmul gives SDPA's result (grouped heads,
    left padding masked out) within the dtype's tolerance."""

    hq, hkv = heads
    gen = torch.Generator().manual_seed(0)
    b, t, d = 3, 37, 16
    q = torch.randn(b, hq, 1, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, t, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, t, d, generator=gen).to(dtype)
    mask = torch.ones(b, 1, 1, t, dtype=torch.bool)
    mask[1, ..., :5] = False  # left padding of row 1
    mask[2, ..., :30] = False
    ref = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask, scale=0.3, enable_gqa=hq != hkv
    )
    out = single_query_attention(q, k, v, mask_bias(mask), 0.3)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # fp32 math for both dtypes
    sdpa_native = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=0.3, enable_gqa=hq != hkv
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.to(dtype), sdpa_native, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- kept decoder


def _count_builds(monkeypatch) -> list[int]:
    built: list[int] = []
    real = LeanDecoder.build

    def counting(m, fuse=None, pack=None, kernel="auto", **kw):  # type: ignore[no-untyped-def]
        built.append(1)
        return real(m, fuse, pack, kernel, **kw)

    monkeypatch.setattr(LeanDecoder, "build", counting)
    return built


def test_engine_keeps_its_lean_forward_while_the_weights_are_unchanged(monkeypatch) -> None:
    """With keep_packed, one build for many calls with the same weights; a tracked change to
    a weight (in place, as an optimizer step; replaced, as a reload) builds anew and gives a
    fresh engine's tokens. The default (off) builds every call."""
    tok = char_tokenizer()
    model = make("qwen2", vocab_size=len(tok))
    prompts = ["Question: 2+2?", "Hi", "a b c d e f g h"]
    cfg = Sampling(max_new_tokens=8, eos_token_ids=[])
    built = _count_builds(monkeypatch)
    engine = Engine(model, tok, EngineOptions(batch_size=2, keep_packed=True))
    first = [r.token_ids for r in engine.generate(prompts, cfg)]
    assert [r.token_ids for r in engine.generate(prompts, cfg)] == first
    assert len(built) == 1

    def fresh() -> list[list[int]]:
        return [r.token_ids for r in Engine(model, tok).generate(prompts, cfg)]

    with torch.no_grad():  # an optimizer-like in-place update
        model.model.layers[0].mlp.up_proj.weight.mul_(-1.5)
    changed = [r.token_ids for r in engine.generate(prompts, cfg)]
    assert len(built) == 2 and changed == fresh() and changed != first
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    engine.generate(prompts, cfg)
    assert len(built) == 4  # the reload built anew

    built.clear()
    once = Engine(model, tok, EngineOptions(batch_size=2))
    once.generate(prompts, cfg)
    once.generate(prompts, cfg)
    assert len(built) == 2


def test_kept_lean_forward_follows_lora_adapters_that_train(monkeypatch) -> None:
    """peft LoRA rolled out with merged weights: an adapter update between calls must reach
    the next call (the merged copy is rewritten in place), never a stale packed copy."""
    peft = pytest.importorskip("peft")
    tok = char_tokenizer()
    model = make("qwen2", vocab_size=len(tok))
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    pm = peft.get_peft_model(model, cfg)
    prompts = ["Question: 2+2?", "Hi"]
    sampling = Sampling(max_new_tokens=8, eos_token_ids=[])
    built = _count_builds(monkeypatch)
    engine = Engine(pm, tok, EngineOptions(batch_size=2, keep_packed=True))
    before = [r.token_ids for r in engine.generate(prompts, sampling)]
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    after = [r.token_ids for r in engine.generate(prompts, sampling)]
    want = [r.token_ids for r in Engine(pm, tok).generate(prompts, sampling)]
    assert after == want and after != before
    assert len(built) == 3


# ----------------------------------------------------------------------------- unpadded prefill


@pytest.mark.parametrize("family", ["llama_bias_rope", "qwen2", "gpt_baseline", "gpt_bias_vdim"])
@pytest.mark.parametrize("chunk_tokens", [512, 9])  # one pass; several (a prompt alone too)
def test_unpadded_prefill_equals_the_models_padded_forward(
    family: str, chunk_tokens: int, monkeypatch
) -> None:
    """The lean prefill runs prompts end to end without padding, in chunks; its logits, the
    cache it fills (every real column of every row) and the decode steps after it match the
    model's own padded prefill."""
    monkeypatch.setattr(prefill, "SEQUENCE_CHUNK_TOKENS", chunk_tokens)
    assert prefill.sequence_chunks([7, 3, 12, 1, 5]) == (
        [[0, 1, 2, 3, 4]] if chunk_tokens == 512 else [[0], [1], [2], [3, 4]]
    )
    _compare_prefills(make(family), atol=1e-5)


def test_unpadded_prefill_of_a_bf16_model_with_the_fp32_cache() -> None:
    model = make("qwen2").to(torch.bfloat16)
    with cpu_fp32_attention(model, True) as store:
        _compare_prefills(model, store=store, atol=0.05)


def _compare_prefills(model: torch.nn.Module, store=None, atol: float = 1e-5) -> None:
    g = torch.Generator().manual_seed(2)
    ids_list = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (7, 3, 12, 1, 5)]
    lean = LeanDecoder.build(model)
    assert lean is not None
    options, params = EngineOptions(), forward_params(model)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        ref = prefill.prefill_prompts(model, params, ids_list, options, 4, 0, cpu, store)
        got = prefill.prefill_prompts(model, params, ids_list, options, 4, 0, cpu, store, lean)
        assert torch.equal(got[2], ref[2])  # the same left-padded mask
        real = ref[2].bool()[:, None, :, None]  # [B, 1, T, 1]: the columns that hold tokens
        worst = float((got[0] - ref[0]).abs().max())
        for a, b in zip(cache_layers(got[1]), cache_layers(ref[1]), strict=True):
            assert a.keys.dtype == b.keys.dtype and a.keys.shape == b.keys.shape
            for x, y in ((a.keys, b.keys), (a.values, b.values)):
                worst = max(worst, float(((x - y).float() * real).abs().max()))
        mask, pos, nxt = ref[2], ref[2].sum(-1), ref[0].argmax(-1)
        for _ in range(3):  # decode on from each cache
            mask = torch.cat([mask, mask.new_ones((len(ids_list), 1))], dim=1)
            a, b = lean.step(nxt, mask, pos, got[1]), lean.step(nxt, mask, pos, ref[1])
            worst = max(worst, float((a - b).abs().max()))
            nxt, pos = b.argmax(-1), pos + 1
    assert worst <= atol, f"unpadded prefill differs from the padded forward by {worst}"


def test_default_engine_sees_weights_written_through_data() -> None:
    """A write through ``.data`` (peft's in-place merge, hand-written EMA) bumps no version
    counter, so only an engine that rebuilds every call - the default - is sure to see it."""
    tok = char_tokenizer()
    model = make("qwen2", vocab_size=len(tok))
    prompts = ["Question: 2+2?", "Hi"]
    cfg = Sampling(max_new_tokens=8, eos_token_ids=[])
    engine = Engine(model, tok, EngineOptions(batch_size=2))
    before = [r.token_ids for r in engine.generate(prompts, cfg)]
    model.model.layers[0].mlp.up_proj.weight.data.mul_(-1.5)  # no version bump
    after = [r.token_ids for r in engine.generate(prompts, cfg)]
    assert after != before
    assert after == [r.token_ids for r in Engine(model, tok).generate(prompts, cfg)]
