"""Command-line wiring of ``shoestring generate``: argparse only, no torch at import.

Config layers, lowest first: :class:`~shoestring.generate.config.GenerateConfig` defaults <
``--config FILE`` < the shortcut flags (the model argument, ``--prompt``, ``--max-new-tokens``
... ``--out``, ``--name``, ``-q``: each is a ``--set`` override placed before the explicit ones)
< ``--set key=value``. The handler builds the config, calls
:func:`shoestring.generate.run.run` and prints the run directory on stderr - standard output
carries the generated text alone, so ``generate ... > out.txt`` keeps only the text.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shoestring.cli_options import (
    OUTPUT_SHORTCUTS,
    add_config_options,
    add_output_options,
    config_from_args,
    print_config_keys,
)
from shoestring.generate.config import GenerateConfig

__all__ = ["SHORTCUT_FLAGS", "add_cli", "generate_cli_config"]

# shortcut flag (argparse destination) -> the GenerateConfig key it overrides
SHORTCUT_FLAGS = (
    ("model", "model"),
    ("prompt", "prompts"),
    ("max_new_tokens", "max_new_tokens"),
    ("temperature", "temperature"),
    ("top_k", "top_k"),
    ("top_p", "top_p"),
    ("seed", "seed"),
    ("stop", "stop"),
    ("batch_size", "batch_size"),
    ("device", "device"),
    ("dtype", "dtype"),
    ("trust_remote_code", "trust_remote_code"),
    *OUTPUT_SHORTCUTS,
)


def add_cli(subparsers: Any) -> None:
    """Register ``generate`` on the top-level parser."""
    _add_generate(subparsers)


def _add_generate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a run directory or any Hugging Face causal LM",
        description="Generate text with shoestring's batched KV-cache engine. One prompt "
        "streams to the terminal; several run batched. Temperature 0 = greedy. Config layers: "
        "defaults < --config FILE < the flags below < --set key=value. Every call writes a run "
        "directory (config.json, summary.json, log.txt, generations.jsonl, report.md); its "
        "path is the last line on stderr, stdout carries the text alone.",
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="RUN_OR_MODEL_DIR",
        help="shoestring run directory, HF model directory, or Hub name (online); "
        "same as --set model=...",
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="prompt text; repeat for several prompts (batched)",
    )
    p.add_argument("--max-new-tokens", type=int, help="tokens per prompt at most (default 100)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely; 0 = all (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (1 = off, the default)")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop a sequence when its text contains TEXT (repeatable)",
    )
    p.add_argument("--batch-size", type=int, help="rows per batch; 0 = auto (default)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="weights dtype; auto (default) = bf16 where the host computes it fast, else fp32",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,  # None = not given: the config's own value stands
        help="allow models that ship their own Python code (off by default)",
    )
    add_config_options(p, "max_new_tokens=32")
    add_output_options(p, "generate")
    p.set_defaults(func=_run_generate)


def generate_cli_config(args: argparse.Namespace) -> GenerateConfig:
    """The GenerateConfig the flags describe, validated (a missing prompt is named here)."""
    return config_from_args(GenerateConfig(), args, SHORTCUT_FLAGS).check()


def _run_generate(args: argparse.Namespace) -> int:
    if args.help_config:
        return print_config_keys(GenerateConfig())
    cfg = generate_cli_config(args)
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.distributed import is_main_process
    from shoestring.generate.run import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    if is_main_process():  # under torchrun: once, by rank 0
        print(path, file=sys.stderr)  # stderr: stdout is the generated text alone
    return 0
