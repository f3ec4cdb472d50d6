"""Options that several commands share, defined once so each flag reads the same everywhere.

Kept apart from :mod:`shoestring.cli` so that command modules never import the entry point
that imports them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable


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


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet``, the same on every command that reports progress: no progress bars and no
    log lines on stderr (``log.txt`` in the run directory keeps every line); errors still
    print, and so does the command's result (the run directory's path at the least)."""
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars or log lines on stderr (log.txt keeps them); errors and the "
        "result still print",
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
