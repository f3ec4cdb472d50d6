"""Command-line wiring of ``shoestring bench``.

Why a module of its own: ``shoestring --help`` imports every command's wiring, and must not
load torch to print a help text. This module imports only argparse and light config code; the
handler imports the command's API (:func:`shoestring.bench.runner.run`) when the command
actually runs. Config layers, lowest first: defaults < ``--config FILE`` < ``--set key=value``
(bench has no presets); every other flag, the MODEL arguments included, is a ``--set`` in
disguise, placed before the explicit ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shoestring.bench.config import PROTOCOL_CHOICES, BenchConfig
from shoestring.cli_options import (
    add_config_options,
    add_quiet_option,
    config_from_args,
    print_config_keys,
)
from shoestring.rundir.directory import read_json

__all__ = ["SHORTCUT_FLAGS", "add_cli", "bench_config_from_args"]

# (argparse destination, BenchConfig field) of the flags that are shortcuts for --set
SHORTCUT_FLAGS = (
    ("models", "models"),
    ("data", "data"),
    ("split", "split"),
    ("limit", "limit"),
    ("subset_seed", "subset_seed"),
    ("protocol", "protocol"),
    ("max_new_tokens", "max_new_tokens"),
    ("batch_size", "batch_size"),
    ("dtype", "dtype"),
    ("device", "device"),
    ("threads", "threads"),
    ("out", "out"),
    ("tokenizer_model", "tokenizer_model"),
    ("trust_remote_code", "trust_remote_code"),
    ("strict_data", "strict_data"),
    ("examples", "examples"),
    ("progress", "progress"),
    ("quiet", "quiet"),
)


def add_cli(subparsers: Any) -> None:
    """Register ``bench`` on the top-level parser."""
    p = subparsers.add_parser(
        "bench",
        help="GSM8K accuracy (with 95%% CIs and paired tests), speed and memory of models",
        description="Benchmark one or more causal LMs on the same GSM8K problems with the "
        "batched engine: accuracy per extractor with 95% Wilson intervals, McNemar exact tests "
        "between models, tokens/s, load time and peak memory. Rerun into the same --out to "
        "resume. Config layers: defaults < --config FILE < --set key=value; every flag below "
        "is a --set shortcut. See docs/bench.md.",
    )
    # Every shortcut defaults to None: only a flag that was given overrides the layers below.
    p.add_argument(
        "models",
        nargs="*",
        default=argparse.SUPPRESS,  # absent rather than [], so a config file's models stand
        metavar="MODEL",
        help="HF model dir, shoestring run dir, Hub name (online), or llama2.c "
        "MODEL.bin[:TOKENIZER.model]",
    )
    p.add_argument(
        "--data", help="GSM8K JSONL file, a directory with {split}.jsonl, or openai/gsm8k"
    )
    p.add_argument("--split", help="split inside a directory / on the hub (default test)")
    p.add_argument("--limit", type=int, help="score N problems (default: all)")
    p.add_argument(
        "--subset-seed",
        type=int,
        help="with --limit: a seeded random subset instead of the first N",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOL_CHOICES,
        help="scoring protocol; auto (default) = chat-cot for models with a chat template, "
        "plain otherwise",
    )
    p.add_argument("--max-new-tokens", type=int, help="tokens per problem at most (default 256)")
    p.add_argument("--batch-size", type=int, help="rows per batch; 0 = auto (default)")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16"),
        help="weights dtype; auto (default) = bf16 where the host computes it fast, else fp32",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--threads", type=int, help="torch CPU threads; 0 = physical cores (default)")
    p.add_argument("--out", help="results directory (default runs/bench); rerun to resume")
    p.add_argument(
        "--tokenizer-model",
        metavar="TOKENIZER.model",
        help="sentencepiece model for llama2.c .bin models given without :TOKENIZER",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow models that ship their own Python code (off by default)",
    )
    p.add_argument(
        "--strict-data",
        action="store_true",
        default=None,
        help="reject the data on its first malformed line (default: skip, report)",
    )
    p.add_argument(
        "--examples",
        type=int,
        help="correct and incorrect responses per model shown in report.md (default 2)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars",
    )
    add_quiet_option(p)
    add_config_options(p, "limit=50")
    p.set_defaults(func=_run)


def bench_config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The checked BenchConfig the flags describe: defaults < --config < shortcuts < --set."""
    return config_from_args(BenchConfig(), args, SHORTCUT_FLAGS).check()


def _run(args: argparse.Namespace) -> int:
    """Build the config, run the benchmark, print one line per model, the report and the
    results directory; 130 after Ctrl-C."""
    if args.help_config:
        return print_config_keys(BenchConfig())
    cfg = bench_config_from_args(args)  # a bad flag fails before torch loads
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.bench.runner import run
    from shoestring.distributed import is_main_process

    try:
        out = run(cfg)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume from {cfg.out}", file=sys.stderr)
        return 130
    if is_main_process():  # under torchrun: once, by rank 0 (the one that wrote the files)
        _print_results(out)
        print(out)
    return 0


def _print_results(out: Path) -> None:
    """The headline of summary.json: each model's primary accuracy, each paired test."""
    summary = read_json(out / "summary.json")
    for m in summary.get("models", []):
        acc = m["metrics"]["accuracy"][m["primary_extractor"]]["text"]
        print(f"{m['label']:<24} {m['protocol']:<14} {m['primary_extractor']:<9} {acc}")
    for c in summary.get("comparisons", []):
        print(f"{c['a']} vs {c['b']}: {c['statement']}")
    print(f"report: {out / 'report.md'}")
