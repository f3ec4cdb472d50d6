"""``shoestring import`` and ``shoestring export``: command-line wiring that brings outside
checkpoints in as Hugging Face model directories (:func:`shoestring.models.llama2c.convert_llama2c`)
and takes shoestring models out to formats that need no shoestring code
(:func:`shoestring.models.export_llama.export_llama`, :func:`shoestring.models.export_gguf.
export_gguf`).

Why separate commands: every other command reads HF model directories (DESIGN.md, "Models
are Hugging Face models"); importers and exporters are the one place foreign formats are
allowed, so the rest of the code never needs to know about them. This module imports nothing
heavy, so ``shoestring --help`` stays fast.
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
    add_export_cli(subparsers)


def add_export_cli(subparsers: Any) -> None:
    """Register ``export``: a shoestring model as Llama (HF) or GGUF (llama.cpp, Ollama)."""
    p = subparsers.add_parser(
        "export",
        help="write a shoestring model as a plain Llama directory or a GGUF file",
        description="Write a shoestring GPT that is exactly Llama (RoPE, RMSNorm, SwiGLU, no "
        "biases, full-rank attention) as a LlamaForCausalLM directory (--to llama: loads in "
        "transformers, vLLM, ... with no custom code) or one GGUF file (--to gguf: llama.cpp, "
        "Ollama; needs the gguf package). Other variants are refused with the reason; their "
        "model directories load with trust_remote_code=True instead. Each export is checked: "
        "the written model's logits on a probe input are compared with the source's.",
    )
    p.add_argument("source", metavar="RUN_OR_MODEL_DIR", help="a run directory or its model/")
    p.add_argument("--to", required=True, choices=("llama", "gguf"), help="target format")
    p.add_argument(
        "--out", required=True, metavar="PATH", help="output directory (llama) or .gguf file"
    )
    p.add_argument(
        "--dtype",
        choices=("f32", "f16"),
        default="f16",
        help="gguf matrix precision (norms stay f32; default f16 as llama.cpp's converter)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    p.set_defaults(func=run_export)


def run_llama2c(args: argparse.Namespace) -> int:
    """Convert and print what was written."""
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.models.llama2c import convert_llama2c

    report = convert_llama2c(args.model, args.tokenizer, args.out, overwrite=args.overwrite)
    print("\n".join(report.lines()))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export, check, and print what was written and how close it is."""
    if args.to == "llama":
        # deferred: torch is heavy; shoestring --help must not load it
        from shoestring.models.export_llama import export_llama

        report = export_llama(args.source, args.out, overwrite=args.overwrite)
    else:
        # deferred: torch and gguf are heavy; shoestring --help must not load them
        from shoestring.models.export_gguf import export_gguf

        report = export_gguf(args.source, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print("\n".join(report.lines()))
    return 0
