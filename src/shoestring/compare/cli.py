"""``shoestring compare``'s command-line wiring, kept light so ``shoestring --help`` stays fast.

Why a module of its own: the command registry imports every command's ``add_cli`` to build the
help, so this module imports nothing heavy; the report code (matplotlib for the plots) is
imported only when the command runs. Config layers, lowest first:
:class:`~shoestring.compare.config.CompareConfig` defaults < ``--config FILE`` < the
shortcut flags (the DIR arguments, ``--out``, ``--title``, ``--format``, ``-q``) < ``--set``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shoestring import cli_options
from shoestring.compare.config import CompareConfig

__all__ = ["SHORTCUT_FLAGS", "add_cli"]

# shortcut flag (argparse destination) -> the CompareConfig key it overrides: the same names
SHORTCUT_FLAGS = tuple((k, k) for k in ("dirs", "out", "title", "format", "quiet"))


def _run(args: argparse.Namespace) -> int:
    """Build the config, write the report, print the report directory (stderr with JSON)."""
    if args.help_config:
        return cli_options.print_config_keys(CompareConfig())
    cfg = cli_options.config_from_args(CompareConfig(), args, SHORTCUT_FLAGS).check()
    # deferred: matplotlib is heavy; shoestring --help must not load it
    from shoestring.compare.run import print_json, run

    if not cfg.out:  # --format json alone: a print, not a run (check() allows nothing else)
        print_json(cfg)
        return 0
    path = run(cfg)
    # with --format json stdout is the JSON alone, so the path goes to stderr
    print(path, file=sys.stderr if cfg.format == "json" else sys.stdout)
    return 0


def add_cli(sub: Any) -> None:
    """Register ``compare`` on the top-level parser."""
    p = sub.add_parser(
        "compare",
        help="report over run directories: tables, plots, findings (md, html, json)",
        description="Compare run directories (train, hybrid, bench, grpo, progressive, study, "
        "analysis, prepare, generate): writes report.md, a self-contained report.html, "
        "report.json and PNG plots into --out. Each directory's kind is detected from its "
        "files; a directory holding run directories stands for them. Config layers: defaults "
        "< --config FILE < the flags below < --set key=value.",
    )
    p.add_argument(
        "dirs",
        nargs="*",
        default=argparse.SUPPRESS,  # absent rather than [], so a config file's dirs stand
        metavar="DIR",
        help="run directories to compare (--set dirs=[...])",
    )
    p.add_argument("--out", metavar="REPORT_DIR", help="report directory (created; not a run dir)")
    p.add_argument("--title", help="report title (default: the run names)")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        help="stdout: findings and paths (text, the default) or the whole report as JSON",
    )
    cli_options.add_quiet_option(p)
    cli_options.add_config_options(p, "title=ablation")
    p.set_defaults(func=_run)
