"""Generation throughput: shoestring's batched engine vs ``model.generate`` one problem at a time.

The original study answered GSM8K problems with ``model.generate`` one problem at a time in
fp32. This benchmark runs that and shoestring's engine on the same model and the same problems
in one process, interleaved, and prints tokens/s of each and their ratio:

* at equal precision (fp32 batched vs fp32 one-at-a-time), after checking that the greedy
  outputs are identical token for token, and
* with shoestring's defaults (bf16 weights where the host computes bf16 fast, auto batch size).

The model is a Llama-shaped network with RANDOM weights (no download; speed does not depend on
what the weights learned). Random weights rarely emit EOS, so every method generates exactly
``--max-new-tokens`` tokens per problem (EOS is masked until then, ``min_new_tokens``), which
makes the work equal. Prompts are GSM8K test questions when ../shared/data/gsm8k/test.jsonl
exists, else synthetic questions, formatted ``"Question: ...\\nAnswer:"``.

    python benchmarks/bench_throughput.py --problems 32 --max-new-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from shoestring.engine import Engine, EngineOptions, Sampling, auto_batch_size
from shoestring.host import describe_host
from shoestring.runtime import host_supports_fast_bf16

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHOESTRING_SHARED", REPO.parent / "shared"))
GSM8K = SHARED / "data" / "gsm8k"


def load_questions(n: int) -> tuple[list[str], str]:
    """The first ``n`` GSM8K test questions, or synthetic ones when the data is missing."""
    path = GSM8K / "test.jsonl"
    if path.is_file():
        questions = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    questions.append(json.loads(line)["question"])
                if len(questions) == n:
                    break
        return questions, f"GSM8K test, first {len(questions)} ({path})"
    rng = random.Random(0)
    names = ["Ann", "Bob", "Carla", "Dev", "Eli", "Fay"]
    items = ["apples", "pencils", "marbles", "cookies", "stamps"]
    questions = []
    for _ in range(n):
        a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
        who, what = rng.choice(names), rng.choice(items)
        questions.append(
            f"{who} has {a} {what}. She buys {b} more and then gives away a "
            f"{c}th of them. How many {what} does {who} have left?"
        )
    return questions, f"synthetic ({n} questions; {path} not found)"


def training_texts() -> list[str]:
    """Text to fit the benchmark's BPE tokenizer on (GSM8K train, else synthetic)."""
    path = GSM8K / "train.jsonl"
    if path.is_file():
        texts = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    texts += [row["question"], row["answer"]]
        return texts
    return load_questions(2000)[0]


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE fitted in about a second, so prompt lengths look like a real model's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(training_texts(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_model(args: argparse.Namespace, eos_id: int) -> Any:
    """Llama-shaped, randomly initialised (seed 0), fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return LlamaForCausalLM(cfg).eval()


Timed = tuple[list[list[int]], float, float]  # outputs, wall seconds, CPU seconds


def run_hf(model: Any, tok: Any, prompts: list[str], max_new: int) -> Timed:
    """The original study's way: ``model.generate`` per problem, greedy, fp32."""
    outs = []
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for prompt in prompts:
            enc = tok(prompt, return_tensors="pt")
            ids = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                pad_token_id=tok.pad_token_id,
            )
            outs.append(ids[0, enc["input_ids"].shape[1] :].tolist())
            tok.decode(outs[-1], skip_special_tokens=True)
    return outs, time.perf_counter() - t0, time.process_time() - c0


def run_shoestring(
    model: Any, tok: Any, prompts: list[str], max_new: int, batch_size: int
) -> Timed:
    """shoestring's engine; it decodes the texts itself."""
    cfg = Sampling(max_new_tokens=max_new, min_new_tokens=max_new)
    engine = Engine(model, tok, EngineOptions(batch_size=batch_size))
    t0, c0 = time.perf_counter(), time.process_time()
    res = engine.generate(prompts, cfg)
    return [r.token_ids for r in res], time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=32, help="problems per method (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per problem (fixed)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, default=0, help="shoestring batch size; 0 = auto")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe_host(), flush=True)  # the host class every figure below belongs to

    questions, source = load_questions(args.problems)
    prompts = [f"Question: {q}\nAnswer:" for q in questions]
    tok = build_tokenizer(args.vocab)
    model32 = build_model(args, tok.eos_token_id)
    n_params = sum(p.numel() for p in model32.parameters())
    bf16_fast = host_supports_fast_bf16("cpu")
    default_dtype = torch.bfloat16 if bf16_fast else torch.float32
    model_default = copy.deepcopy(model32).to(default_dtype) if bf16_fast else model32
    prompt_lens = [len(tok(pr).input_ids) for pr in prompts]
    new = args.max_new_tokens
    bs32 = min(len(prompts), args.batch_size or auto_batch_size(model32, max(prompt_lens), new))
    bs_def = min(
        len(prompts), args.batch_size or auto_batch_size(model_default, max(prompt_lens), new)
    )

    print(
        f"model      Llama-shaped, RANDOM weights (seed 0): hidden {args.hidden}, "
        f"{args.layers} layers, {args.heads} heads, intermediate {args.intermediate}, "
        f"vocab {args.vocab} -> {n_params / 1e6:.1f}M parameters"
    )
    print(f"tokenizer  byte-level BPE fitted on GSM8K train text ({len(tok)} entries)")
    print(
        f"problems   {len(prompts)} from {source}; prompt tokens "
        f"{min(prompt_lens)}-{max(prompt_lens)} (mean {sum(prompt_lens) / len(prompts):.0f})"
    )
    print(
        f"work       greedy, exactly {args.max_new_tokens} new tokens per problem "
        "(EOS masked until then: min_new_tokens = max_new_tokens), same for every method"
    )
    print(
        f"host       {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, fast bf16: {bf16_fast}"
    )
    print(
        f"shoestring batch size: fp32 {bs32}, default ({str(default_dtype)[6:]}) {bs_def}"
        f"{' (auto)' if not args.batch_size else ''}"
    )
    sys.stdout.flush()

    # Warm up every path once (allocator, oneDNN kernels) so no method pays first-call costs.
    run_hf(model32, tok, prompts[:1], 4)
    run_shoestring(model32, tok, prompts[:2], 4, 2)
    run_shoestring(model_default, tok, prompts[:2], 4, 2)

    # Interleaved: the machine is shared, so each method samples the same stretch of load.
    half = len(prompts) // 2 or len(prompts)
    wall: dict[str, list[float]] = {"hf": [], "ss32": [], "ssdef": []}
    cpu: dict[str, list[float]] = {"hf": [], "ss32": [], "ssdef": []}
    outputs: dict[str, list[list[int]]] = {"hf": []}
    schedule = [
        ("ss32", None),
        ("hf", slice(0, half)),
        ("ssdef", None),
        ("hf", slice(half, len(prompts))),
        ("ss32", None),
        ("ssdef", None),
    ]
    for name, part in schedule:
        if name == "hf":
            if part.start >= part.stop:
                continue
            outs, secs, cpus = run_hf(model32, tok, prompts[part], args.max_new_tokens)
            outputs["hf"] += outs
        else:
            model, bs = (model32, bs32) if name == "ss32" else (model_default, bs_def)
            outs, secs, cpus = run_shoestring(model, tok, prompts, args.max_new_tokens, bs)
            outputs[name] = outs
        wall[name].append(secs)
        cpu[name].append(cpus)
        print(f"  ran {name:5s} {secs:7.2f} s wall, {cpus:7.2f} s CPU", file=sys.stderr, flush=True)

    tokens = len(prompts) * args.max_new_tokens
    for name, outs in outputs.items():
        assert sum(map(len, outs)) == tokens, f"{name} did not generate {tokens} tokens"
    identical = sum(a == b for a, b in zip(outputs["hf"], outputs["ss32"], strict=True))
    agree_tok = sum(
        x == y
        for a, b in zip(outputs["ss32"], outputs["ssdef"], strict=True)
        for x, y in zip(a, b, strict=True)
    )

    def rate(times: dict[str, list[float]], name: str) -> float:
        # HF ran each problem once (in two halves); shoestring ran the whole set per run.
        runs = 1 if name == "hf" else len(times[name])
        return tokens * runs / sum(times[name])

    dname = "bf16" if default_dtype == torch.bfloat16 else "fp32"
    rows = [
        ("hf", "HF model.generate, one problem at a time, fp32"),
        ("ss32", f"shoestring batched, fp32, batch {bs32}"),
        ("ssdef", f"shoestring defaults, {dname}, batch {bs_def}"),
    ]
    hf_wall, hf_cpu = rate(wall, "hf"), rate(cpu, "hf")
    print()
    print(
        f"{'method':48s} {'tok/s':>7s} {'per run':>11s} {'vs HF':>6s} {'tok/CPU-s':>10s} "
        f"{'vs HF':>6s}"
    )
    print("-" * 94)
    for key, label in rows:
        w, c = rate(wall, key), rate(cpu, key)
        per_run = "2 halves" if key == "hf" else " / ".join(f"{tokens / t:.0f}" for t in wall[key])
        print(
            f"{label:48s} {w:7.1f} {per_run:>11s} {w / hf_wall:5.2f}x {c:10.1f} {c / hf_cpu:5.2f}x"
        )
    print("-" * 94)
    print(f"fp32 greedy outputs identical to HF: {identical}/{len(prompts)} problems")
    if dname == "bf16":
        print(
            f"bf16 vs fp32 greedy tokens agreeing: {agree_tok}/{tokens} "
            "(bf16 rounding changes greedy paths; expected with random weights)"
        )
    print(
        "tok/s = generated tokens / wall time of the method (tokenise, prefill, decode, "
        "detokenise);\ntok/CPU-s = the same tokens / CPU time this process used (less "
        "sensitive to other load on a shared host); model build and warm-up excluded"
    )
    hf_tps, ss32_tps, ssdef_tps = hf_wall, rate(wall, "ss32"), rate(wall, "ssdef")
    timings = {"wall": wall, "cpu": cpu}
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "n_params": n_params,
                    "problems": len(prompts),
                    "max_new_tokens": args.max_new_tokens,
                    "threads": args.threads,
                    "source": source,
                    "hf_tokens_per_s": hf_tps,
                    "shoestring_fp32_tokens_per_s": ss32_tps,
                    "shoestring_default_tokens_per_s": ssdef_tps,
                    "default_dtype": dname,
                    "batch_fp32": bs32,
                    "batch_default": bs_def,
                    "fp32_identical": identical,
                    "timings": timings,
                },
                indent=2,
            )
        )
    return 0 if identical == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
