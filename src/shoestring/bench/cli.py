"""Command-line wiring of ``shoestring bench``.

Why a module of its own: ``shoestring --help`` imports every command's wiring, and must not
load torch to print a help text. This module imports only argparse and light config code; the
handlers import the commands' APIs (:func:`shoestring.bench.runner.run_bench`) when the
command actually runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shoestring.bench.config import PROTOCOL_CHOICES, BenchConfig
from shoestring.cli_options import add_quiet_option
from shoestring.rundir.directory import read_json

__all__ = ["add_cli", "bench_config_from_args"]


def add_cli(subparsers: Any) -> None:
    """Register ``bench`` on the top-level parser."""
    _add_bench(subparsers)


# ----------------------------------------------------------------------------- bench


def _add_bench(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="GSM8K accuracy (with 95%% CIs and paired tests), speed and memory of models",
        description="Benchmark one or more causal LMs on the same GSM8K problems with the "
        "batched engine: accuracy per extractor with 95% Wilson intervals, McNemar exact tests "
        "between models, tokens/s, load time and peak memory. Rerun into the same --out to "
        "resume. See docs/bench.md.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="HF model dir, shoestring run dir, Hub name (online), or llama2.c "
        "MODEL.bin[:TOKENIZER.model]",
    )
    p.add_argument(
        "--data",
        required=True,
        help="GSM8K JSONL file, a directory with {split}.jsonl, or openai/gsm8k",
    )
    p.add_argument("--split", default="test", help="split inside a directory / on the hub")
    p.add_argument("--limit", type=int, default=None, help="score N problems (default: all)")
    p.add_argument(
        "--subset-seed",
        type=int,
        default=None,
        help="with --limit: a seeded random subset instead of the first N",
    )
    p.add_argument(
        "--protocol",
        default="auto",
        choices=PROTOCOL_CHOICES,
        help="scoring protocol; auto = chat-cot for models with a chat template, plain otherwise",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per problem at most")
    p.add_argument("--batch-size", type=int, default=0, help="rows per batch; 0 = auto")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="weights dtype; auto = bf16 where the host computes it fast, else fp32",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = physical cores")
    p.add_argument("--out", default="runs/bench", help="results directory; rerun to resume")
    p.add_argument(
        "--tokenizer-model",
        default=None,
        metavar="TOKENIZER.model",
        help="sentencepiece model for llama2.c .bin models given without :TOKENIZER",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow models that ship their own Python code (off by default)",
    )
    p.add_argument(
        "--strict-data",
        action="store_true",
        help="reject the data on its first malformed line (default: skip, report)",
    )
    p.add_argument(
        "--examples",
        type=int,
        default=2,
        help="correct and incorrect responses per model shown in report.md",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_quiet_option(p)
    p.set_defaults(func=_run_bench)


def bench_config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig an argparse namespace asks for."""
    return BenchConfig(
        models=list(args.models),
        data=args.data,
        split=args.split,
        limit=args.limit,
        subset_seed=args.subset_seed,
        protocol=args.protocol,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        out=args.out,
        tokenizer_model=args.tokenizer_model,
        trust_remote_code=args.trust_remote_code,
        strict_data=args.strict_data,
        examples=args.examples,
    )


def _run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print one line per model and where the report is; 130 after Ctrl-C."""
    cfg = bench_config_from_args(args).check()  # a bad flag fails before torch loads
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.bench.runner import run_bench

    try:
        quiet = args.quiet
        out = run_bench(cfg, progress=not (args.no_progress or quiet), echo=not quiet)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume from {cfg.out}", file=sys.stderr)
        return 130
    summary = read_json(out / "summary.json")
    for m in summary.get("models", []):
        acc = m["metrics"]["accuracy"][m["primary_extractor"]]["text"]
        print(f"{m['label']:<24} {m['protocol']:<14} {m['primary_extractor']:<9} {acc}")
    for c in summary.get("comparisons", []):
        print(f"{c['a']} vs {c['b']}: {c['statement']}")
    print(f"report: {out / 'report.md'}")
    return 0
