"""One entry point; each subcommand is a thin wrapper over a module's run().

Every command module exposes ``add_cli(subparsers)``, which registers its subparser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
Errors meant for the user (bad config, missing files) are raised as ``UserError`` or
``ConfigError`` and printed as one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shoestring import __version__
from shoestring.config import ConfigError
from shoestring.errors import UserError

# command name -> module holding add_cli(); order is the order shown in --help
COMMANDS: list[str] = [
    "shoestring.quickstart",
    "shoestring.data.cli",
    "shoestring.train.cli",
    "shoestring.eval.cli",
    "shoestring.models.cli",
    "shoestring.analyze.cli",
    "shoestring.search.cli",
    "shoestring.rl.cli",
    "shoestring.runs.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoestring",
        description="Pretrain, benchmark and study small language models on the hardware you have.",
    )
    parser.add_argument("--version", action="version", version=f"shoestring {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        # deferred: tqdm costs a tenth of a second; --help and --version must not pay it
        from shoestring.util.progress import silence_library_bars

        silence_library_bars()  # transformers' own bars are \r frames in a log file
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"shoestring {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
