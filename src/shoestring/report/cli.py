"""``shoestring compare``'s command-line wiring, kept light so ``shoestring --help`` stays fast.

Why a module of its own: the command registry imports every command's ``add_cli`` to build the
help, so this module imports nothing heavy; the report code (matplotlib for the plots) is
imported only when the command runs.
"""

from __future__ import annotations

import argparse

__all__ = ["add_cli"]


def _run(args: argparse.Namespace) -> int:
    # deferred: matplotlib is heavy; shoestring --help must not load it
    from shoestring.report.compare import run

    return run(args)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="report over run directories: tables, plots, findings (md, html, json)",
        description="Compare run directories (train, hybrid, bench, grpo, progressive, study, "
        "analysis, hybrid benchmark): writes report.md, a self-contained report.html, "
        "report.json and PNG plots into --out. Each directory's kind is detected from its "
        "files; a directory holding run directories stands for them.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories to compare")
    p.add_argument(
        "--out",
        default=None,
        metavar="REPORT_DIR",
        help="report directory (created; not a run directory)",
    )
    p.add_argument("--title", default=None, help="report title (default: the run names)")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="stdout: findings and paths (text) or the whole report as JSON",
    )
    p.set_defaults(func=_run)
