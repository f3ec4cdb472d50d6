"""shoestring GRPO vs TRL's GRPOTrainer: seconds per optimizer step on the same model, prompts
and settings, measured in one process and interleaved (round 1: A then B, round 2: B then A).

Both trainers get the same randomly initialised Qwen2-shaped model (built here from a config:
no download) or the same trained ``--model``, the same BPE tokenizer, the same prompt text, the
same reward (correctness), and the same settings: generations per prompt, completion length,
batch, gradient accumulation, beta, loss type, precision, device, threads, steps, and with
``--lora-rank R`` the same adapters (rank R, alpha 2R, no dropout, every linear layer but the
head: shoestring's ``lora_rank``, TRL's ``peft_config``), as docs/grpo.md's recipe. The first
step of every run is dropped (allocator warm-up). A step is a whole optimizer step, generation
included, for both; the split into generation and the rest is printed for both.

Prompts (``--prompt-source``): ``auto`` (default) takes GSM8K train questions in a ChatML
template with the step-by-step instruction - what a Qwen2.5-Instruct GRPO run on GSM8K sees,
96-256 tokens - when GSM8K is found (shared/data/gsm8k or $SHOESTRING_SHARED), else the
synthetic level-2 problems as ``Question: ...\\nAnswer:`` (28-44 tokens), and says which.

    python benchmarks/grpo_vs_trl.py --steps 8 --rounds 4
    python benchmarks/grpo_vs_trl.py --prompt-source synthetic --dtype bf16
    python benchmarks/grpo_vs_trl.py --lora-rank 16 --steps 3 --rounds 1

TRL is a benchmark dependency only (``pip install -c constraints.txt -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from shoestring.util.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402

# Qwen2.5-Instruct's ChatML layout (no system prompt), so --chat prompts are as long as the ones
# a user's Qwen2.5-0.5B-Instruct GRPO run on GSM8K sees.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out: Path, vocab_size: int, rows: list[dict[str, str]]) -> Any:
    """A byte-level BPE trained on synthetic problems and the benchmark's own questions
    (seconds; nothing downloaded), with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from shoestring.data.synthetic import generate_problems, problems_to_text

    docs = list(problems_to_text(generate_problems(2000, seed=1)))
    docs += [r["question"] + "\n" + r["answer"] for r in rows]
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(docs, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|endoftext|>"
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out)
    return tok


def model_vocab_size(requested: int, tok: Any) -> int:
    """The model's vocabulary: the requested size (Qwen2.5's 151,936, say), never cut down to
    the tokenizer's. A BPE trained on the benchmark's text stops at a few thousand entries;
    the ids it never produces are fine for timing, but the head's width decides the cost of
    logits, sampling and log-probs, so it must be the real one. Only a tokenizer larger than
    the request widens it (its ids must exist)."""
    return max(int(requested), len(tok))


def build_model(
    out: Path, tok: Any, args: argparse.Namespace, vocab_size: int | None = None
) -> int:
    """A randomly initialised Qwen2 of ``args``' shape saved to ``out``; its vocabulary is
    ``vocab_size`` or else :func:`model_vocab_size` of ``args.vocab`` (the head's cost depends
    on it). Returns the parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=vocab_size or model_vocab_size(args.vocab, tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


#: the benchmark's default model shape (random weights)
SMALL_QWEN2 = {
    "hidden": 256,
    "intermediate": 704,
    "layers": 4,
    "heads": 4,
    "kv_heads": 2,
    "vocab": 2048,
}


def add_shape_options(p: argparse.ArgumentParser, **defaults: int) -> None:
    """--hidden, --intermediate, --layers, --heads, --kv-heads, --vocab of the Qwen2 that
    :func:`build_model` builds, with these defaults."""
    for name, value in defaults.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=value)


def load_questions(source: str, n: int) -> list[dict[str, str]]:
    """``synthetic``: level-2 synthetic problems (~50-token prompts); ``gsm8k`` or
    ``gsm8k:PATH``: the first ``n`` GSM8K train problems (shared/data/gsm8k by default)."""
    if source == "synthetic":
        from shoestring.data.synthetic import generate_problems

        return [
            {"question": p["question"], "answer": p["answer"]}
            for p in generate_problems(n, level=2, seed=7)
        ]
    from shoestring.rl.data import load_task

    return [{"question": r["question"], "answer": r["answer"]} for r in load_task(source, n=n)]


def render_prompts(rows: list[dict[str, str]], tok: Any, chat: bool) -> list[dict[str, str]]:
    """The exact prompt text both trainers get: shoestring's own GRPO prompt (``chat``: the
    chat-cot protocol, the tokenizer's chat template around the bench's step-by-step
    instruction; otherwise the qa protocol, ``Question: ...\nAnswer:``). TRL receives it as a
    plain string, so it adds nothing."""
    from shoestring.scoring.protocols import get_protocol

    protocol = get_protocol(_protocol_name(chat))
    return [dict(r, prompt=protocol.prompt(r["question"], tok)) for r in rows]


def _protocol_name(chat: bool) -> str:
    """The scoring protocol of a run with (chat-cot) or without (qa) the chat template."""
    return "chat-cot" if chat else "qa"


def run_shoestring(
    model_dir: Path, work: Path, args: argparse.Namespace, tag: str, rows: list[dict[str, str]]
) -> tuple[list[float], list[float]]:
    from shoestring.rl import grpo
    from shoestring.rl.config import grpo_config
    from shoestring.rundir.directory import read_metrics

    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = grpo_config(
        overrides=[
            f"model_name_or_path={model_dir}",
            f"dataset=gsm8k:{data}",
            f"protocol={_protocol_name(args.chat)}",
            "stop_strings=[]",
            f"num_generations={args.num_generations}",
            f"per_device_train_batch_size={args.batch}",
            f"gradient_accumulation_steps={args.grad_accum}",
            f"max_completion_length={args.max_completion_length}",
            "max_prompt_length=null",
            f"max_steps={args.steps}",
            f"beta={args.beta}",
            f"loss_type={args.loss_type}",
            "temperature=1.0",
            "learning_rate=1e-5",
            'rewards=["correctness"]',
            f"dtype={args.dtype}",
            f"lora_rank={args.lora_rank}",
            f"lora_alpha={2 * args.lora_rank}",
            "lora_dropout=0.0",
            'lora_target_modules=["all-linear"]',
            "device=cpu",
            f"threads={args.threads}",
            "save_steps=100000",
            "log_completions_steps=0",
            "seed=0",
            f"output_dir={work / 'shoestring' / tag}",
            "quiet=true",
        ]
    )
    run = grpo.run(cfg)
    recs = [r for r in read_metrics(run) if "step_seconds" in r]
    return [r["step_seconds"] for r in recs], [r["time_generation"] for r in recs]


def run_trl(
    model_dir: Path, work: Path, args: argparse.Namespace, tag: str, rows: list[dict[str, str]]
) -> tuple[list[float], list[float]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from shoestring.rl.rewards import builtin_rewards
    from shoestring.scoring.protocols import get_protocol

    correctness = builtin_rewards(get_protocol(_protocol_name(args.chat)))["correctness"]

    times: list[float] = []
    gen_times: list[float] = []
    gen_now = [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()
            gen_now[0] = 0.0

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)
            gen_times.append(gen_now[0])

    def correctness_reward(prompts: list, completions: list, **kw: Any) -> list:
        return correctness(prompts, completions, answer=kw["answer"])

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = GRPOConfig(
        output_dir=str(work / "trl" / tag),
        num_generations=args.num_generations,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        beta=args.beta,
        loss_type=args.loss_type,
        temperature=1.0,
        learning_rate=1e-5,
        bf16=args.dtype == "bf16",
        # TRL's GRPOConfig turns gradient checkpointing on by default; its docs recommend it
        # only when memory is short, and a 0.5B model fits easily: the peer at its best.
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = None
    if args.lora_rank:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[correctness_reward],
        args=cfg,
        peft_config=peft_config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[Timer()],
    )
    # time TRL's generation call (its name in trl 1.x); the rest of the step is scoring and
    # the training forward/backward, as in shoestring's split
    generate = getattr(trainer, "_generate_single_turn", None)
    if generate is not None:

        def timed_generate(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return generate(*a, **k)
            finally:
                gen_now[0] += time.perf_counter() - t0

        trainer._generate_single_turn = timed_generate
    trainer.train()
    return times, gen_times if generate is not None else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (first dropped)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--batch", type=int, default=16, help="completions per micro-batch (TRL)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument(
        "--lora-rank", type=int, default=0, help="LoRA rank for both trainers (0 = full fine-tune)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto (default): the host class's dtype, bf16 where the CPU has bf16 dot products "
        "(AVX512-BF16, AMX), else fp32; the same for both trainers",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument(
        "--prompt-source",
        default="auto",
        help="auto (gsm8k with --chat where GSM8K is found, else synthetic) | synthetic "
        "(level-2 problems, 28-44-token prompts) | gsm8k | gsm8k:PATH (GSM8K train questions)",
    )
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap every question in a ChatML template with the step-by-step instruction, as a "
        "chat model (Qwen2.5-Instruct) is prompted (default: on for GSM8K); a --model's "
        "tokenizer needs a template",
    )
    add_shape_options(p, **SMALL_QWEN2)
    p.add_argument(
        "--model",
        help="an existing HF model directory (e.g. a shoestring run's model/) instead of the "
        "random Qwen2: a trained model's completions end at different lengths, which a random "
        "one's never do",
    )
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary model and run dirs")
    args = p.parse_args(argv)

    import torch

    from shoestring.host import describe_host
    from shoestring.runtime import resolve_dtype

    torch.set_num_threads(args.threads)
    args.dtype = resolve_dtype(args.dtype, torch.device("cpu"))  # both trainers: the best here
    print(describe_host(), flush=True)  # the host class every figure below belongs to
    work = Path(tempfile.mkdtemp(prefix="grpo_vs_trl_"))
    try:
        return _run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _fresh_peak() -> int:
    """Free what the previous run left (Python garbage, glibc's cached pages), reset the
    kernel's peak-RSS mark, and return the resident set the next run starts from: each run's
    peak is then its own, in this one process."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_rss()
    return current_rss_bytes()


def resolve_prompt_source(args: argparse.Namespace) -> str:
    """``auto`` -> ``gsm8k`` where GSM8K is found, else ``synthetic``; ``--chat`` defaults to
    on for GSM8K (a chat model's prompt) and off for synthetic problems."""
    source = args.prompt_source
    if source == "auto":
        from shoestring.errors import UserError
        from shoestring.rl.data import load_task

        try:
            load_task("gsm8k", n=1)
            source = "gsm8k"
        except UserError:
            source = "synthetic"
            print("GSM8K not found (shared/data/gsm8k, $SHOESTRING_SHARED): synthetic prompts")
    if args.chat is None:
        args.chat = source.startswith("gsm8k") and not args.model
    return source


def _run(args: argparse.Namespace, work: Path) -> int:
    args.prompt_source = resolve_prompt_source(args)
    questions = load_questions(args.prompt_source, args.prompts)
    if args.model:
        from shoestring.models.loading import load_model_and_tokenizer

        model_dir = Path(args.model)
        if (model_dir / "model" / "config.json").is_file():
            model_dir = model_dir / "model"  # a shoestring run directory
        described = f"{model_dir} (trained)"
        _, tok, _ = load_model_and_tokenizer(model_dir, device="cpu")
    else:
        model_dir = work / "model"
        tok = build_tokenizer(model_dir, args.vocab, questions)
        vocab = model_vocab_size(args.vocab, tok)
        n_params = build_model(model_dir, tok, args, vocab_size=vocab)
        described = (
            f"Qwen2 random init, hidden {args.hidden}, {args.layers} layers, vocab {vocab} "
            f"(tokenizer {len(tok)}), {n_params / 1e6:.1f}M parameters"
        )
    rows = render_prompts(questions, tok, args.chat)
    lengths = sorted(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows)
    print(
        f"model: {described}; "
        f"{args.num_generations} generations, batch {args.batch} completions, accumulation "
        f"{args.grad_accum}, completion <= {args.max_completion_length} tokens, beta {args.beta}, "
        f"loss {args.loss_type}, {args.dtype}, CPU, {args.threads} threads, {args.steps} steps/run"
        + (
            f", LoRA r{args.lora_rank} alpha {2 * args.lora_rank} on every linear layer"
            if args.lora_rank
            else ", full fine-tune"
        ),
        flush=True,
    )
    print(
        f"prompts: {len(rows)} {args.prompt_source} questions{' (chat)' if args.chat else ''}"
        f", {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]})",
        flush=True,
    )
    print(
        "TRL: GRPOTrainer with bf16 autocast when --dtype bf16, gradient checkpointing off, its "
        "own chunked log-probs (fused_lm_head); liger-kernel not used: its kernels are Triton "
        "(GPU only), nothing of it runs on a CPU",
        flush=True,
    )
    res: dict[str, list[float]] = {"shoestring": [], "trl": []}
    gen: dict[str, list[float]] = {"shoestring": [], "trl": []}
    peak: dict[str, list[float]] = {"shoestring": [], "trl": []}
    runners = {"shoestring": run_shoestring, "trl": run_trl}
    for rnd in range(args.rounds):
        order = ["shoestring", "trl"] if rnd % 2 == 0 else ["trl", "shoestring"]
        for name in order:
            base = _fresh_peak()
            t, g = runners[name](model_dir, work, args, f"r{rnd}", rows)
            top = peak_rss_bytes() or 0
            peak[name].append(top / 2**30)
            res[name] += t[1:]
            gen[name] += g[1:]
            print(
                f"round {rnd + 1} {name:10s} s/step: "
                + ", ".join(f"{x:.2f}" for x in t)
                + f" (first dropped); peak RSS {top / 2**30:.2f} GiB (start {base / 2**30:.2f})",
                flush=True,
            )
    sh, tr = statistics.median(res["shoestring"]), statistics.median(res["trl"])
    print(
        f"median s/step  shoestring {sh:.3f}   TRL GRPOTrainer {tr:.3f}   ratio TRL/shoestring "
        f"{tr / sh:.2f}x"
    )
    # a step disturbed by another process is only ever slower: on a shared machine the
    # fastest step of each trainer is the least disturbed figure
    shm, trm = min(res["shoestring"]), min(res["trl"])
    print(
        f"fastest s/step shoestring {shm:.3f}   TRL GRPOTrainer {trm:.3f}   ratio "
        f"TRL/shoestring {trm / shm:.2f}x  ({len(res['shoestring'])} + {len(res['trl'])} steps)"
    )
    print(
        f"peak RSS (max over runs) shoestring {max(peak['shoestring']):.2f} GiB   TRL "
        f"{max(peak['trl']):.2f} GiB"
    )
    split = {}
    for name in ("shoestring", "trl"):
        if len(gen[name]) == len(res[name]) and gen[name]:
            g_med = statistics.median(gen[name])
            rest = statistics.median([a - b for a, b in zip(res[name], gen[name], strict=True)])
            split[name] = {"generation": g_med, "rest": rest}
    if len(split) == 2:
        a, b = split["shoestring"], split["trl"]
        print(
            f"median split   generation: shoestring {a['generation']:.3f}, TRL "
            f"{b['generation']:.3f} ({b['generation'] / a['generation']:.2f}x); scoring + "
            f"training: shoestring {a['rest']:.3f}, TRL {b['rest']:.3f} "
            f"({b['rest'] / a['rest']:.2f}x)"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "seconds": res,
                    "median": {"shoestring": sh, "trl": tr},
                    "ratio": tr / sh,
                    "fastest": {"shoestring": shm, "trl": trm},
                    "ratio_fastest": trm / shm,
                    "generation_seconds": gen,
                    "median_split": split,
                    "peak_rss_gib": peak,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
