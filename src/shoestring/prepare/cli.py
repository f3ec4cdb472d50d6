"""Command-line wiring of ``shoestring prepare``: argparse only, no tokenizers at import.

Config layers, lowest first: :class:`~shoestring.prepare.config.PrepareConfig` defaults <
``--config FILE`` < the shortcut flags (INPUT, ``--out``, ``--vocab-size`` ... ``-q``: each is a
``--set`` override placed before the explicit ones) < ``--set key=value``. The handler builds the
config, calls :func:`shoestring.prepare.run.run` and prints the prepared data directory.
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
from shoestring.prepare.config import PrepareConfig

__all__ = ["SHORTCUT_FLAGS", "add_cli", "prepare_cli_config"]

DESCRIPTION = """\
Turn text into what `shoestring train` reads: a byte-level BPE tokenizer (tokenizer.json and a
transformers tokenizer directory), train.bin / val.bin token shards (each document followed by
<|endoftext|>) and meta.json. The validation split takes whole documents. The output directory
is also a run directory (config.json, summary.json, log.txt, report.md); its path is printed last.

INPUT is a text file (documents separated by blank lines; WikiText: one per ' = Title = '
article), a directory (its *.txt, *.text, *.md and *.jsonl files, recursively, or all files
when it has none of those), a .jsonl file (one document per row, see --field), or 'synthetic'
for generated grade-school math problems (see --synthetic). A directory's validation and test
split files (valid.txt, test.txt, test.jsonl, ...) are left out and named, so
`prepare ../shared/data/wikitext-2` trains on train.txt only (--all-splits reads them too).

Config layers: defaults < --config FILE < the flags below < --set key=value.
"""

# shortcut flag (argparse destination) -> the PrepareConfig key it overrides
SHORTCUT_FLAGS = (
    ("input", "input"),
    ("synthetic", "synthetic"),
    ("out", "out"),
    ("vocab_size", "vocab_size"),
    ("tokenizer", "tokenizer"),
    ("field", "field"),
    ("val_fraction", "val_fraction"),
    ("seed", "seed"),
    ("on_decode_error", "on_decode_error"),
    ("min_frequency", "min_frequency"),
    ("split_digits", "split_digits"),
    ("all_splits", "all_splits"),
    ("quiet", "quiet"),
)


def add_cli(subparsers: Any) -> None:
    """Register ``prepare`` on the top-level parser."""
    p = subparsers.add_parser(
        "prepare",
        help="train a tokenizer and write token shards from text",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every shortcut defaults to None: only a flag that was given overrides the layers below.
    p.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="text file, directory, .jsonl file, or 'synthetic' (same as --set input=...)",
    )
    p.add_argument("--out", metavar="DIR", help="the prepared data directory (required)")
    p.add_argument(
        "--vocab-size",
        metavar="N",
        type=int,
        help="vocabulary size of the trained tokenizer (default: 16000; min 257)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="reuse an existing tokenizer.json (or a directory holding one) instead "
        "of training one",
    )
    p.add_argument(
        "--field",
        metavar="NAME",
        help="JSONL field holding the text (default: text; rows with question and "
        "answer but no text field are joined as 'Question: ...\\nAnswer: ...')",
    )
    p.add_argument(
        "--val-fraction",
        metavar="F",
        type=float,
        help="fraction of documents held out for validation (default: 0.05; at least one document)",
    )
    p.add_argument(
        "--seed",
        metavar="N",
        type=int,
        help="seed of the document split and of synthetic data (default: 0)",
    )
    p.add_argument(
        "--on-decode-error",
        choices=("replace", "skip", "error"),
        help="invalid UTF-8: replace the bytes with U+FFFD, skip the document, or "
        "stop; 'error' also stops at malformed JSONL lines (default: replace)",
    )
    p.add_argument(
        "--min-frequency",
        metavar="N",
        type=int,
        help="minimum pair frequency for a BPE merge (default: 2)",
    )
    p.add_argument(
        "--split-digits",
        action="store_true",
        default=None,  # None = not given: the config's own value stands
        help="make every digit its own token, as Llama and Qwen do (arithmetic then uses the "
        "same token for a digit in every number; plain BPE chunks digits arbitrarily)",
    )
    p.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="use N generated math problems as the corpus (INPUT may be omitted)",
    )
    p.add_argument(
        "--all-splits",
        action="store_true",
        default=None,  # None = not given: the config's own value stands
        help="also read a directory's validation/test split files (valid.txt, test.jsonl ...), "
        "which are left out by default so they are never trained on",
    )
    add_quiet_option(p)
    add_config_options(p, "vocab_size=4096")
    p.set_defaults(func=run_cli)


def prepare_cli_config(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig the flags describe, validated (a missing INPUT or --out is named)."""
    return config_from_args(PrepareConfig(), args, SHORTCUT_FLAGS).check()


def run_cli(args: argparse.Namespace) -> int:
    """Build the config from the flags, prepare, print the data directory (130 on Ctrl-C)."""
    if args.help_config:
        return print_config_keys(PrepareConfig())
    cfg = prepare_cli_config(args)
    # deferred: tokenizers and numpy are heavy; shoestring --help must not load them
    from shoestring.prepare.run import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0
