"""The AVX2 kernel's packed copies in bf16 for fp32 weights whose values are all bf16 values
(a bf16 checkpoint loaded in fp32): lossless, so the products must equal the fp32 copy's bit
for bit on every path of the kernel; any other weight keeps its fp32 copy, and copies that are
repacked in place after a weight changes (a fine-tune's) stay fp32."""

from __future__ import annotations

import pytest
import torch

from _helpers import char_tokenizer
from shoestring.engine import Engine, EngineOptions, Sampling, packed_linear, sgemm_avx2
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.weight_packs import WeightPacks
from test_lean_decode import make
from test_packed_linear import assert_same_prefill_and_steps

# where the bf16 build loads, every test runs (a build that fails its probe fails them, it does
# not skip them)
needs_bf16_storage = pytest.mark.skipif(
    not (packed_linear.avx2_kernel_available() and sgemm_avx2.available(bf16=True)),
    reason=f"no AVX2 kernel with bf16-stored weights here: {sgemm_avx2.build_error(bf16=True)}",
)


def _bf16_valued(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(torch.bfloat16).float()


def test_bf16_values_are_told_apart_from_other_fp32_values() -> None:
    w = _bf16_valued(7, 5, seed=0)
    assert sgemm_avx2.is_bf16_valued(w)
    assert sgemm_avx2.is_bf16_valued(w.t())  # any layout
    assert sgemm_avx2.is_bf16_valued(torch.tensor([0.0, -0.0, float("inf"), 1.5, -3.0]))
    nudged = w.clone()
    nudged[3, 2] = torch.nextafter(nudged[3, 2], torch.tensor(float("inf")))  # one ulp of fp32
    assert not sgemm_avx2.is_bf16_valued(nudged)
    assert not sgemm_avx2.is_bf16_valued(torch.tensor([0.1]))


@needs_bf16_storage
def test_bf16_build_passes_its_probe_wherever_it_loads() -> None:
    """The probe the engine checks before taking bf16 copies holds here: were it to fail,
    the engine would silently keep fp32 copies, and this says so."""
    assert packed_linear.bf16_storage_available()


@needs_bf16_storage
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 40])
@pytest.mark.parametrize(("out", "k"), [(1, 1), (7, 3), (50, 42), (130, 97), (13, 1100)])
def test_bf16_stored_copy_gives_the_fp32_copys_products_bit_for_bit(
    rows: int, out: int, k: int
) -> None:
    """Every path (a few rows at full width, 8 rows in one and two panels, blocks of 16, a
    partial block), partial panels, the reduction's 4-wide tail and chunks past 1024, with and
    without a bias: the same sums in the same order, so equal, from half the bytes."""
    w = _bf16_valued(out, k, seed=rows * 1000 + out)
    x = torch.randn(rows, 1, k, generator=torch.Generator().manual_seed(out))
    full, half = sgemm_avx2.pack(w), sgemm_avx2.pack(w, bf16=True)
    assert half.dtype == torch.bfloat16 and half.numel() == full.numel()
    for bias in (torch.randn(out), None):
        got = sgemm_avx2.linear(x, half, out, bias)
        assert torch.equal(got, sgemm_avx2.linear(x, full, out, bias))
    # and a copy that lost the weights' order would not pass: the check can fail
    if rows and k > 1:
        shuffled = sgemm_avx2.pack(w.roll(1, dims=1), bf16=True)
        assert not torch.equal(sgemm_avx2.linear(x, shuffled, out, None), got)


@needs_bf16_storage
def test_a_weight_a_bf16_copy_would_round_is_refused_or_kept_in_fp32() -> None:
    w = torch.randn(12, 16)
    with pytest.raises(ValueError, match="would round"):
        sgemm_avx2.pack(w, bf16=True)
    assert packed_linear.pack_weight(w, "avx2", bf16_if_exact=True).data.dtype == torch.float32
    exact = w.to(torch.bfloat16).float()
    packed = packed_linear.pack_weight(exact, "avx2", bf16_if_exact=True)
    assert packed.data.dtype == torch.bfloat16 and packed.nbytes == packed.data.numel() * 2
    assert packed_linear.pack_weight(exact, "avx2").data.dtype == torch.float32  # not asked
    # a kept store repacks a changing weight in place: its copies stay fp32 even while exact
    packs = WeightPacks()
    kept = packs.get(exact)
    assert kept.data.dtype == torch.float32
    with torch.no_grad():
        exact.add_(1e-3)  # a fine-tune's step: no longer bf16 values
    assert packs.get(exact).data.data_ptr() == kept.data.data_ptr()  # the same buffer


@needs_bf16_storage
def test_lean_step_of_a_bf16_checkpoint_equals_the_fp32_copys_step() -> None:
    """A model whose weights are bf16 values, in fp32 (how a bf16 checkpoint loads): the lean
    prefill and steps through bf16-stored copies equal those through fp32 copies exactly."""
    model = make("qwen2")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    half = LeanDecoder.build(model, pack=True, kernel="avx2", bf16_copies=True)
    full = LeanDecoder.build(model, pack=True, kernel="avx2")
    assert half is not None and full is not None
    for lean, dtype in ((half, torch.bfloat16), (full, torch.float32)):
        assert lean.layers[0].qkv.packed is not None
        assert lean.layers[0].qkv.packed.data.dtype == dtype
    assert_same_prefill_and_steps(model, half, full, seed=5)


@needs_bf16_storage
def test_engine_takes_bf16_copies_for_few_rows_only(monkeypatch) -> None:
    """The engine asks for bf16 copies where it decodes at most BF16_COPIES_MAX_ROWS rows at
    once (batch 1, or a single prompt) and not for more; a bf16-valued model's answers are the
    same either way."""
    monkeypatch.setattr(packed_linear, "FP32_MIN_BYTES", 0)  # the tiny model packed as a big one
    tok = char_tokenizer()
    model = make("qwen2", vocab_size=len(tok))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    built: list[bool] = []
    real_build = LeanDecoder.build

    def recording(m, fuse=None, pack=None, kernel="auto", **kw):  # type: ignore[no-untyped-def]
        lean = real_build(m, fuse, pack, kernel, **kw)
        assert lean is not None and lean.head.packed is not None
        built.append(lean.head.packed.data.dtype == torch.bfloat16)
        return lean

    monkeypatch.setattr(LeanDecoder, "build", recording)
    prompts = ["Question: 2+2?", "Hi", "a b c d e f g h", "xyz", "1 2 3", "the end"]
    cfg = Sampling(max_new_tokens=8, eos_token_ids=[])
    answers = []
    for batch in (1, len(prompts)):  # 1 row at a time, then 6 together
        engine = Engine(model, tok, EngineOptions(batch_size=batch, fp32_kernel="avx2"))
        answers.append([r.token_ids for r in engine.generate(prompts, cfg)])
    # one prompt never decodes more than one row, whatever the batch size
    engine = Engine(model, tok, EngineOptions(batch_size=16, fp32_kernel="avx2"))
    one = engine.generate(prompts[:1], cfg)[0].token_ids
    assert built == [True, False, True]
    assert answers[0] == answers[1] and one == answers[0][0]
