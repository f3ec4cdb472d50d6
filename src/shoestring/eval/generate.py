"""``shoestring generate``: text from a run directory or any HF causal LM.

One prompt streams its tokens to the terminal as they are produced; several prompts run as
batches through the same engine the GSM8K benchmark and GRPO use, with a progress bar, and
print in the order given. ``--temperature 0`` (the default) is greedy decoding.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from shoestring.eval.generation import (
    GenerationResult,
    SamplingConfig,
    generate_all,
    generate_batch,
)


def add_cli(subparsers: Any) -> None:
    """Register ``generate`` on the top-level parser."""
    p = subparsers.add_parser(
        "generate",
        help="generate text from a run directory or any Hugging Face causal LM",
        description="Generate text with shoestring's batched KV-cache engine. One prompt "
        "streams to the terminal; several run batched. Temperature 0 = greedy.",
    )
    p.add_argument(
        "model",
        metavar="RUN_OR_MODEL_DIR",
        help="shoestring run directory, HF model directory, or Hub name (online)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="prompt text; repeat for several prompts (batched)",
    )
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens per prompt at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely; 0 = all")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop a sequence when its text contains TEXT (repeatable)",
    )
    p.add_argument("--batch-size", type=int, default=0, help="rows per batch; 0 = auto")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="weights dtype; auto = bf16 where the host computes it fast, else fp32",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow models that ship their own Python code (off by default)",
    )
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_strings=list(args.stop),
        batch_size=args.batch_size,
    ).check()


def _count(n: int) -> str:
    """1234567 -> '1.2M', 45000 -> '45.0k' (tiny test models must not print 0.0M)."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


def _summary(results: list[GenerationResult], seconds: float) -> str:
    tokens = sum(r.n_tokens for r in results)
    reasons = ", ".join(sorted({r.finish_reason for r in results}))
    return (
        f"[{tokens} tokens in {seconds:.2f} s = {tokens / max(seconds, 1e-9):.1f} tokens/s; "
        f"finish: {reasons}]"
    )


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, print; returns the exit code."""
    from shoestring.errors import UserError
    from shoestring.models.loading import load_model_and_tokenizer

    if not args.prompt:
        raise UserError("give at least one --prompt TEXT")
    cfg = _config(args)
    model, tokenizer, info = load_model_and_tokenizer(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )
    print(
        f"loaded {info['path']} ({info['model_type']}, {_count(info['n_params'])} params) "
        f"on {info['device']} as {info['dtype']} in {info['load_seconds']:.1f} s",
        file=sys.stderr,
    )

    t0 = time.perf_counter()
    if len(args.prompt) == 1:
        out = sys.stdout
        out.write(args.prompt[0])
        out.flush()

        def stream(_i: int, text: str) -> None:
            out.write(text)
            out.flush()

        results = generate_batch(model, tokenizer, args.prompt, cfg, on_text=stream)
        out.write("\n")
        out.flush()
    else:
        results = generate_all(model, tokenizer, args.prompt, cfg, progress=True)
        for i, (prompt, res) in enumerate(zip(args.prompt, results, strict=True)):
            print(f"=== [{i}] finish={res.finish_reason} tokens={res.n_tokens}")
            print(prompt + res.text)
    print(_summary(results, time.perf_counter() - t0), file=sys.stderr)
    return 0
