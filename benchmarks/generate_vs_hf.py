"""shoestring's generation engine vs Hugging Face ``model.generate`` batched - the peer at its
best: the same batch size, the same dtype, left padding, prompts sorted longest first (what
lm-eval-harness's HF backend does) - on the same model and prompts, in one process,
interleaved (round 1: shoestring then HF, round 2: HF then shoestring, ...).

Two workloads, the same rule applied to both engines:

* **variable**: each prompt's answer ends at its own length, drawn once from a fixed
  distribution (``50 + 250 * Beta(2, 5)`` tokens: 50-300, mean ~120, right-skewed like GSM8K
  answers). Random weights never choose EOS, so EOS is forced: masked before the prompt's
  length, forced at it - a ``LogitsProcessor`` for HF, the engine's ``logits_processor`` for
  shoestring. A static batch keeps decoding (padding) finished rows until its longest answer
  ends; an engine that refills finished rows from the queue does not. ``bench`` on 1,319
  problems is this case.
* **fixed**: every answer exactly ``--fixed-tokens`` long (EOS masked until then).

The model is Qwen2-shaped with RANDOM weights (default Qwen2.5-0.5B's shape with its real
151,936-entry vocabulary, tied; nothing downloaded), in the host class's dtype (``--dtype``
auto: bf16 where the CPU has bf16 dot products, else fp32; the first line names the class).
Prompts are GSM8K test questions (``Question: ...\\nAnswer:``) tokenised by a small BPE fitted
on GSM8K text; both engines get the same token ids. Throughput counts the tokens the rule asks
for (generated answers), so a static batch's padding steps cost it time but add no tokens. Peak
RSS is each run's own (the mark is reset before it).

    python benchmarks/generate_vs_hf.py --rounds 2
    python benchmarks/generate_vs_hf.py --rounds 2 --variant lean_prefill=false  # an A/B too
    python benchmarks/generate_vs_hf.py --hidden 256 --intermediate 704 --layers 4 --heads 4 \\
        --kv-heads 2 --vocab 32000 --variable-prompts 64 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_throughput import build_tokenizer, load_questions  # noqa: E402 - sibling script
from engine_split import Timers, print_split, split_timers  # noqa: E402
from grpo_vs_trl import add_shape_options  # noqa: E402
from shoestring.engine import Engine, EngineOptions, Sampling  # noqa: E402
from shoestring.engine.decode import REFILL_MIN_FRACTION  # noqa: E402
from shoestring.host import describe_host  # noqa: E402
from shoestring.runtime import resolve_dtype  # noqa: E402
from shoestring.util.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402

#: Qwen2.5-0.5B's shape (494M parameters with tied embeddings)
# Each engine runs at the host's best dtype unless told otherwise: a peer measured in a dtype
# its host emulates (bf16 on an AVX2 CPU) would make any ratio flattering.
DTYPE_HELP = (
    "auto (default): the host class's dtype, bf16 where the CPU has bf16 dot products "
    "(AVX512-BF16, AMX), else fp32; the same for both engines"
)
QWEN25_05B = {
    "hidden": 896,
    "intermediate": 4864,
    "layers": 24,
    "heads": 14,
    "kv_heads": 2,
    "vocab": 151936,
}


def answer_lengths(n: int, seed: int, lo: int = 50, hi: int = 300) -> list[int]:
    """Per-prompt answer lengths: ``lo + (hi - lo) * Beta(2, 5)``, a fixed draw per seed."""
    rng = random.Random(seed)
    return [lo + int((hi - lo) * rng.betavariate(2.0, 5.0)) for _ in range(n)]


def force_length(logits: torch.Tensor, row: int, generated: int, length: int, eos: int) -> None:
    """The rule both engines apply: EOS is impossible before ``length`` tokens and certain as
    token number ``length``."""
    if generated >= length - 1:
        logits[row] = float("-inf")
        logits[row, eos] = 0.0
    else:
        logits[row, eos] = float("-inf")


def decode_steps(lengths: list[int], batch: int, refill_rows: int | None) -> int:
    """Forward passes after the prefills that ``lengths`` (answer tokens per prompt, in queue
    order) need at ``batch`` rows: static batches one after another (``refill_rows=None``), or
    a running batch that takes queued prompts once ``refill_rows`` rows are free (the engine's
    rule). The prefill gives each row its first token. At equal step time, the ratio of two
    such counts bounds what a schedule alone can gain."""
    if refill_rows is None:
        return sum(max(lengths[i : i + batch]) - 1 for i in range(0, len(lengths), batch))
    queue, left, steps = list(lengths), [], 0
    while queue or left:
        if not left:  # an empty batch starts afresh from the queue
            left, queue = [n - 1 for n in queue[:batch]], queue[batch:]
            left = [n for n in left if n > 0]
            continue
        steps += 1
        left = [n - 1 for n in left if n > 1]
        if queue and batch - len(left) >= refill_rows:
            free = batch - len(left)
            left += [n - 1 for n in queue[:free] if n > 1]
            queue = queue[free:]
    return steps


def build_model(args: argparse.Namespace, eos: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = Qwen2ForCausalLM(cfg)
    if getattr(args, "bf16_values", False):  # as a bf16 checkpoint loads: bf16 values in fp32
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    return model.to(dtype).eval()


def add_bf16_values_option(p: argparse.ArgumentParser) -> None:
    """``--bf16-values``: the random weights rounded to bf16 values and kept in fp32 - what a
    bf16 checkpoint (Qwen2.5's, most models') is once loaded in fp32 - for every engine."""
    p.add_argument(
        "--bf16-values",
        action="store_true",
        help="round the random weights to bf16 values, kept in fp32 (as a bf16 checkpoint such "
        "as Qwen2.5's loads in fp32), for every engine alike",
    )


def weights_note(args: argparse.Namespace) -> str:
    """How the benchmark's weights were made, for its model line."""
    return "random init, every value a bf16 value" if args.bf16_values else "random init"


def run_hf(
    model: Any, prompts: list[list[int]], lengths: list[int], batch: int, eos: int
) -> list[list[int]]:
    """``model.generate`` batch after batch (prompts already sorted longest first), greedy,
    left padding; the rule as a ``LogitsProcessor``."""
    from transformers import LogitsProcessor, LogitsProcessorList

    outs: list[list[int]] = []
    for start in range(0, len(prompts), batch):
        part = prompts[start : start + batch]
        want = lengths[start : start + batch]
        width = max(map(len, part))
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in part])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])

        class Forced(LogitsProcessor):
            def __init__(self, width: int, want: list[int]) -> None:
                self.width, self.want = width, want

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                step = input_ids.shape[1] - self.width
                for b, n in enumerate(self.want):
                    force_length(scores, b, step, n, eos)
                return scores

        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max(want),
                logits_processor=LogitsProcessorList([Forced(width, want)]),
                pad_token_id=eos,
                eos_token_id=eos,
            )
        for b, n in enumerate(want):
            outs.append(gen[b, width : width + n].tolist())
    return outs


def run_shoestring(
    model: Any,
    prompts: list[list[int]],
    lengths: list[int],
    batch: int,
    eos: int,
    engine: Engine | None = None,
) -> list[list[int]]:
    """The engine with its defaults (continuous batching, lean decode step, fp32 attention
    cache on a CPU); the rule as its ``logits_processor``. A fresh engine per call (its
    weights packed inside the timed call) unless a loaded ``engine`` is given."""

    def forced(outs: list[int], generated: list[int], logits: torch.Tensor) -> None:
        for b, (o, g) in enumerate(zip(outs, generated, strict=True)):
            force_length(logits, b, g, lengths[o], eos)

    cfg = Sampling(max_new_tokens=max(lengths), eos_token_ids=[eos])
    engine = engine or Engine(model, None, EngineOptions(batch_size=batch))
    res = engine.generate(prompts, cfg, logits_processor=forced)
    return [r.token_ids for r in res]


def engine_options(spec: str) -> dict[str, Any]:
    """``KEY=VALUE[,KEY=VALUE]`` as EngineOptions fields (true/false, numbers, else text)."""
    out: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, text = item.partition("=")
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            with contextlib.suppress(ValueError):
                value = float(text) if "." in text else int(text)
        out[key.strip()] = value
    EngineOptions(**out).check()  # an unknown field or a bad value stops here, in one line
    return out


def variant_runner(options: dict[str, Any]) -> Any:
    """``run_shoestring`` with a fresh engine of these options per call (as the default)."""

    def run(model: Any, prompts: Any, lengths: Any, batch: int, eos: int) -> list[list[int]]:
        engine = Engine(model, None, EngineOptions(batch_size=batch, **options))
        return run_shoestring(model, prompts, lengths, batch, eos, engine)

    return run


def _fresh_peak() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # give freed pages back to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_rss()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16, help="rows decoded together (both engines)")
    p.add_argument("--variable-prompts", type=int, default=32)
    p.add_argument("--fixed-prompts", type=int, default=16)
    p.add_argument("--fixed-tokens", type=int, default=64)
    p.add_argument("--workloads", default="variable,fixed")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help=DTYPE_HELP)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the answer-length draw")
    p.add_argument("--min-answer", type=int, default=50, help="variable: shortest answer")
    p.add_argument("--max-answer", type=int, default=300, help="variable: longest answer")
    p.add_argument(
        "--split",
        action="store_true",
        help="after the timed rounds, one more run per engine that times its parts "
        "(prefill, decode steps, cache copies, token choice, the rest)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="one more shoestring run per round with these EngineOptions (e.g. "
        "lean_prefill=false), interleaved with the others and compared with the default",
    )
    add_shape_options(p, **QWEN25_05B)
    add_bf16_values_option(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.dtype = resolve_dtype(args.dtype, torch.device("cpu"))  # both engines: the best here
    print(describe_host(), flush=True)  # the host class every figure below belongs to

    workloads = [w for w in args.workloads.split(",") if w]
    n_prompts = max(
        args.variable_prompts if "variable" in workloads else 0,
        args.fixed_prompts if "fixed" in workloads else 0,
    )
    questions, source = load_questions(n_prompts)
    tok = build_tokenizer(min(args.vocab, 8000))
    eos = int(tok.eos_token_id)
    prompts_all = [tok(f"Question: {q}\nAnswer:")["input_ids"] for q in questions]
    model = build_model(args, eos)
    n_params = sum(x.numel() for x in model.parameters())
    print(
        f"model: Qwen2 {weights_note(args)}, hidden {args.hidden}, {args.layers} layers, heads "
        f"{args.heads}/{args.kv_heads}, intermediate {args.intermediate}, vocab {args.vocab} "
        f"(tokenizer {len(tok)}), {n_params / 1e6:.0f}M parameters, {args.dtype}; "
        f"{args.threads} threads; batch {args.batch} for both engines",
        flush=True,
    )
    print(f"prompts: {source}", flush=True)
    # warm-up: kernels, allocator
    run_hf(model, prompts_all[:2], [4, 3], 2, eos)
    run_shoestring(model, prompts_all[:2], [4, 3], 2, eos)

    failed = False
    for work in workloads:
        n = args.variable_prompts if work == "variable" else args.fixed_prompts
        order = sorted(range(n), key=lambda i: -len(prompts_all[i]))  # longest first, as lm-eval
        prompts = [prompts_all[i] for i in order]
        if work == "variable":
            lengths = answer_lengths(n, args.seed, args.min_answer, args.max_answer)
        else:
            lengths = [args.fixed_tokens] * n
        tokens = sum(lengths)
        plen = sorted(map(len, prompts))
        print(
            f"\n[{work}] {n} prompts ({plen[0]}-{plen[-1]} tokens), answers "
            f"{min(lengths)}-{max(lengths)} tokens (mean {tokens / n:.0f}), {tokens} tokens "
            "per run",
            flush=True,
        )
        # what the schedules alone allow, before any step is timed
        static = decode_steps(lengths, args.batch, None)
        refill = max(1, math.ceil(REFILL_MIN_FRACTION * args.batch))
        engine = decode_steps(lengths, args.batch, refill)
        every = decode_steps(lengths, args.batch, 1)
        ideal = math.ceil((tokens - n) / args.batch)
        print(
            f"  decode steps: HF static batches {static}, engine (refill at {refill} free rows) "
            f"{engine}, refill at every free row {every}, perfect packing {ideal}; at equal step "
            f"time the schedule alone allows {static / max(engine, 1):.2f}x",
            flush=True,
        )
        runners = {"shoestring": run_shoestring, "hf": run_hf}
        for spec in args.variant:
            runners[f"shoestring[{spec}]"] = variant_runner(engine_options(spec))
        times: dict[str, list[float]] = {name: [] for name in runners}
        peaks: dict[str, list[float]] = {name: [] for name in runners}
        outs: dict[str, list[list[int]]] = {}
        for rnd in range(args.rounds):
            names = list(runners) if rnd % 2 == 0 else list(runners)[::-1]
            for name in names:
                _fresh_peak()
                base = current_rss_bytes()
                t0 = time.perf_counter()
                outs[name] = runners[name](model, prompts, lengths, args.batch, eos)
                secs = time.perf_counter() - t0
                peak = (peak_rss_bytes() or 0) / 2**30
                times[name].append(secs)
                peaks[name].append(peak)
                print(
                    f"  round {rnd + 1} {name:10s} {secs:7.1f} s  {tokens / secs:6.1f} tok/s  "
                    f"peak RSS {peak:.2f} GiB (start {base / 2**30:.2f})",
                    flush=True,
                )
        for name, o in outs.items():
            got = [len(x) for x in o]
            if got != lengths:
                print(f"  ERROR: {name} did not follow the length rule")
                failed = True
        same = sum(a == b for a, b in zip(outs["shoestring"], outs["hf"], strict=True))
        ss, hf = statistics.median(times["shoestring"]), statistics.median(times["hf"])
        fastest = min(times["hf"]) / min(times["shoestring"])
        print(
            f"  median: shoestring {tokens / ss:.1f} tok/s, HF generate batched {tokens / hf:.1f} "
            f"tok/s -> {hf / ss:.2f}x; fastest runs {fastest:.2f}x"
        )
        print(
            f"  peak RSS: shoestring {max(peaks['shoestring']):.2f} GiB, HF "
            f"{max(peaks['hf']):.2f} GiB; identical answers {same}/{n} "
            f"({args.dtype}: the engines' kernels differ, so greedy paths may part)"
        )
        for name in list(runners)[2:]:  # the variants against the default engine
            med = statistics.median(times[name])
            same_v = sum(a == b for a, b in zip(outs["shoestring"], outs[name], strict=True))
            print(
                f"  {name}: {tokens / med:.1f} tok/s; the default is {med / ss:.2f}x as fast "
                f"(median), peak RSS {max(peaks[name]):.2f} GiB; answers identical to the "
                f"default {same_v}/{n}"
            )
        if args.split:  # where each engine's time goes (not part of the ratio above)
            for name in runners:
                timers = Timers()
                with split_timers("hf" if name == "hf" else "shoestring", model, timers):
                    t0 = time.perf_counter()
                    runners[name](model, prompts, lengths, args.batch, eos)
                    print_split(name, timers, time.perf_counter() - t0, tokens)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
