"""Counter-based sampling streams: a prompt's samples depend on the seed, its stream and nothing
else in the call.

``stream_uniforms`` must be splitmix64 bit for bit (int64 wrapping, logical shifts), uniform,
and different across seeds, keys and positions; the engine must give a prompt the same sampled
tokens alone and among other prompts of other lengths, in any order, batch size, with refill on
or off, after an out-of-memory retry, and on the static backend; and ``generate`` under
torchrun must write the sampled records one process writes. Tiny random models, built locally.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.engine import Engine, EngineOptions, GenerationResult, Sampling
from shoestring.engine.sampling import row_keys, stream_uniforms

TOK = char_tokenizer()
PROMPTS = ["Q: 12+7=", "a", "The cat sat on the mat.", "9*9", "xyz xyz x"]
MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- the generator


def _splitmix64(x: int) -> int:
    """splitmix64 on Python's unbounded integers (the reference for the int64 tensor code)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _reference(seed: int, key: int, position: int) -> float:
    h = _splitmix64(seed & MASK64)
    h = _splitmix64(h ^ (key & MASK64))
    h = _splitmix64(h ^ (position & MASK64))
    return (h >> 11) / 2**53


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def test_the_reference_is_splitmix64() -> None:
    # the published first outputs of splitmix64 seeded 1234567 (state advanced by the gamma)
    assert _splitmix64(1234567) == 6457827717110365317
    assert _splitmix64((1234567 + 0x9E3779B97F4A7C15) & MASK64) == 3203168211198807973


def test_int64_tensor_arithmetic_wraps_as_the_mixer_needs() -> None:
    big = torch.tensor([2**62, -(2**63), 2**63 - 1], dtype=torch.int64)
    assert (big * 4).tolist() == [0, 0, -4]  # multiplication wraps modulo 2**64
    assert (big + 1).tolist() == [2**62 + 1, -(2**63) + 1, -(2**63)]  # so does addition
    assert (torch.tensor([-1]) >> 60).item() == -1  # arithmetic: why the code masks


def test_stream_uniforms_equal_the_reference_bit_for_bit() -> None:
    keys = [0, 1, 2, 12345, 2**62 + 7, _signed(0xDEADBEEFCAFEBABE), -1]
    positions = [0, 1, 2, 100, 4095]
    for seed in (0, 1, 2**40 + 3, 2**64 - 1):
        got = stream_uniforms(seed, torch.tensor(keys)[:, None], torch.tensor(positions)[None, :])
        assert got.dtype == torch.float64 and got.shape == (len(keys), len(positions))
        want = [[_reference(seed, k, p) for p in positions] for k in keys]
        assert got.tolist() == want  # exact: the same 53 bits


def test_row_keys_hash_stream_and_sample() -> None:
    keys = row_keys([5, 9], 3)
    h = [_splitmix64(s) for s in (5, 9)]
    assert keys.tolist() == [_signed(_splitmix64(x ^ k)) for x in h for k in range(3)]
    assert row_keys([5], 1).tolist() == keys[:1].tolist()  # sample 0 whatever the count
    assert row_keys([2**64 + 5], 1).tolist() == keys[:1].tolist()  # streams modulo 2**64
    assert row_keys([], 4).shape == (0,)


def _ks(u: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of ``u``'s empirical distribution from U(0, 1)."""
    x, _ = u.sort()
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - x, x - (i - 1) / n).max())


@pytest.mark.parametrize("axis", ["keys", "positions", "seeds"])
def test_stream_uniforms_are_uniform_along_each_axis(axis: str) -> None:
    """100,000 numbers along keys, positions or seeds: in [0, 1), distinct, mean, variance and
    low bits right, and a KS distance below its 1-in-a-million critical value (0.0085) -
    bounds a constant, a counter or a few-bit generator fails by orders of magnitude."""
    n = 100_000
    r = torch.arange(n)
    if axis == "keys":
        u = stream_uniforms(7, r, torch.tensor(0))
    elif axis == "positions":
        u = stream_uniforms(7, torch.tensor(3), r)
    else:  # one seed per call (the seed is a host integer), 100 keys each
        keys, zero = torch.arange(100), torch.tensor(0)
        u = torch.cat([stream_uniforms(s, keys, zero) for s in range(n // 100)])
    assert u.dtype == torch.float64 and u.numel() == n
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert u.unique().numel() == n  # 53-bit numbers: a repeat would be a broken mixer
    se = math.sqrt(1 / 12 / n)
    assert abs(float(u.mean()) - 0.5) < 5 * se
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / n)
    low = (u * 2**53).to(torch.int64) & 1  # the last of the 53 bits is random too
    assert abs(float(low.double().mean()) - 0.5) < 5 * math.sqrt(0.25 / n)
    assert _ks(u) < 0.0085
    # neighbours independent: the lag-1 correlation of a random sequence is ~N(0, 1/n)
    c = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    assert abs(float(c)) < 5 / math.sqrt(n)


def test_stream_uniforms_differ_by_seed_key_and_position_and_repeat() -> None:
    keys, pos = torch.arange(1000), torch.arange(1000) % 7
    a = stream_uniforms(1, keys, pos)
    assert torch.equal(a, stream_uniforms(1, keys.clone(), pos.clone()))  # a pure function
    for other in (
        stream_uniforms(2, keys, pos),
        stream_uniforms(1, keys + 1, pos),
        stream_uniforms(1, keys, pos + 1),
    ):
        assert int((other == a).sum()) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_uniforms_are_the_same_on_cuda() -> None:
    keys, pos = row_keys(range(64), 3), torch.arange(192) % 50
    cpu = stream_uniforms(11, keys, pos)
    gpu = stream_uniforms(11, keys.cuda(), pos.cuda())
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(TOK),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


# ten EOS ids: sampled rows end at many different steps (compaction and refill happen)
HOT = Sampling(
    max_new_tokens=14,
    temperature=1.0,
    top_k=40,
    seed=5,
    eos_token_ids=list(range(30, 40)),
    num_return_sequences=3,
)


def _tokens(res: list[GenerationResult]) -> list[list[int]]:
    return [r.token_ids for r in res]


def _run(model: torch.nn.Module, prompts: list[str], **kw: object) -> list[list[int]]:
    """Sampled tokens of ``prompts`` on the dynamic backend (``kw``: EngineOptions, plus
    ``streams`` and ``sampling``)."""
    streams = kw.pop("streams", None)
    sampling = kw.pop("sampling", HOT)
    options = EngineOptions(static_cache="off", **kw)  # type: ignore[arg-type]
    engine = Engine(model, TOK, options)
    return _tokens(engine.generate(prompts, sampling, streams=streams))  # type: ignore[arg-type]


def _alone(model: torch.nn.Module, streams: list[int]) -> dict[int, list[list[int]]]:
    """Each prompt decoded alone on its stream: prompt i -> its 3 samples."""
    return {i: _run(model, [PROMPTS[i]], streams=[streams[i]]) for i in range(len(PROMPTS))}


def _by_prompt(tokens: list[list[int]], order: list[int]) -> dict[int, list[list[int]]]:
    n = HOT.num_return_sequences
    return {p: tokens[j * n : (j + 1) * n] for j, p in enumerate(order)}


def test_a_prompt_samples_the_same_whatever_shares_its_call(model: torch.nn.Module) -> None:
    streams = [40, 7, 13, 2, 99]  # any integers: the stream of PROMPTS[i] is streams[i]
    alone = _alone(model, streams)
    ends = {len(t) for samples in alone.values() for t in samples}
    assert len(ends) > 3, ends  # rows end at many steps: compaction and refill are exercised
    assert any(len({tuple(t) for t in s}) > 1 for s in alone.values())  # samples differ
    orders = ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [3, 1, 4])
    for order in orders:
        for kw in (
            {"batch_size": 3, "refill": True},
            {"batch_size": 3, "refill": False},
            {"batch_size": 7, "refill": True},
            {"batch_size": 0},  # auto: all in one batch
            {"batch_size": 4, "compact": False},  # finished rows stay in the batch
        ):
            got = _run(
                model, [PROMPTS[i] for i in order], streams=[streams[i] for i in order], **kw
            )
            assert _by_prompt(got, order) == {i: alone[i] for i in order}, (order, kw)


def test_without_streams_prompt_i_is_stream_i(model: torch.nn.Module) -> None:
    together = _by_prompt(_run(model, PROMPTS, batch_size=4), list(range(len(PROMPTS))))
    assert together == _alone(model, list(range(len(PROMPTS))))
    # another seed draws other samples; a wrong number of streams is refused
    other = _run(model, PROMPTS, sampling=dataclasses.replace(HOT, seed=6))
    assert _by_prompt(other, list(range(len(PROMPTS)))) != together
    with pytest.raises(ValueError, match="5 prompts but 2 streams"):
        _run(model, PROMPTS, streams=[0, 1])


def test_an_out_of_memory_retry_keeps_each_rows_stream(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _run(model, PROMPTS, batch_size=9)
    real = Engine._decode

    def small_only(self, ids_list, n, book, keys, max_rows, processor):  # type: ignore[no-untyped-def]
        if (max_rows or len(ids_list) * n) > 3:
            raise RuntimeError("CPU out of memory (simulated)")
        return real(self, ids_list, n, book, keys, max_rows, processor)

    monkeypatch.setattr(Engine, "_decode", small_only)
    for refill in (True, False):
        assert _run(model, PROMPTS, batch_size=9, refill=refill) == expected


def test_the_static_backend_samples_what_the_dynamic_one_does(model: torch.nn.Module) -> None:
    """The static path (its step eager on a CPU) computes each row's numbers from the same
    stream keys: the same samples as the dynamic loop, for a prompt alone or in a group."""
    streams = [40, 7, 13, 2, 99]
    alone = _alone(model, streams)
    for order, batch in (([0, 1, 2, 3, 4], 0), ([3, 0, 4], 2)):
        engine = Engine(model, TOK, EngineOptions(static_cache="on", batch_size=batch * 3))
        res = engine.generate([PROMPTS[i] for i in order], HOT, streams=[streams[i] for i in order])
        assert _by_prompt(_tokens(res), order) == {i: alone[i] for i in order}


def test_samples_follow_the_models_distribution(model: torch.nn.Module) -> None:
    """4,000 samples of one prompt's first token: each token's frequency within 5 standard
    errors of its probability (each sample its own stream key, all at position 0)."""
    n = 4000
    s = Sampling(max_new_tokens=1, temperature=1.0, seed=1, num_return_sequences=n)
    res = Engine(model, TOK, EngineOptions(static_cache="off")).generate([PROMPTS[0]], s)
    ids = TOK(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        p = model(ids).logits[0, -1].double().softmax(-1)
    counts = torch.bincount(torch.tensor([r.token_ids[0] for r in res]), minlength=len(p))
    se = (p * (1 - p) / n).sqrt()
    assert ((counts.double() / n - p).abs() <= 5 * se + 1e-9).all()
    assert int((counts > 0).sum()) > 10  # a spread distribution, not a near-greedy one


# ----------------------------------------------------------------------------- torchrun


def test_bench_rounds_over_ranks_sample_what_one_call_samples(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench's rounds dealt over two ranks (simulated one rank after the other: each keeps
    its own share of the gather) give every prompt the samples one call gives it on the
    order's streams (the problems' idx), and those are the streams, not the positions."""
    from shoestring.bench import ranks as bench_ranks
    from shoestring.distributed import DistInfo, shard_positions

    def own_share(local, size, info, strided):  # type: ignore[no-untyped-def]
        out = [None] * size
        for pos, res in zip(shard_positions(size, info, strided=strided), local, strict=True):
            out[pos] = res
        return out

    monkeypatch.setattr(bench_ranks, "gather_ordered", own_share)
    ids = [TOK(p).input_ids for p in PROMPTS]
    idx = [17, 3, 250, 4, 9]  # the problems' idx: their streams
    one = dataclasses.replace(HOT, num_return_sequences=1)  # bench: one answer per problem
    order = bench_ranks.Order(ids, per_rank=1, sampling=one, streams=idx)
    engine = Engine(model, TOK, EngineOptions(static_cache="off"))
    got: dict[int, list[int]] = {}

    def keep(j: int, res: GenerationResult | None) -> None:
        if res is not None:
            got[j] = res.token_ids

    for rank in (0, 1):
        bench_ranks.generate_in_rounds(engine, order, DistInfo(2, rank), keep)
    answers = [got[j] for j in range(len(ids))]
    assert answers == _tokens(engine.generate(ids, one, streams=idx))
    assert answers != _tokens(engine.generate(ids, one))  # positions as streams: others


@pytest.mark.slow
def test_sampled_generate_on_two_ranks_writes_what_one_process_writes(tmp_path: Path) -> None:
    from test_distributed_commands import _one_process, _records, _two_ranks

    model_dir = save_tiny_llama(tmp_path / "tiny-llama", char_tokenizer())
    prompts = ["Question: 1+2=", "Tom has 3 apples.", "abc", "What is 7*6?", "x"]
    args = ["generate", str(model_dir), "--max-new-tokens", "12", "--out", str(tmp_path / "r")]
    args += ["--temperature", "1.0", "--seed", "3", "--batch-size", "2", "-q"]
    for p in prompts:
        args += ["--prompt", p]
    one = _one_process([*args, "--name", "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    log = tmp_path / "log.txt"
    assert _two_ranks([*args, "--name", "two"], log) == 0, log.read_text()[-3000:]
    records = _records(tmp_path / "r" / "one" / "generations.jsonl")
    assert _records(tmp_path / "r" / "two" / "generations.jsonl") == records
    # sampled, not greedy: greedy decoding of the same prompts writes other text
    engine = Engine(LlamaForCausalLM.from_pretrained(model_dir), TOK)
    greedy = engine.generate(prompts, Sampling(max_new_tokens=12))
    assert [r["text"] for r in records] != [r.text for r in greedy]
