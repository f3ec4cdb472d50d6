"""The generation engine against ``model.generate`` on tiny random Llama and GPT-2 models.

Batched greedy decoding must equal one-at-a-time decoding and HF's own greedy search token for
token, whatever stops rows early (EOS, stop strings) and with the batch compacted; sampling must
be reproducible from its seed. Models and tokenizer are built locally - nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import string

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from _helpers import char_tokenizer
from shoestring.config import ConfigError
from shoestring.engine import (
    Engine,
    EngineOptions,
    GenerationResult,
    IncrementalText,
    Sampling,
    TextOptions,
    auto_batch_size,
    estimate_row_bytes,
    select_cache_rows,
    trim_cache_left,
)
from shoestring.errors import DeviceUnavailableError, UserError
from shoestring.models.loading import load_model_and_tokenizer, resolve_model_path
from shoestring.runtime import host_supports_fast_bf16, resolve_device, resolve_torch_dtype

PROMPTS = [
    "Question: what is 2+2?\nAnswer:",
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "a b c d e",
    "x",
]
EOS = 2


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over the characters these prompts use."""
    return char_tokenizer(string.ascii_letters + string.digits + " .,:;?!\n+-*/=()$")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def make_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def make_gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(1)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request: pytest.FixtureRequest, tok: PreTrainedTokenizerFast) -> torch.nn.Module:
    return make_llama(len(tok)) if request.param == "llama" else make_gpt2(len(tok))


def hf_greedy(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerFast,
    prompt: str,
    n: int,
    eos: list[int] | None = None,
) -> list[int]:
    """What the original study did: ``model.generate`` one prompt at a time, no padding."""
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        pad_token_id=0,
        eos_token_id=eos if eos is not None else EOS,
    )
    return out[0, ids.shape[1] :].tolist()


def gen(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerFast | None,
    prompts: list,
    sampling: Sampling | None = None,
    options: EngineOptions | None = None,
    **kw: object,
) -> list[GenerationResult]:
    """``prompts`` through the engine built with ``options``."""
    return Engine(model, tok, options).generate(prompts, sampling, **kw)  # type: ignore[arg-type]


def dynamic(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerFast,
    prompts: list[str],
    sampling: Sampling,
    max_rows: int,
) -> list[GenerationResult]:
    """The dynamic backend alone on ``prompts`` in the given order (the engine sorts them)."""
    from shoestring.engine.decode import decode_dynamic
    from shoestring.engine.prefill import encode_prompts
    from shoestring.engine.rows import Rows
    from shoestring.engine.stops import request_eos_ids

    ids = encode_prompts(tok, prompts)
    eos = request_eos_ids(model, tok, sampling)
    rows = Rows(tok, sampling, TextOptions(), eos, [len(x) for x in ids])
    return decode_dynamic(model, EngineOptions(), ids, rows, None, max_rows=max_rows)


def truncate_at(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens


# ----------------------------------------------------------------------------- greedy equality


def test_batched_greedy_equals_hf_and_single(model, tok):
    cfg = Sampling(max_new_tokens=16)
    batched = gen(model, tok, PROMPTS, cfg)
    assert [r.index for r in batched] == list(range(len(PROMPTS)))
    for prompt, res in zip(PROMPTS, batched, strict=True):
        single = gen(model, tok, [prompt], cfg)[0]
        reference = hf_greedy(model, tok, prompt, 16)
        assert res.token_ids == single.token_ids == reference
        assert res.n_tokens == len(res.token_ids)
        assert res.prompt_tokens == len(tok(prompt).input_ids)
        assert res.text == tok.decode(res.token_ids, skip_special_tokens=True)
        assert res.finish_reason == ("eos" if reference[-1] == EOS else "length")


def test_eos_stops_rows_at_different_times_with_compaction(model, tok):
    free = gen(model, tok, PROMPTS, Sampling(max_new_tokens=24, eos_token_ids=[]))
    # EOS ids taken from what the rows generate, so rows end at different steps.
    eos = {free[0].token_ids[3], free[2].token_ids[9]}
    expected = [truncate_at(r.token_ids, eos) for r in free]
    assert len({len(e) for e in expected}) > 1, "rows should finish at different steps"
    for compact in (True, False):
        cfg = Sampling(max_new_tokens=24, eos_token_ids=sorted(eos))
        got = gen(model, tok, PROMPTS, cfg, EngineOptions(compact=compact))
        assert [r.token_ids for r in got] == expected
        for r, e in zip(got, expected, strict=True):
            assert r.finish_reason == ("eos" if e[-1] in eos else "length")
    for prompt, e in zip(PROMPTS, expected, strict=True):
        assert hf_greedy(model, tok, prompt, 24, eos=sorted(eos)) == e


def test_stop_strings(model, tok):
    free = gen(model, tok, PROMPTS, Sampling(max_new_tokens=20, eos_token_ids=[]))
    stop = free[1].text[5:7]
    assert len(stop) == 2
    cfg = Sampling(max_new_tokens=20, eos_token_ids=[], stop_strings=[stop])
    got = gen(model, tok, PROMPTS, cfg)
    for full, res in zip(free, got, strict=True):
        pos = full.text.find(stop)
        if pos < 0:
            assert res.token_ids == full.token_ids and res.finish_reason == "length"
            continue
        assert res.finish_reason == "stop" and res.stop_string == stop
        assert res.text == full.text[:pos]
        # Generation stops at the token that completes the stop string, not later.
        assert res.token_ids == full.token_ids[: len(res.token_ids)]
        assert stop in tok.decode(res.token_ids) and stop not in tok.decode(res.token_ids[:-1])
    kept = Engine(model, tok, text=TextOptions(keep_stop_string=True)).generate(
        PROMPTS[1:2], Sampling(max_new_tokens=20, eos_token_ids=[], stop_strings=[stop])
    )[0]
    assert kept.text.endswith(stop)


def test_streaming_matches_final_text(tok):
    model = make_llama(len(tok))
    pieces: dict[int, list[str]] = {}
    cfg = Sampling(max_new_tokens=20, eos_token_ids=[], stop_strings=["zz", "Q"])
    res = gen(model, tok, PROMPTS, cfg, on_text=lambda i, t: pieces.setdefault(i, []).append(t))
    for i, r in enumerate(res):
        assert "".join(pieces.get(i, [])) == r.text


def test_token_id_prompts_and_min_new_tokens(tok):
    model = make_llama(len(tok))
    ids = [tok(p).input_ids for p in PROMPTS]
    assert [r.token_ids for r in gen(model, tok, ids, Sampling(8))] == [
        r.token_ids for r in gen(model, tok, PROMPTS, Sampling(8))
    ]
    free = gen(model, tok, PROMPTS, Sampling(max_new_tokens=12, eos_token_ids=[]))
    eos = free[0].token_ids[0]
    res = gen(
        model, tok, PROMPTS[:1], Sampling(max_new_tokens=12, eos_token_ids=[eos], min_new_tokens=12)
    )[0]
    assert res.n_tokens == 12 and eos not in res.token_ids and res.finish_reason == "length"
    ignored = gen(
        model, tok, PROMPTS[:1], Sampling(max_new_tokens=12, eos_token_ids=[eos], ignore_eos=True)
    )[0]
    assert ignored.token_ids == free[0].token_ids


# ----------------------------------------------------------------------------- sampling


def test_sampling_reproducible_and_topk1_is_greedy(model, tok):
    cfg = Sampling(max_new_tokens=16, temperature=1.0, seed=7, eos_token_ids=[])
    a = gen(model, tok, PROMPTS, cfg)
    b = gen(model, tok, PROMPTS, cfg)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    cfg.seed = 8
    c = gen(model, tok, PROMPTS, cfg)
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    greedy = gen(model, tok, PROMPTS, Sampling(16, eos_token_ids=[]))
    top1 = gen(
        model, tok, PROMPTS, Sampling(16, temperature=1.0, top_k=1, seed=3, eos_token_ids=[])
    )
    assert [r.token_ids for r in top1] == [r.token_ids for r in greedy]
    tiny_p = gen(
        model, tok, PROMPTS, Sampling(16, temperature=1.0, top_p=1e-6, seed=3, eos_token_ids=[])
    )
    assert [r.token_ids for r in tiny_p] == [r.token_ids for r in greedy]
    zero_t = Sampling(16, temperature=0.0, top_k=5, seed=3, eos_token_ids=[])
    assert zero_t.greedy and not cfg.greedy  # temperature 0 is greedy, whatever else is set
    assert [r.token_ids for r in gen(model, tok, PROMPTS, zero_t)] == [r.token_ids for r in greedy]


def test_num_return_sequences_share_prefill(tok):
    model = make_llama(len(tok))
    greedy = gen(model, tok, PROMPTS[:2], Sampling(10, eos_token_ids=[]))
    rep = gen(model, tok, PROMPTS[:2], Sampling(10, eos_token_ids=[], num_return_sequences=3))
    assert [r.token_ids for r in rep] == [greedy[0].token_ids] * 3 + [greedy[1].token_ids] * 3
    sampled = gen(
        model,
        tok,
        PROMPTS[:2],
        Sampling(10, temperature=1.0, seed=1, eos_token_ids=[], num_return_sequences=3),
    )
    assert len(sampled) == 6 and len({tuple(r.token_ids) for r in sampled[:3]}) > 1


# ----------------------------------------------------------------------------- batching


def test_generate_order_callback_and_batches(model, tok):
    prompts = PROMPTS * 3
    cfg = Sampling(8, eos_token_ids=[])
    expected = [gen(model, tok, [p], cfg)[0].token_ids for p in PROMPTS] * 3  # each alone
    seen: list[int] = []
    res = gen(
        model,
        tok,
        prompts,
        cfg,
        EngineOptions(batch_size=4),
        on_result=lambda i, r: seen.append(i),
    )
    assert [r.token_ids for r in res] == expected
    assert [r.index for r in res] == list(range(len(prompts)))
    assert sorted(seen) == list(range(len(prompts)))
    auto = gen(model, tok, prompts, cfg)
    assert [r.token_ids for r in auto] == expected


def test_auto_batch_size_is_capped_and_memory_bound(tok):
    model = make_llama(len(tok))
    assert auto_batch_size(model, 32, 64) == 64  # plenty of RAM: the CPU cap applies
    assert auto_batch_size(model, 32, 256, EngineOptions(max_batch_size=5)) == 5
    per_row = estimate_row_bytes(model.config, 32, 64, 4)
    assert auto_batch_size(model, 32, 64, free_bytes=per_row * 6) == 3  # half of free memory
    assert auto_batch_size(model, 32, 64, free_bytes=1) == 1


def test_config_validation():
    with pytest.raises(ConfigError, match="top_p"):
        Sampling(top_p=1.5).check()
    with pytest.raises(ConfigError, match="min_new_tokens"):
        Sampling(max_new_tokens=4, min_new_tokens=5).check()
    with pytest.raises(ConfigError, match="stop_strings"):
        Sampling(stop_strings=[""]).check()
    with pytest.raises(ConfigError, match="static_cache"):
        EngineOptions(static_cache="sometimes").check()


# ----------------------------------------------------------------------------- cache helpers


def test_cache_select_and_trim(tok):
    model = make_llama(len(tok))
    ids = torch.tensor([tok("abcdef").input_ids] * 3)
    out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    k0 = cache.layers[0].keys.clone()
    assert select_cache_rows(cache, torch.tensor([0, 2])) is cache
    assert cache.layers[0].keys.shape[0] == 2
    torch.testing.assert_close(cache.layers[0].keys, k0[[0, 2]])
    assert trim_cache_left(cache, 2)
    assert cache.get_seq_length() == 4
    legacy = ((torch.zeros(3, 2, 5, 4), torch.ones(3, 2, 5, 4)),)
    assert select_cache_rows(legacy, torch.tensor([1]))[0][0].shape[0] == 1
    assert select_cache_rows(object(), torch.tensor([0])) is None


def test_incremental_text_equals_full_decode(tok):
    text = "Hello, world! 12 + 30 = 42\nok"
    ids = tok(text).input_ids
    inc = IncrementalText(tok)
    for i in range(1, len(ids) + 1):
        inc.update(ids[:i])
    assert inc.text == tok.decode(ids) == text


def test_bf16_autocast_runs(tok):
    model = make_llama(len(tok))
    res = gen(model, tok, PROMPTS, Sampling(6, eos_token_ids=[]), EngineOptions(dtype="bf16"))
    assert all(r.n_tokens == 6 for r in res)
    with pytest.raises(ConfigError, match="fp32"):
        gen(model.to(torch.bfloat16), tok, PROMPTS, Sampling(4), EngineOptions(dtype="fp32"))


# ----------------------------------------------------------------------------- loading + CLI


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory, tok) -> str:
    root = tmp_path_factory.mktemp("models")
    model = make_llama(len(tok))
    run_model = root / "run" / "model"
    model.save_pretrained(run_model)
    tok.save_pretrained(run_model)
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    return str(root)


def test_load_run_dir_and_hf_dir(saved_model, tok):
    m1, t1, info = load_model_and_tokenizer(f"{saved_model}/run", dtype="fp32")
    assert info["source"] == "run" and info["path"].endswith("model")
    assert info["dtype"] == "fp32" and info["device"] == "cpu"
    assert info["n_params"] == sum(p.numel() for p in m1.parameters())
    assert info["load_seconds"] > 0 and not m1.training
    reference = make_llama(len(tok))
    assert (
        gen(m1, t1, PROMPTS, Sampling(8))[0].token_ids
        == gen(reference, tok, PROMPTS, Sampling(8))[0].token_ids
    )
    m2, _t2, info2 = load_model_and_tokenizer(f"{saved_model}/hf", dtype="bf16")
    assert info2["source"] == "hf" and info2["dtype"] == "bf16"
    assert next(m2.parameters()).dtype == torch.bfloat16


def test_loading_errors(tmp_path, saved_model):
    with pytest.raises(UserError, match="neither"):
        resolve_model_path(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope" / "x" / "y"))
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", "hub")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="cuda"):
            resolve_device("cuda")
        with pytest.raises(DeviceUnavailableError):
            load_model_and_tokenizer(f"{saved_model}/hf", device="cuda")
    with pytest.raises(UserError, match="dtype"):
        resolve_torch_dtype("int3")


def test_auto_dtype_follows_cpu_flags():
    assert host_supports_fast_bf16("cpu", cpuinfo="flags\t\t: fpu avx2 avx512_bf16\n")
    assert host_supports_fast_bf16("cpu", cpuinfo="flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not host_supports_fast_bf16("cpu", cpuinfo="flags\t\t: fpu avx2 avx512f\n")
    expected = torch.bfloat16 if host_supports_fast_bf16("cpu") else torch.float32
    assert resolve_torch_dtype("auto", "cpu") == expected


def _cli(argv: list[str]) -> int:
    from shoestring.generate import cli as generate

    parser = argparse.ArgumentParser()
    generate.add_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_streams_one_prompt_and_batches_several(saved_model, tok, capsys, tmp_path):
    out_dir = ["--out", str(tmp_path)]
    argv = ["generate", f"{saved_model}/run", "--prompt", "Hi", "--max-new-tokens", "8"]
    assert _cli([*argv, "--dtype", "fp32", "--device", "cpu", *out_dir]) == 0
    out = capsys.readouterr()
    expected = gen(make_llama(len(tok)), tok, ["Hi"], Sampling(max_new_tokens=8))[0].text
    assert out.out == "Hi" + expected + "\n"  # stdout: the text alone
    assert "tokens/s" in out.err and "loaded" in out.err
    # the run directory: its path is the last line on stderr
    run = tmp_path / "generate"
    assert out.err.splitlines()[-1] == str(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kind"] == "generate" and summary["status"] == "finished"
    assert summary["runtime"] == {"device": "cpu", "dtype": "fp32"}
    assert summary["prompts"] == 1 and summary["tokens_per_second"] > 0
    (record,) = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    assert record["prompt"] == "Hi" and record["text"] == expected
    assert record["tokens"] == summary["tokens"] and record["finish_reason"] in ("eos", "length")
    config = json.loads((run / "config.json").read_text())
    assert config["prompts"] == ["Hi"] and config["max_new_tokens"] == 8
    assert "loaded" in (run / "log.txt").read_text() and (run / "report.md").is_file()
    argv = ["generate", f"{saved_model}/hf", "--prompt", "a", "--prompt", "bcd"]
    argv += ["--max-new-tokens", "4", "--temperature", "0.8", "--seed", "1", *out_dir]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "=== [0]" in out and "=== [1]" in out
    lines = (tmp_path / "generate-2" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(x)["prompt"] for x in lines] == ["a", "bcd"]
    # --quiet: the texts still print; stderr holds the run directory's path alone
    argv = ["generate", f"{saved_model}/hf", "--prompt", "a", "--prompt", "bcd", "--quiet"]
    assert _cli([*argv, "--max-new-tokens", "4", *out_dir, "--name", "q"]) == 0
    quiet = capsys.readouterr()
    assert "=== [1]" in quiet.out and quiet.err == f"{tmp_path / 'q'}\n"
    with pytest.raises(UserError, match="--prompt"):
        _cli(["generate", f"{saved_model}/hf", *out_dir])


def test_cli_config_layers_file_then_flags_then_set(tmp_path):
    """generate layers like every command: defaults < --config FILE < flags < --set."""
    from shoestring.generate import cli as generate

    f = tmp_path / "g.yaml"
    f.write_text("model: m\nprompts: [x]\nmax_new_tokens: 7\ntemperature: 0.5\n")
    parser = argparse.ArgumentParser()
    generate.add_cli(parser.add_subparsers())
    argv = ["generate", "--config", str(f), "--temperature", "0.7", "--set", "seed=3"]
    cfg = generate.generate_cli_config(parser.parse_args([*argv, "--set", "temperature=0.9", "-q"]))
    assert cfg.model == "m" and cfg.prompts == ["x"] and cfg.max_new_tokens == 7  # the file
    assert cfg.temperature == pytest.approx(0.9) and cfg.seed == 3  # --set over the flag
    assert cfg.output.quiet and cfg.output.dir == "runs" and cfg.output.name == ""
    with pytest.raises(ConfigError, match="did you mean 'max_new_tokens'"):
        generate.generate_cli_config(parser.parse_args([*argv, "--set", "max_new_token=3"]))


# ----------------------------------------------------------------------------- fast paths


def test_grouped_prefill_equals_single_padded_prefill(model, tok, monkeypatch):
    from shoestring.engine import prefill

    assert prefill.prefill_groups([5, 50, 48, 20, 6], ratio=0.8, min_tokens=1) == [
        [1, 2],
        [3],
        [4, 0],
    ]
    assert prefill.prefill_groups([5, 50, 48, 20, 6], ratio=0.8, min_tokens=100) == [
        [1, 2],
        [3, 4, 0],
    ]
    cfg = Sampling(max_new_tokens=12, eos_token_ids=[])
    monkeypatch.setattr(prefill, "PREFILL_GROUP_MIN_TOKENS", 1)
    grouped = gen(model, tok, PROMPTS, cfg)
    plain = gen(model, tok, PROMPTS, cfg, EngineOptions(group_prefill=False, preallocate=False))
    assert [r.token_ids for r in grouped] == [r.token_ids for r in plain]
    for prompt, res in zip(PROMPTS, grouped, strict=True):
        assert res.token_ids == hf_greedy(model, tok, prompt, 12, eos=[])


def test_bf16_cpu_fp32_attention_is_scoped(tok):
    model = make_llama(len(tok)).to(torch.bfloat16)
    cfg = Sampling(max_new_tokens=6, eos_token_ids=[])
    fast = gen(model, tok, PROMPTS, cfg)
    assert model.config._attn_implementation == "sdpa"  # restored after the call
    assert all(r.n_tokens == 6 for r in fast)
    plain = gen(model, tok, PROMPTS, cfg, EngineOptions(cpu_fp32_attention=False))
    assert all(r.n_tokens == 6 for r in plain)


def test_fp32_attention_refused_mid_decode_retries_from_fresh_rows(tok, monkeypatch):
    """A model that refuses the fp32 cache in a decode step (after every row got a token) is
    rerun with its own dtype from empty rows: no row keeps the failed attempt's token."""
    from shoestring.engine import decode

    model = make_llama(len(tok)).to(torch.bfloat16)
    cfg = Sampling(max_new_tokens=6, eos_token_ids=[])
    options = EngineOptions(lean_decode=False)
    plain = gen(
        model, tok, PROMPTS, cfg, EngineOptions(lean_decode=False, cpu_fp32_attention=False)
    )
    real = decode.forward_last_logits
    calls = []

    def refuse_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("expected scalar type BFloat16 but found Float (dtype mismatch)")
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "forward_last_logits", refuse_once)
    retried = gen(model, tok, PROMPTS, cfg, options)
    assert len(calls) > 1 and model._shoestring_no_fp32_attention
    assert [r.token_ids for r in retried] == [r.token_ids for r in plain]
    assert all(r.n_tokens == 6 for r in retried)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
        {
            "position": "rope",
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 4,
            "v_head_dim": 8,
        },
    ],
    ids=["learned", "rope-swiglu", "mla"],
)
def test_shoestring_gpt_greedy_equals_hf(tok, variant):
    from shoestring.models import gpt

    torch.manual_seed(0)
    cfg = gpt.ShoestringGPTConfig(
        vocab_size=len(tok),
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=256,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        **variant,
    )
    model = gpt.ShoestringGPTForCausalLM(cfg).eval()
    res = gen(model, tok, PROMPTS, Sampling(max_new_tokens=12, eos_token_ids=[]))
    for prompt, r in zip(PROMPTS, res, strict=True):
        assert r.token_ids == hf_greedy(model, tok, prompt, 12, eos=[])


@pytest.mark.parametrize("refill", [False, True])
def test_generate_retries_out_of_memory_with_smaller_batches(tok, monkeypatch, refill):
    model = make_llama(len(tok))
    cfg = Sampling(max_new_tokens=6, eos_token_ids=[])
    options = EngineOptions(batch_size=5, refill=refill)
    expected = [r.token_ids for r in gen(model, tok, PROMPTS, cfg, options)]
    real = Engine._decode
    sizes: list[int] = []

    def flaky(self, ids_list, n, book, generator, max_rows, processor):
        rows = max_rows or len(ids_list)  # with refill: all prompts, rows bounded
        sizes.append(rows)
        if rows > 2:
            raise RuntimeError("CPU out of memory (simulated)")
        return real(self, ids_list, n, book, generator, max_rows, processor)

    monkeypatch.setattr(Engine, "_decode", flaky)
    seen: list[int] = []
    res = gen(model, tok, PROMPTS, cfg, options, on_result=lambda i, r: seen.append(i))
    assert [r.token_ids for r in res] == expected
    assert sizes[:2] == [5, 2] and max(sizes[1:]) <= 2
    assert len(sizes) == (2 if refill else 1 + -(-len(PROMPTS) // 2))
    assert sorted(seen) == list(range(len(PROMPTS)))


# ----------------------------------------------------------------------------- continuous batching

REFILL_PROMPTS = [
    "x",
    "Hi there",
    "a b c d e f g h",
    "Question: what is 2+2?\nAnswer:",
    "The quick brown fox jumps over the lazy dog.",
    "zz",
    "one two three",
    "The quick brown fox jumps over the lazy dog, twice over and again.",
]


def _varied_eos(model, tok) -> list[int]:
    """EOS ids under which the prompts' greedy answers end at different lengths: the token
    each prompt produces at a different step of its own answer."""
    cfg = Sampling(max_new_tokens=14, eos_token_ids=[])
    outs = [r.token_ids for r in gen(model, tok, REFILL_PROMPTS, cfg)]
    return sorted({out[(3 * i) % 13] for i, out in enumerate(outs)})


@pytest.mark.parametrize("n", [1, 2])
def test_continuous_batching_gives_each_prompt_its_output_alone(tok, monkeypatch, n):
    """Prompts that join the running batch as rows finish (continuous batching) get exactly the
    greedy tokens they get when generated alone - in the engine's order (longest first) and
    in an order where a longer prompt joins a narrower batch (the cache widens on the left)."""
    from shoestring.engine import decode

    model = make_llama(len(tok))
    eos = _varied_eos(model, tok)
    cfg = Sampling(max_new_tokens=14, eos_token_ids=eos, num_return_sequences=n)
    alone = [gen(model, tok, [p], cfg) for p in REFILL_PROMPTS]
    lengths = {len(r[0].token_ids) for r in alone}
    assert len(lengths) >= 3  # answers do end at different lengths

    refills: list[int] = []
    real_refill = decode._refill
    monkeypatch.setattr(decode, "_refill", lambda b, new: (refills.append(1), real_refill(b, new)))
    res = gen(model, tok, REFILL_PROMPTS, cfg, EngineOptions(batch_size=3 * n))
    for i, want in enumerate(alone):
        for k in range(n):
            assert res[i * n + k].token_ids == want[k].token_ids, (i, k)
    assert refills  # rows were actually refilled mid-batch
    refills.clear()
    shortest_first = sorted(range(len(REFILL_PROMPTS)), key=lambda i: len(REFILL_PROMPTS[i]))
    res = dynamic(model, tok, [REFILL_PROMPTS[i] for i in shortest_first], cfg, max_rows=2 * n)
    for j, i in enumerate(shortest_first):
        for k in range(n):
            assert res[j * n + k].token_ids == alone[i][k].token_ids, (i, k)
    assert refills


def test_without_refill_the_batches_run_one_after_another(tok):
    model = make_llama(len(tok))
    cfg = Sampling(max_new_tokens=8, eos_token_ids=_varied_eos(model, tok))
    with_refill = gen(model, tok, REFILL_PROMPTS, cfg, EngineOptions(batch_size=3))
    without = gen(model, tok, REFILL_PROMPTS, cfg, EngineOptions(batch_size=3, refill=False))
    assert [r.token_ids for r in with_refill] == [r.token_ids for r in without]


def test_logits_processor_ends_each_prompt_at_its_own_length(tok):
    """A per-row rule (the benchmarks' forced EOS at a length drawn per prompt) sees the
    caller's output indices and each row's token count, through refills and sorting."""
    model = make_llama(len(tok))
    want = [5, 1, 9, 3, 7, 2, 8, 4]

    def force_eos(outs: list[int], generated: list[int], logits: torch.Tensor) -> None:
        for b, (o, g) in enumerate(zip(outs, generated, strict=True)):
            if g == want[o] - 1:
                logits[b] = float("-inf")
                logits[b, EOS] = 0.0
            else:
                logits[b, EOS] = float("-inf")

    cfg = Sampling(max_new_tokens=12, eos_token_ids=[EOS])
    options = EngineOptions(batch_size=3)
    res = gen(model, tok, REFILL_PROMPTS, cfg, options, logits_processor=force_eos)
    assert [r.n_tokens for r in res] == want
    assert all(r.finish_reason == "eos" and r.token_ids[-1] == EOS for r in res)
