"""``shoestring import`` and ``shoestring export``: command-line wiring that brings outside
checkpoints in as Hugging Face model directories (:func:`shoestring.models.llama2c.convert_llama2c`)
and takes shoestring models out to formats that need no shoestring code
(:func:`shoestring.models.export_llama.export_llama`, :func:`shoestring.models.export_gguf.
export_gguf`).

Why separate commands: every other command reads HF model directories (DESIGN.md, "Models
are Hugging Face models"); importers and exporters are the one place foreign formats are
allowed, so the rest of the code never needs to know about them. This module imports nothing
heavy, so ``shoestring --help`` stays fast. Config layers, lowest first: the config's defaults <
``--config FILE`` < the shortcut flags (the positionals, ``--out`` ... ``-q``) < ``--set``; the
API is :func:`shoestring.models.convert.run`, ``(cfg) -> Path`` of what it wrote, over
the configs of :mod:`shoestring.models.convert_config`.
"""

from __future__ import annotations

import argparse
from typing import Any

from shoestring.cli_options import (
    add_config_options,
    add_quiet_option,
    config_from_args,
    print_config_keys,
)
from shoestring.models.convert_config import ExportConfig, ImportConfig

__all__ = ["EXPORT_SHORTCUTS", "IMPORT_SHORTCUTS", "add_cli"]


# shortcut flag (argparse destination) -> the config key it overrides
IMPORT_SHORTCUTS = (
    ("model", "model"),
    ("tokenizer", "tokenizer"),
    ("out", "out"),
    ("overwrite", "overwrite"),
    ("quiet", "quiet"),
)
EXPORT_SHORTCUTS = (
    ("source", "source"),
    ("to", "to"),
    ("out", "out"),
    ("dtype", "dtype"),
    ("overwrite", "overwrite"),
    ("quiet", "quiet"),
)


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
        "directory, with a report.md of what was read and checked. Config layers: defaults < "
        "--config FILE < the flags below < --set key=value.",
    )
    llama.add_argument(
        "model", nargs="?", metavar="MODEL.bin", help="llama2.c checkpoint (--set model=...)"
    )
    llama.add_argument(
        "--tokenizer",
        metavar="TOKENIZER.model",
        help="the sentencepiece model the checkpoint was trained with (not llama2.c's .bin; "
        "required)",
    )
    llama.add_argument("--out", metavar="HF_DIR", help="output directory (required)")
    llama.add_argument(
        "--overwrite",
        action="store_true",
        default=None,  # None = not given: the config's own value stands
        help="replace HF_DIR if it exists and is not empty",
    )
    add_quiet_option(llama)
    add_config_options(llama, "overwrite=true")
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
        "the written model's logits on a probe input are compared with the source's, and the "
        "figures go to report.md (inside the Llama directory; PATH.report.md beside a GGUF "
        "file). Config layers: defaults < --config FILE < the flags below < --set key=value.",
    )
    p.add_argument(
        "source",
        nargs="?",
        metavar="RUN_OR_MODEL_DIR",
        help="a run directory or its model/ (--set source=...)",
    )
    p.add_argument("--to", choices=("llama", "gguf"), help="target format (required)")
    p.add_argument(
        "--out", metavar="PATH", help="output directory (llama) or .gguf file (required)"
    )
    p.add_argument(
        "--dtype",
        choices=("f32", "f16"),
        help="gguf matrix precision (norms stay f32; default f16 as llama.cpp's converter)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,  # None = not given: the config's own value stands
        help="replace PATH if it exists",
    )
    add_quiet_option(p)
    add_config_options(p, "dtype=f32")
    p.set_defaults(func=run_export)


def run_llama2c(args: argparse.Namespace) -> int:
    """Build the config, convert, print what was written (unless quiet), then the path."""
    if args.help_config:
        return print_config_keys(ImportConfig())
    cfg = config_from_args(ImportConfig(), args, IMPORT_SHORTCUTS).check()
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.models.convert import run

    print(run(cfg))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Build the config, export and check, print the figures (unless quiet), then the path."""
    if args.help_config:
        return print_config_keys(ExportConfig())
    cfg = config_from_args(ExportConfig(), args, EXPORT_SHORTCUTS).check()
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.models.convert import run as export

    print(export(cfg))
    return 0
