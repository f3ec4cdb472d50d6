"""``shoestring import``: command-line wiring that brings outside checkpoints in as Hugging
Face model directories (the API is :func:`shoestring.models.llama2c.convert_llama2c`).

Why a separate command: every other command reads HF model directories (DESIGN.md, "Models
are Hugging Face models"); importers are the one place foreign formats are allowed, so the
rest of the code never needs to know about them. Today: ``import llama2c``. This module
imports nothing heavy, so ``shoestring --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_cli(subparsers: Any) -> None:
    """Register ``import`` and its sub-subcommands on the top-level subparsers."""
    parser = subparsers.add_parser(
        "import",
        help="convert an outside checkpoint into a Hugging Face model directory",
        description="Convert an outside checkpoint into a Hugging Face model directory "
        "(safetensors + config + tokenizer) that every shoestring command accepts.",
    )
    sub = parser.add_subparsers(dest="import_format", metavar="FORMAT")
    sub.required = True

    llama = sub.add_parser(
        "llama2c",
        help="a karpathy/llama2.c .bin checkpoint (versions 0, 1, 2)",
        description="Convert a llama2.c checkpoint (legacy v0, or v1/v2 'ak42' headers; v2 is "
        "dequantised to fp32) and its sentencepiece tokenizer into a LlamaForCausalLM "
        "directory.",
    )
    llama.add_argument("model", metavar="MODEL.bin", help="llama2.c checkpoint")
    llama.add_argument(
        "--tokenizer",
        required=True,
        metavar="TOKENIZER.model",
        help="the sentencepiece model the checkpoint was trained with (not llama2.c's .bin)",
    )
    llama.add_argument("--out", required=True, metavar="HF_DIR", help="output directory")
    llama.add_argument(
        "--overwrite", action="store_true", help="replace HF_DIR if it exists and is not empty"
    )
    llama.set_defaults(func=run_llama2c)


def run_llama2c(args: argparse.Namespace) -> int:
    """Convert and print what was written."""
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.models.llama2c import convert_llama2c

    report = convert_llama2c(args.model, args.tokenizer, args.out, overwrite=args.overwrite)
    print("\n".join(report.lines()))
    return 0
