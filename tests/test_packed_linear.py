"""Prepacked weights in the CPU's decode step and their exactness policy: bf16 products (oneDNN)
bit-identical to ``F.linear``; fp32 products (oneDNN's, or shoestring's AVX2 kernel) within fp32
rounding of it, packed only for weights past the caches, with greedy tokens identical to
transformers' ``generate`` on a trained model (stories260K); the fp32 kernel chosen by host
class; used only where they fit in memory, and invisible in the engine's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from _helpers import char_tokenizer
from shoestring.engine import (
    Engine,
    EngineOptions,
    Sampling,
    decode_glue,
    lean_decode,
    make_cache,
    packed_linear,
    sgemm_avx2,
)
from shoestring.engine.cpu_attention import cpu_fp32_attention
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.host import cpu_flags
from shoestring.models.llama2c import llama2c_config, load_llama2c_state_dict
from test_lean_decode import VOCAB, _prefill, make

needs_packing = pytest.mark.skipif(
    not packed_linear.packing_available(), reason="no bf16 oneDNN packing on this CPU"
)
needs_fp32_packing = pytest.mark.skipif(
    not packed_linear.packing_available(torch.float32), reason="no fp32 oneDNN packing here"
)
needs_avx2_kernel = pytest.mark.skipif(
    not sgemm_avx2.available(), reason=f"no AVX2 kernel here: {sgemm_avx2.build_error()}"
)
# the fp32 kernels that can run here
FP32_KERNELS = [
    k
    for k, ok in (
        ("onednn", packed_linear.packing_available(torch.float32)),
        ("avx2", packed_linear.avx2_kernel_available()),
    )
    if ok
]


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


def test_which_cpu_weights_are_packed(monkeypatch) -> None:
    w = torch.zeros(8, 8)
    assert not packed_linear.can_pack([])
    assert not packed_linear.can_pack([w, w.to(torch.bfloat16)])  # one dtype per model
    assert not packed_linear.can_pack([w.half()])  # fp16: no policy, never packed
    assert not packed_linear.can_pack([w])  # fp32 below FP32_MIN_BYTES: sits in the caches
    if packed_linear.packing_available(torch.float32):
        monkeypatch.setattr(packed_linear, "FP32_MIN_BYTES", w.numel() * 4)
        assert packed_linear.can_pack([w])  # fp32 big enough to stream from memory
    if packed_linear.packing_available():
        assert packed_linear.can_pack([w.to(torch.bfloat16)])
    monkeypatch.setattr(packed_linear, "MEMORY_MARGIN_BYTES", 2**60)
    assert not packed_linear.can_pack([w.to(torch.bfloat16)])
    assert not packed_linear.can_pack([w])  # no memory to spare: nothing packed
    lean = LeanDecoder.build(make("qwen2"))
    assert lean is not None and not lean.packed  # a small fp32 model keeps F.linear


@needs_fp32_packing
@pytest.mark.parametrize("rows", [1, 5, 16, 33])
def test_packed_fp32_product_is_within_fp32_rounding(rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(70, 300, generator=g), torch.randn(70, generator=g)
    x = torch.randn(rows, 1, 300, generator=g)
    got = packed_linear.packed_linear(x, packed_linear.pack_weight(w), b)
    ones = torch.ones(rows, 1, 1)  # the bias as one more term of each sum
    xb, wb = torch.cat([x, ones], dim=-1), torch.cat([w, b[:, None]], dim=1)
    assert packed_linear.within_fp32_rounding(got, F.linear(x, w, b), xb, wb)
    # the policy tells a lower-precision kernel apart: a product through bf16 inputs fails it
    low = F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()).float()
    assert not packed_linear.within_fp32_rounding(low, F.linear(x, w, b), xb, wb)


@needs_avx2_kernel
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 40])
@pytest.mark.parametrize(("out", "k"), [(1, 1), (7, 3), (50, 42), (130, 97), (13, 1100)])
def test_avx2_kernel_is_within_fp32_rounding_on_every_path(rows: int, out: int, k: int) -> None:
    """Every path of the AVX2 kernel (up to 4 rows: the full-width one; up to 8; blocks of 16
    and a partial last block), output counts that leave a panel partly empty, reduction
    lengths with and without the 4-wide tail and past one chunk (1100: two whole chunks of
    512 and a partial one), with and without a bias, against float64."""
    g = torch.Generator().manual_seed(rows * 1000 + out)
    w, b = torch.randn(out, k, generator=g), torch.randn(out, generator=g)
    x = torch.randn(rows, 1, k, generator=g)  # [B, S=1, k]: a decode step's shape
    packed = sgemm_avx2.pack(w)
    for bias in (b, None):
        got = sgemm_avx2.linear(x, packed, out, bias)
        assert got.shape == (rows, 1, out) and got.dtype == torch.float32
        ones = torch.ones(rows, 1, 1)
        bb = bias if bias is not None else torch.zeros(out)
        xb, wb = torch.cat([x, ones], dim=-1), torch.cat([w, bb[:, None]], dim=1)
        assert packed_linear.within_fp32_rounding(got, F.linear(x, w, bias), xb, wb)
    # and the policy would catch a wrong product: another weight's output is far outside it
    if rows and k > 1:
        wrong = sgemm_avx2.linear(x, sgemm_avx2.pack(w.roll(1, dims=1)), out, None)
        assert not packed_linear.within_fp32_rounding(wrong, F.linear(x, w), x, w)


def test_fp32_kernel_is_chosen_by_host_class(monkeypatch) -> None:
    """auto takes the AVX2 kernel on the avx2 class only (where it was measured), oneDNN's on
    the others; an explicit choice is kept, and an AVX2 kernel that cannot run is an error
    that says why and what to pick instead."""
    avx2_ok = packed_linear.avx2_kernel_available()
    monkeypatch.setattr(packed_linear, "host_class", lambda: "avx2")
    assert packed_linear.fp32_kernel() == ("avx2" if avx2_ok else "onednn")
    for other in ("avx512", "avx512-bf16", "amx", "generic"):
        monkeypatch.setattr(packed_linear, "host_class", lambda other=other: other)
        assert packed_linear.fp32_kernel("auto") == "onednn"
        assert packed_linear.fp32_kernel("onednn") == "onednn"
    with pytest.raises(ValueError, match="fp32_kernel must be one of"):
        packed_linear.fp32_kernel("mkl")
    monkeypatch.setattr(packed_linear, "avx2_kernel_available", lambda: False)
    monkeypatch.setattr(packed_linear, "host_class", lambda: "avx2")
    assert packed_linear.fp32_kernel() == "onednn"  # auto falls back
    with pytest.raises(RuntimeError, match="fp32_kernel=auto or onednn"):
        packed_linear.fp32_kernel("avx2")
    w = torch.zeros(4, 4)
    assert packed_linear.pack_weight(w, "onednn").kernel == "onednn"
    if packed_linear.packing_available():  # bf16 is always oneDNN's
        assert packed_linear.pack_weight(w.bfloat16(), "auto").kernel == "onednn"


def test_avx2_kernel_build_is_all_or_nothing(monkeypatch, tmp_path: Path) -> None:
    """A compiler that fails leaves no library (and no temporary file) in the cache and says
    why; one that works leaves exactly the library, which then loads."""
    monkeypatch.setenv("SHOESTRING_KERNEL_CACHE", str(tmp_path))
    if not {"avx2", "fma"} <= cpu_flags():
        lib, why = sgemm_avx2._build()
        assert lib is None and "AVX2" in str(why)
        return
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    lib, why = sgemm_avx2._build()
    assert lib is None and why is not None and why.startswith("false failed")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    lib, why = sgemm_avx2._build()
    assert lib is None and "could not build" in str(why)
    assert list(tmp_path.iterdir()) == []
    if not sgemm_avx2.available():
        pytest.skip(f"no working C compiler here: {sgemm_avx2.build_error()}")
    monkeypatch.delenv("CC")
    lib, why = sgemm_avx2._build()
    assert lib is not None and why is None
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]


def _stories260k(shared_dir: Path) -> LlamaForCausalLM:
    """The trained stories260K Llama from llama2.c's checkpoint, fp32 (weights only)."""
    path = shared_dir / "models" / "stories260K" / "stories260K.bin"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    header, state = load_llama2c_state_dict(path)
    model = LlamaForCausalLM(llama2c_config(header))
    model.load_state_dict(state, strict=False)  # strict=False: a tied head has no own key
    return model.eval()


# each fp32 kernel; and the AVX2 kernel's bf16 copies of the same model rounded to bf16 values
TRAINED_CASES = [(k, False) for k in FP32_KERNELS]
if "avx2" in FP32_KERNELS and packed_linear.bf16_storage_available():
    TRAINED_CASES.append(("avx2", True))


@pytest.mark.parametrize(("kernel", "bf16_values"), TRAINED_CASES)
def test_fp32_packed_greedy_tokens_equal_transformers_on_a_trained_model(
    shared_dir: Path, kernel: str, bf16_values: bool
) -> None:
    """The fp32 policy on real weights, for each fp32 kernel: the packed lean prefill's and
    steps' logits stay within fp32 rounding noise of the model's forward, and 48 greedy
    tokens of 6 rows (left-padded) equal transformers' batched ``generate`` token for token.
    With ``bf16_values`` the trained weights are first rounded to bf16 values (a bf16
    checkpoint, as most ship) and the AVX2 kernel reads its copies in bf16."""
    model = _stories260k(shared_dir)
    if bf16_values:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    lean = LeanDecoder.build(model, pack=True, kernel=kernel, bf16_copies=bf16_values)
    assert lean is not None and lean.packed
    assert lean.glue == decode_glue.available()  # the steps' work between products in C too
    assert lean.layers[0].qkv.packed is not None
    assert lean.layers[0].qkv.packed.kernel == kernel
    copy_dtype = torch.bfloat16 if bf16_values else torch.float32
    assert kernel != "avx2" or lean.layers[0].qkv.packed.data.dtype == copy_dtype
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (6, 5), generator=g)
    ids[:, 0] = 1  # BOS, as the model was trained
    mask = torch.ones_like(ids)
    mask[2, :2] = mask[4, :3] = 0  # left padding
    ids = ids.masked_fill(mask == 0, 0)
    steps = 48
    with torch.inference_mode():
        want = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=steps,
            min_new_tokens=steps,  # no EOS stop: every row runs all the steps
            pad_token_id=0,
        )[:, ids.shape[1] :]
        eos = model.config.eos_token_id
        ref, ref_cache = _prefill(model, ids, mask)
        cache = make_cache(model, steps)
        logits = lean.forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        worst = float((logits - ref).abs().max() / ref.abs().max())
        logits[:, eos] = float("-inf")  # no EOS, as min_new_tokens does for generate
        pos, nxt, got = mask.sum(-1), logits.argmax(-1), []
        for _ in range(steps):
            got.append(nxt)
            mask = torch.cat([mask, mask.new_ones((6, 1))], dim=1)
            step = lean.step(nxt, mask, pos, cache)
            ref = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos[:, None],
                past_key_values=ref_cache,
                use_cache=True,
            ).logits[:, -1]
            worst = max(worst, float((step - ref).abs().max() / ref.abs().max()))
            step[:, eos] = float("-inf")
            nxt, pos = step.argmax(-1), pos + 1
    assert worst < 1e-5, f"packed fp32 logits differ from the forward by {worst:.2e} (relative)"
    assert torch.equal(torch.stack(got, dim=1), want)


@needs_packing
@pytest.mark.parametrize("family", ["qwen2", "llama_bias_rope", "gpt_bias_vdim", "gpt_baseline"])
@pytest.mark.parametrize("fuse", [True, False])
def test_packed_step_is_bit_identical_to_the_unpacked_step(family: str, fuse: bool) -> None:
    model = make(family).to(torch.bfloat16)
    packed = LeanDecoder.build(model, fuse=fuse, pack=True)
    plain = LeanDecoder.build(model, fuse=fuse, pack=False)
    assert packed is not None and plain is not None and packed.packed and not plain.packed
    assert all(x.packed is not None for x in (packed.layers[0].qkv, packed.layers[0].up))
    assert_same_prefill_and_steps(model, packed, plain, seed=3)


def assert_same_prefill_and_steps(
    model: torch.nn.Module, a: LeanDecoder, b: LeanDecoder, seed: int
) -> None:
    """Two lean decoders of ``model`` give the same prefill logits and the same five greedy
    steps after it, bit for bit (three rows, one left-padded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    with cpu_fp32_attention(model, True) as store, torch.inference_mode():
        cache_a, cache_b = make_cache(model, 5, store), make_cache(model, 5, store)
        prompt_pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = a.forward(ids, mask, prompt_pos, cache_a)  # the prefill
        assert torch.equal(logits, b.forward(ids, mask, prompt_pos, cache_b))
        pos, nxt = mask.sum(-1), logits.argmax(-1)
        for _ in range(5):
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=1)
            step_a, step_b = a.step(nxt, mask, pos, cache_a), b.step(nxt, mask, pos, cache_b)
            assert torch.equal(step_a, step_b)
            nxt, pos = step_a.argmax(-1), pos + 1


@needs_packing
def test_engine_gives_the_same_tokens_with_and_without_packing(monkeypatch) -> None:
    tok = char_tokenizer()
    model = make("qwen2", vocab_size=len(tok)).to(torch.bfloat16)
    prompts = ["Question: 2+2?", "Hi", "a b c d e f g h", "xyz"]
    cfg = Sampling(max_new_tokens=10, eos_token_ids=[])
    engine = Engine(model, tok, EngineOptions(batch_size=2))
    built: list[bool] = []
    real_build = LeanDecoder.build

    def recording(m, fuse=None, pack=None, kernel="auto", **kw):  # type: ignore[no-untyped-def]
        lean = real_build(m, fuse, pack, kernel, **kw)
        built.append(bool(lean and lean.packed))
        return lean

    monkeypatch.setattr(LeanDecoder, "build", recording)
    packed = [r.token_ids for r in engine.generate(prompts, cfg)]
    monkeypatch.setattr(lean_decode, "can_pack", lambda weights, kernel="auto": False)
    plain = [r.token_ids for r in engine.generate(prompts, cfg)]
    assert built == [True, False]  # the engine packed the first time, not the second
    assert packed == plain
