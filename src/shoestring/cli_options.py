"""Options that several commands share, defined once so each flag reads the same everywhere.

Kept apart from :mod:`shoestring.cli` so that command modules never import the entry point
that imports them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shoestring.config import (
    ConfigError,
    apply_dict,
    apply_override,
    describe,
    opt,
    parse_override,
    read_config_file,
    validate,
)
from shoestring.errors import UserError

C = TypeVar("C")


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
        default=None,  # None = not given, so the config's own value stands (a shortcut)
        help="no progress bars or log lines on stderr (log.txt keeps them); errors and the "
        "result still print",
    )


def refuse_resume_key(cfg: Any) -> Any:
    """A new run's config must not name a run to resume: ``resume`` set by a config file or
    ``--set`` would continue that run under this config instead of the one in its
    ``config.json``. Only ``--resume RUN_DIR`` sets it (and reads that file). Returns ``cfg``."""
    if getattr(cfg, "resume", ""):
        raise UserError(
            f"resume={cfg.resume!r} came from a config file or --set; to continue that run use "
            f"--resume {cfg.resume} (it reads the run's own config.json)"
        )
    return cfg


#: A run directory's ``kind`` (summary.json) -> the command that makes it, where they differ.
COMMAND_OF_KIND = {"analysis": "analyze", "study": "search"}


def _read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a ``UserError`` naming the file (binary, cut, not a
    mapping) - never a ``UnicodeDecodeError`` traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def read_resume_config(run_dir: str | Path, kind: str) -> dict[str, Any]:
    """The stored ``config.json`` of a run that ``--resume`` continues, checked to be a run of
    ``kind`` (``train``, ``grpo``, ``progressive``: its ``summary.json``'s ``kind``).

    Why: a run of another kind fails later with "unknown config key 'model'" and 60 valid keys;
    this says in one line what the directory is and which command continues it. A missing,
    binary or cut ``config.json`` or ``summary.json`` is one line naming the file.
    """
    run = Path(run_dir)
    config_path, summary_path = run / "config.json", run / "summary.json"
    if not config_path.is_file():
        raise UserError(f"{run} is not a {kind} run directory (no config.json)")
    if summary_path.is_file():
        found = _read_json_dict(summary_path).get("kind")
        if isinstance(found, str) and found != kind:
            command = COMMAND_OF_KIND.get(found, found)
            raise UserError(
                f"{run} is a {found} run, not a {kind} run; it was made by `shoestring "
                f"{command}` (resume it there, or give --resume a {kind} run directory)"
            )
    return _read_json_dict(config_path)


def check_run_name(name: str, where: str = "output.name") -> str:
    """``name`` if it is one path component - the name of a directory inside ``--out`` - else a
    ``ConfigError`` naming ``where``. Returns ``name``.

    Why: a run name is joined onto ``--out``; ``../x`` would write beside it, ``/x`` at the
    file-system root and ``a/b`` a nested directory, each where the user never looks (and
    ``compare runs/*`` never finds). An empty name would be ``--out`` itself.
    """
    separators = {"/", os.sep, os.altsep or "/"}
    if not name or name in (".", "..") or any(s in name for s in separators) or "\0" in name:
        raise ConfigError(
            f"{where}={name!r} is not a directory name: give one name without '/' (not '', "
            "'.' or '..'); the parent directory is --out (output.dir)"
        )
    return name


def shortcut_overrides(args: argparse.Namespace, flags: Iterable[tuple[str, str]]) -> list[str]:
    """``KEY=VALUE`` overrides for the convenience flags that were given (``--steps 5`` ...).

    ``flags`` pairs an argparse destination with the config key it stands for; flags left at
    ``None`` add nothing, so ``--set`` and config files keep their say. A ``--name`` given is
    checked here (an empty one too, which as ``output.name`` would mean the default).
    """
    out = []
    for flag, key in flags:
        value = getattr(args, flag, None)
        if flag == "name" and value is not None:
            check_run_name(value, "--name")
        if value is not None:
            out.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


@dataclass
class OutputConfig:
    """Where a command's run directory goes and how loudly it runs: the ``output`` section of
    every command config that writes a run directory, so ``run(cfg)`` needs nothing else (as
    TRL's ``output_dir``)."""

    dir: str = opt("runs", "parent directory of the run directory")
    name: str = opt("", "run directory name; empty = the command's default, made unique")
    quiet: bool = opt(False, "no progress bars or log lines on stderr (log.txt keeps them)")


#: The shortcut flags every command with an ``output`` section takes: ``--out``, ``--name``,
#: ``-q`` (argparse destination -> config key).
OUTPUT_SHORTCUTS = (("out", "output.dir"), ("name", "output.name"), ("quiet", "output.quiet"))


def add_config_options(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE``, ``--set KEY=VALUE`` and ``--help-config``: the three ways into a
    command's config dataclass, the same on every command."""
    parser.add_argument("--config", help="JSON or YAML config file (keys as for --set)")
    add_set_option(parser, example)
    parser.add_argument("--help-config", action="store_true", help="list every config key and exit")


def add_output_options(parser: argparse.ArgumentParser, default_name: str) -> None:
    """``--out``, ``--name`` and ``-q``: shortcuts for the ``output`` section's keys."""
    parser.add_argument("--out", help="parent directory of the run directory (output.dir)")
    parser.add_argument("--name", help=f"run directory name (output.name; default {default_name})")
    add_quiet_option(parser)


def layered_config(
    cfg: C,
    *,
    preset: dict[str, Any] | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
) -> C:
    """Layer a config dataclass: its defaults < ``preset`` < ``config_file`` < ``overrides``
    (``key=value`` strings), then validate it - the one order every command uses. A key that
    does not exist is an error with the nearest valid key suggested."""
    if preset:
        apply_dict(cfg, preset)
    if config_file:
        apply_dict(cfg, read_config_file(config_file))
    for text in overrides:
        apply_override(cfg, *parse_override(text))
    validate(cfg)
    run_name = getattr(getattr(cfg, "output", None), "name", "")
    if isinstance(run_name, str) and run_name:  # '' = the command's default name
        check_run_name(run_name)
    return cfg


def split_overrides(texts: Iterable[str], sections: Iterable[str]) -> tuple[list[str], list[str]]:
    """``KEY=VALUE`` texts split into (the others, those whose key lies under ``sections``).

    For a command whose config carries overrides of the training runs it makes (``analyze``,
    ``search``): one ``--set`` takes both its own keys and ``train.lr=...`` for every run.
    """
    inner = set(sections)
    own, passed_on = [], []
    for text in texts:
        section, dot, _ = parse_override(text)[0].partition(".")
        (passed_on if dot and section in inner else own).append(text)
    return own, passed_on


def config_from_args(
    cfg: C,
    args: argparse.Namespace,
    shortcuts: Iterable[tuple[str, str]] = (),
    preset: dict[str, Any] | None = None,
) -> C:
    """A command's config from its parsed flags: ``cfg``'s defaults < ``preset`` <
    ``--config FILE`` < the shortcut flags given < ``--set`` (so an explicit ``--set`` wins)."""
    overrides = shortcut_overrides(args, shortcuts) + list(getattr(args, "overrides", []))
    return layered_config(
        cfg, preset=preset, config_file=getattr(args, "config", None), overrides=overrides
    )


def print_config_keys(cfg: Any) -> int:
    """``--help-config``: every dotted key with its default and help; the exit code (0)."""
    for key, default, help_text in describe(cfg):
        print(f"{key:28s} {default!s:>12}  {help_text}")
    return 0
