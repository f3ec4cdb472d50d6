"""One entry point; each subcommand is a thin wrapper over a module's run().

Every command module exposes ``add_cli(subparsers)``, which registers its subparser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
Errors meant for the user (bad config, missing files) are raised as ``UserError`` or
``ConfigError``; they and the environment's errors (permissions, read-only or full disks,
damaged files, refused pickles: :mod:`shoestring.failures`) are printed as one clear line
instead of a traceback. ``--debug`` (anywhere on the command line, or ``SHOESTRING_DEBUG=1``)
prints the traceback as well. A run directory still open when a command fails is finished as
``failed`` with the same line (``interrupted`` on Ctrl-C or SIGTERM, which exit with 130 and
one line, never a ``KeyboardInterrupt`` traceback), so none is left half-written.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from shoestring import __version__
from shoestring.failures import failure_message

# command name -> module holding add_cli(); order is the order shown in --help
COMMANDS: list[str] = [
    "shoestring.quickstart",
    "shoestring.prepare.cli",
    "shoestring.train.cli",
    "shoestring.generate.cli",
    "shoestring.bench.cli",
    "shoestring.models.cli",
    "shoestring.analyze.cli",
    "shoestring.search.cli",
    "shoestring.rl.cli",
    "shoestring.compare.cli",
]

#: commands that split their work over torchrun's ranks (docs/distributed.md); any other
#: launched with several ranks is refused before it starts, instead of N copies racing
DISTRIBUTED_COMMANDS = ("train", "grpo", "progressive", "bench", "generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoestring",
        description="Pretrain, benchmark and study small language models on the hardware you have.",
    )
    parser.add_argument("--version", action="version", version=f"shoestring {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error as well as its one-line message (also accepted "
        "after the command; or set SHOESTRING_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_cli(sub)
    return parser


def _abandon_open_run_dirs(error: BaseException | str) -> None:
    """Finish every run directory the failed command left open (imported only when needed)."""
    if "shoestring.rundir.directory" in sys.modules:
        # deferred: a command that opened a run directory has imported it already
        from shoestring.rundir.directory import abandon_open_run_dirs

        abandon_open_run_dirs(error)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted after the command too (argparse alone takes it only before)
    debug = "--debug" in argv or os.environ.get("SHOESTRING_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        # deferred: tqdm costs a tenth of a second; --help and --version must not pay it
        from shoestring.util.progress import silence_library_bars

        silence_library_bars()  # transformers' own bars are \r frames in a log file
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1 and args.command not in DISTRIBUTED_COMMANDS:
        print(
            f"shoestring {args.command}: error: it runs in a single process, but torchrun "
            f"started {world}; launch it without torchrun (or --nproc_per_node=1); under "
            f"torchrun: {', '.join(DISTRIBUTED_COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM that a command did not turn into its exit code: still one line
        _abandon_open_run_dirs(exc)
        if debug:
            traceback.print_exc()
        print(f"shoestring {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = failure_message(exc)
        _abandon_open_run_dirs(exc)
        if message is None:
            raise  # not an error we know: a bug, whose traceback is what helps
        if debug:
            traceback.print_exc()
        print(f"shoestring {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
