"""``shoestring prepare``: the command-line face of :func:`shoestring.data.text.run`.

Kept thin on purpose: everything the command does is callable (and tested) from Python, the
CLI only maps flags to arguments. This module imports nothing heavy (no tokenizers, numpy or
transformers), so ``shoestring --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from shoestring.errors import UserError

DESCRIPTION = """\
Turn text into what `shoestring train` reads: a byte-level BPE tokenizer (tokenizer.json and a
transformers tokenizer directory), train.bin / val.bin token shards (each document followed by
<|endoftext|>) and meta.json. The validation split takes whole documents.

INPUT is a text file (documents separated by blank lines; WikiText: one per ' = Title = '
article), a directory (its *.txt, *.text, *.md and *.jsonl files, recursively, or all files
when it has none of those), a .jsonl file (one document per row, see --field), or 'synthetic'
for generated grade-school math problems (see --synthetic). A directory's validation and test
split files (valid.txt, test.txt, test.jsonl, ...) are left out and named, so
`prepare ../shared/data/wikitext-2` trains on train.txt only (--all-splits reads them too).
"""


def add_cli(subparsers: Any) -> None:
    """Register ``prepare`` on the top-level parser."""
    p = subparsers.add_parser(
        "prepare",
        help="train a tokenizer and write token shards from text",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="text file, directory, .jsonl file, or 'synthetic'",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--vocab-size",
        metavar="N",
        type=int,
        default=16000,
        help="vocabulary size of the trained tokenizer (default: 16000; min 257)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        default=None,
        help="reuse an existing tokenizer.json (or a directory holding one) instead "
        "of training one",
    )
    p.add_argument(
        "--field",
        metavar="NAME",
        default="text",
        help="JSONL field holding the text (default: text; rows with question and "
        "answer but no text field are joined as 'Question: ...\\nAnswer: ...')",
    )
    p.add_argument(
        "--val-fraction",
        metavar="F",
        type=float,
        default=0.05,
        help="fraction of documents held out for validation (default: 0.05; at least one document)",
    )
    p.add_argument(
        "--seed",
        metavar="N",
        type=int,
        default=0,
        help="seed of the document split and of synthetic data (default: 0)",
    )
    p.add_argument(
        "--on-decode-error",
        choices=("replace", "skip", "error"),
        default="replace",
        help="invalid UTF-8: replace the bytes with U+FFFD, skip the document, or "
        "stop; 'error' also stops at malformed JSONL lines (default: replace)",
    )
    p.add_argument(
        "--min-frequency",
        metavar="N",
        type=int,
        default=2,
        help="minimum pair frequency for a BPE merge (default: 2)",
    )
    p.add_argument(
        "--split-digits",
        action="store_true",
        help="make every digit its own token, as Llama and Qwen do (arithmetic then uses the "
        "same token for a digit in every number; plain BPE chunks digits arbitrarily)",
    )
    p.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        default=None,
        help="use N generated math problems as the corpus (INPUT may be omitted)",
    )
    p.add_argument(
        "--all-splits",
        action="store_true",
        help="also read a directory's validation/test split files (valid.txt, test.jsonl ...), "
        "which are left out by default so they are never trained on",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars and no summary (warnings are still printed)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``prepare`` from parsed arguments; errors reach the user as ``UserError``."""
    # deferred: tokenizers and transformers are heavy; shoestring --help must not load them
    from shoestring.data.text import run

    if args.input is None and args.synthetic is None:
        raise UserError("give an INPUT (file, directory, .jsonl or 'synthetic') or --synthetic N")
    run(
        args.input,
        args.out,
        vocab_size=args.vocab_size,
        tokenizer=args.tokenizer,
        field=args.field,
        val_fraction=args.val_fraction,
        seed=args.seed,
        on_decode_error=args.on_decode_error,
        min_frequency=args.min_frequency,
        synthetic=args.synthetic,
        quiet=args.quiet,
        split_digits=args.split_digits,
        all_splits=args.all_splits,
    )
    return 0
