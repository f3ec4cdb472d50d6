"""``shoestring train``: the command's flags and config layering; the training is ``entry.train``.

Kept light on purpose: ``shoestring --help`` imports every command's wiring, so this module
imports only the config and option helpers, and the handler defers torch (through
:mod:`shoestring.train.entry`) until a run really starts. Config layers, lowest first:
defaults < ``--preset`` < ``--variant`` < ``--config FILE`` < ``--set key=value`` (the
shortcut flags ``--data``, ``--steps`` ... are ``--set`` overrides placed before the explicit
ones). ``--resume RUN_DIR`` starts from that run's ``config.json`` instead of the presets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shoestring.cli_options import add_quiet_option, add_set_option, shortcut_overrides
from shoestring.config import apply_override, describe, from_dict, parse_override
from shoestring.errors import UserError
from shoestring.run_config import RunConfig, build_run_config, list_presets, list_variants

__all__ = ["SHORTCUT_FLAGS", "add_cli", "resume_config", "run_cli"]


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain a GPT on prepared data (single process or under torchrun)",
        description="Pretrain the shoestring GPT. Config layers: defaults < --preset < --variant "
        "< --config FILE < --set key=value. Run under `torchrun --nproc_per_node=N` for DDP.",
    )
    p.add_argument("--preset", help=f"model/config preset: {', '.join(list_presets())}")
    p.add_argument("--variant", help=f"attention variant: {', '.join(list_variants())}")
    p.add_argument("--config", help="JSON or YAML config file")
    add_set_option(p, "model.d_model=384")
    p.add_argument("--data", help="prepared data directory (same as --set data.path=...)")
    p.add_argument("--steps", type=int, help="same as --set train.max_steps=N")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"))
    p.add_argument("--trainer", choices=("plain", "hybrid"))
    p.add_argument("--report-to", choices=("none", "tensorboard"))
    p.add_argument("--out", default="runs", help="parent directory of run directories")
    p.add_argument("--name", help="run directory name (default: preset[-variant])")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    add_quiet_option(p)
    p.set_defaults(func=run_cli)


# shortcut flag (argparse dest) -> the config key it overrides
SHORTCUT_FLAGS = (
    ("data", "data.path"),
    ("steps", "train.max_steps"),
    ("device", "train.device"),
    ("dtype", "train.dtype"),
    ("trainer", "train.trainer"),
    ("report_to", "train.report_to"),
)


def resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config a run was started with, plus any overrides (e.g. more steps)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    cfg = from_dict(RunConfig, json.loads(path.read_text(encoding="utf-8")))
    for text in overrides:
        apply_override(cfg, *parse_override(text))
    return cfg.resolved()


def run_cli(args: argparse.Namespace) -> int:
    """Build the config from the flags, train, print the run directory (130 on Ctrl-C)."""
    if args.help_config:
        for key, default, help_text in describe(RunConfig()):
            print(f"{key:28s} {default!s:>12}  {help_text}")
        return 0
    overrides = shortcut_overrides(args, SHORTCUT_FLAGS) + list(args.overrides)
    if args.resume:
        cfg = resume_config(args.resume, overrides)
        from shoestring.rundir.lock import refuse_if_held

        refuse_if_held(args.resume)  # a run still training: refused before torch loads
    else:
        cfg = build_run_config(args.preset, args.variant, args.config, overrides)
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.train.entry import train

    try:
        run = train(
            cfg,
            out=args.out,
            name=args.name,
            resume_dir=args.resume,
            echo=not args.quiet,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        return 130
    print(run)
    return 0
