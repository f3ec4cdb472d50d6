"""Command-line wiring of ``shoestring generate``: argparse only, no torch at import."""

from __future__ import annotations

import argparse
from typing import Any

from shoestring.cli_options import add_quiet_option

__all__ = ["add_cli"]


def add_cli(subparsers: Any) -> None:
    """Register ``generate`` on the top-level parser."""
    _add_generate(subparsers)


def _add_generate(subparsers: Any) -> None:
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
    add_quiet_option(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.generate.run import GenerateConfig, run

    cfg = GenerateConfig(
        model=args.model,
        prompts=list(args.prompt),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=list(args.stop),
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        quiet=args.quiet,
    )
    return run(cfg)
