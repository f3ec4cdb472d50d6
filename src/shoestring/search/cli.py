"""``shoestring search``'s command line: the argument parser and the handler, nothing heavy.

``search`` trains a grid (or a TPE-chosen budget) of ``train`` runs as one Optuna study
(:func:`shoestring.search.study.run`); ``--join`` adds a worker to an existing study
(:func:`shoestring.search.study.join`). This module imports neither Optuna nor torch, so
``shoestring --help`` stays fast; the handler imports the study code when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shoestring.cli_options import add_set_option
from shoestring.errors import UserError
from shoestring.run_config import list_presets, list_variants
from shoestring.search.location import DEFAULT_HEARTBEAT
from shoestring.search.spec import (
    SIZES,
    StudySpec,
    list_modes,
    parse_choice,
    parse_list,
    parse_range,
)

__all__ = ["add_cli", "run_cli"]


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="architecture sweep: an Optuna study of train runs (grid or TPE), resumable",
        description="Train every (size, variant, seed) of a grid - or a TPE-chosen budget of "
        "trials - as ordinary train runs in one study directory, and rank the configurations "
        "by mean validation loss with std and a Welch t-test against baseline. Run the same "
        "command again to resume; add workers with --workers N or --join.",
    )
    p.add_argument("--sizes", help=f"comma-separated size presets ({', '.join(SIZES)}) or all")
    p.add_argument(
        "--variants", help=f"comma-separated variants or all: {', '.join(list_variants())}"
    )
    p.add_argument("--mode", default="fast", help=f"search mode preset: {', '.join(list_modes())}")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--data", help="prepared data directory (from `shoestring prepare`)")
    p.add_argument("--out", help="study directory (default: ./study, or the --join directory)")
    add_set_option(p, "train.max_steps=100")
    p.add_argument(
        "--choice",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an extra grid dimension, e.g. --choice train.lr=1e-3,3e-3 (repeatable)",
    )
    p.add_argument(
        "--range",
        dest="ranges",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log|:int]",
        help="a range for --sampler tpe, e.g. --range train.lr=1e-4:3e-3:log (repeatable)",
    )
    p.add_argument("--sampler", default="grid", choices=("grid", "tpe"))
    p.add_argument("--trials", type=int, default=0, help="trial budget for --sampler tpe")
    p.add_argument(
        "--prune",
        default="none",
        choices=("none", "median"),
        help="stop trials whose intermediate validation loss is below the median",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql://user@host/db "
        "(default: sqlite file study.db in the study directory)",
    )
    p.add_argument("--study-name", help="study name in the storage (default: the directory name)")
    p.add_argument(
        "--join",
        metavar="STUDY",
        help="work on an existing study: its directory (SQLite) or, with --storage, "
        "its name; runs trials until the study is done",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (threads are divided among them)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per worker (default: physical cores / workers)",
    )
    p.add_argument(
        "--oom-retries",
        type=int,
        default=2,
        help="retries of an out-of-memory trial at half micro-batch (default 2)",
    )
    p.add_argument("--seed", type=int, default=1337, help="base seed every trial seed derives from")
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        help="seconds between trial heartbeats; a trial silent for 2x this is "
        "re-queued (default 30)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="train in the worker process instead of a child per trial (peak memory "
        "then accumulates across trials)",
    )
    p.add_argument("--max-trials", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-id", default="w0", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-trial lines")
    p.add_argument("--no-bar", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """The ``search`` handler: join a study, or build a :class:`StudySpec` and run it."""
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    try:
        if args.join:
            # deferred: optuna and torch are heavy; shoestring --help must not load them
            from shoestring.search.study import join

            n = join(
                args.join,
                storage=args.storage,
                out=args.out,
                data=args.data,
                threads=args.threads,
                heartbeat=args.heartbeat,
                isolate=not args.no_isolate,
                worker=args.worker_id,
                echo=not args.quiet,
                progress=not (args.quiet or args.no_bar),
                max_trials=args.max_trials,
            )
            if not args.quiet:
                print(f"worker {args.worker_id}: ran {n} trial(s)")
            return 0
        if not args.sizes or not args.variants:
            raise UserError(
                "say what to search: --sizes tiny,small --variants baseline,rope_only "
                "(or 'all'); --join STUDY adds a worker to an existing study"
            )
        spec = StudySpec(
            sizes=parse_list(
                args.sizes,
                [s for s in SIZES if s in list_presets()]
                + [p for p in list_presets() if p not in SIZES],
                "sizes",
            ),
            variants=parse_list(args.variants, list_variants(), "variants"),
            seeds=args.seeds,
            mode=args.mode,
            data=str(Path(args.data).resolve()) if args.data else "",
            overrides=list(args.overrides),
            choices=dict(parse_choice(c) for c in args.choice),
            ranges=[parse_range(r) for r in args.ranges],
            sampler=args.sampler,
            trials=args.trials,
            prune=args.prune,
            base_seed=args.seed,
            oom_retries=args.oom_retries,
        )
        if args.sizes.strip() == "all":
            spec.sizes = [s for s in SIZES if s in spec.sizes]
        spec.validate()  # a bad --set or range is reported before optuna and torch load
        # deferred: optuna and torch are heavy; shoestring --help must not load them
        from shoestring.search.study import run

        run(
            spec,
            args.out or "study",
            storage=args.storage,
            study_name=args.study_name,
            workers=args.workers,
            threads=args.threads,
            heartbeat=args.heartbeat,
            isolate=not args.no_isolate,
            echo=not args.quiet,
            progress=not args.quiet,
            max_trials=args.max_trials,
        )
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
