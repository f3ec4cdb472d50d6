"""``shoestring search``'s command line: the argument parser and the handler, nothing heavy.

``search`` trains a grid (or a TPE-chosen budget) of ``train`` runs as one Optuna study;
``--join`` adds a worker to an existing study. The handler builds a
:class:`~shoestring.search.config.SearchConfig` (defaults < ``--config FILE`` < the flags below,
each a ``--set`` in disguise < ``--set key=value``; a ``--set`` of ``train.*`` ... goes to every
trial) and calls :func:`shoestring.search.study.run`. This module imports neither Optuna nor
torch, so ``shoestring --help`` stays fast; the handler imports the study code when it runs.
"""

from __future__ import annotations

import argparse
import sys

from shoestring.cli_options import (
    add_config_options,
    add_quiet_option,
    print_config_keys,
    shortcut_overrides,
)
from shoestring.run_config import list_variants
from shoestring.search.config import RUN_SECTIONS, SearchConfig, search_config
from shoestring.search.location import DEFAULT_HEARTBEAT
from shoestring.search.spec import SIZES, list_modes, parse_choice

__all__ = ["SHORTCUT_FLAGS", "add_cli", "run_cli", "search_cli_config"]

# (argparse destination, SearchConfig key) of the flags that are shortcuts for --set
SHORTCUT_FLAGS = (
    ("sizes", "sizes"),
    ("variants", "variants"),
    ("mode", "mode"),
    ("seeds", "seeds"),
    ("data", "data"),
    ("choice", "choices"),
    ("ranges", "ranges"),
    ("sampler", "sampler"),
    ("trials", "trials"),
    ("prune", "prune"),
    ("storage", "storage"),
    ("study_name", "study_name"),
    ("join", "join"),
    ("workers", "workers"),
    ("threads", "threads"),
    ("oom_retries", "oom_retries"),
    ("seed", "base_seed"),
    ("heartbeat", "heartbeat"),
    ("isolate", "isolate"),
    ("max_trials", "max_trials"),
    ("worker_id", "worker_id"),
    ("progress", "progress"),
    ("out", "output.dir"),
    ("name", "output.name"),
    ("quiet", "output.quiet"),
)


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``search`` on the top-level parser."""
    p = sub.add_parser(
        "search",
        help="architecture sweep: an Optuna study of train runs (grid or TPE), resumable",
        description="Train every (size, variant, seed) of a grid - or a TPE-chosen budget of "
        "trials - as ordinary train runs in one study directory, and rank the configurations "
        "by mean validation loss with std and a Welch t-test against baseline. Run the same "
        "command again to resume; add workers with --workers N or --join. Config layers: "
        "defaults < --config FILE < the flags below < --set key=value; a --set of model.*, "
        "train.*, data.* or hybrid.* applies to every trial.",
    )
    # Every shortcut defaults to None: only a flag that was given overrides the layers below.
    p.add_argument("--sizes", help=f"comma-separated size presets ({', '.join(SIZES)}) or all")
    p.add_argument(
        "--variants", help=f"comma-separated variants or all: {', '.join(list_variants())}"
    )
    p.add_argument("--mode", help=f"search mode preset: {', '.join(list_modes())} (default fast)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default 3)")
    p.add_argument("--data", help="prepared data directory (from `shoestring prepare`)")
    p.add_argument(
        "--out",
        help="study directory (output.dir; default: ./study, or the --join directory); "
        "the same directory again resumes",
    )
    p.add_argument("--name", help="put the study directory at OUT/NAME (output.name)")
    p.add_argument(
        "--choice",
        action="append",
        metavar="KEY=V1,V2",
        help="an extra grid dimension, e.g. --choice train.lr=1e-3,3e-3 (repeatable)",
    )
    p.add_argument(
        "--range",
        dest="ranges",
        action="append",
        metavar="KEY=LOW:HIGH[:log|:int]",
        help="a range for --sampler tpe, e.g. --range train.lr=1e-4:3e-3:log (repeatable)",
    )
    p.add_argument("--sampler", choices=("grid", "tpe"), help="grid (default) or tpe")
    p.add_argument("--trials", type=int, help="trial budget for --sampler tpe")
    p.add_argument(
        "--prune",
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
        "--workers", type=int, help="local worker processes (threads are divided among them)"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads per worker (default: physical cores / workers)"
    )
    p.add_argument(
        "--oom-retries",
        type=int,
        help="retries of an out-of-memory trial at half micro-batch (default 2)",
    )
    p.add_argument("--seed", type=int, help="base seed every trial seed derives from (1337)")
    p.add_argument(
        "--heartbeat",
        type=float,
        help="seconds between trial heartbeats; a trial silent for 2x this is "
        f"re-queued (default {DEFAULT_HEARTBEAT:g})",
    )
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        default=None,
        help="train in the worker process instead of a child per trial (peak memory "
        "then accumulates across trials)",
    )
    p.add_argument("--max-trials", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-id", help=argparse.SUPPRESS)
    p.add_argument(
        "--no-bar", dest="progress", action="store_false", default=None, help=argparse.SUPPRESS
    )
    add_quiet_option(p)
    add_config_options(p, "train.max_steps=100")
    p.set_defaults(func=run_cli)


def search_cli_config(args: argparse.Namespace) -> SearchConfig:
    """The checked SearchConfig the flags describe: defaults < --config < the shortcut flags <
    --set (``--choice KEY=V1,V2`` flags read into the ``choices`` mapping first)."""
    shortcuts = argparse.Namespace(**vars(args))
    if args.choice is not None:
        shortcuts.choice = dict(parse_choice(c) for c in args.choice)
    overrides = shortcut_overrides(shortcuts, SHORTCUT_FLAGS) + list(args.overrides)
    return search_config(config_file=args.config, overrides=overrides)


def run_cli(args: argparse.Namespace) -> int:
    """The ``search`` handler: build the config, run (or join) the study, print the study
    directory; 130 after Ctrl-C."""
    if args.help_config:
        print_config_keys(SearchConfig())
        sections = ", ".join(f"{s}.*" for s in RUN_SECTIONS)
        print(f"{sections}: training-config keys (as for train), applied to every trial")
        return 0
    cfg = search_cli_config(args)  # a bad --set or range is reported before optuna and torch load
    # deferred: optuna and torch are heavy; shoestring --help must not load them
    from shoestring.search.study import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(path)
    return 0
