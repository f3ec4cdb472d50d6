"""One entry point; each subcommand is a thin wrapper over a module's run().

Every command module exposes ``add_cli(subparsers)``, which registers its subparser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
Errors meant for the user (bad config, missing files) are raised as ``UserError`` or
``ConfigError`` and printed as one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterable

from shoestring import __version__
from shoestring.config import ConfigError
from shoestring.errors import UserError

# command name -> module holding add_cli(); order is the order shown in --help
COMMANDS: list[str] = [
    "shoestring.quickstart",
    "shoestring.data.prepare",
    "shoestring.train.command",
    "shoestring.eval.generate",
    "shoestring.eval.bench",
    "shoestring.models.import_cli",
    "shoestring.analyze.command",
    "shoestring.search.command",
    "shoestring.rl.command",
    "shoestring.runs.compare",
]


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """The repeatable ``--set KEY=VALUE`` override that every config-driven command takes.

    One definition so the flag reads the same everywhere (``args.overrides``, a list of strings
    for ``shoestring.config.parse_override``); only the example in the help differs.
    """
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting, e.g. --set {example} (repeatable)",
    )


def shortcut_overrides(args: argparse.Namespace, flags: Iterable[tuple[str, str]]) -> list[str]:
    """``KEY=VALUE`` overrides for the convenience flags that were given (``--steps 5`` ...).

    ``flags`` pairs an argparse destination with the config key it stands for; flags left at
    ``None`` add nothing, so ``--set`` and config files keep their say.
    """
    out = []
    for flag, key in flags:
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


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
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"shoestring {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
