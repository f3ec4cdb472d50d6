"""``shoestring train``: the command's flags and config layering; the training is ``run.run``.

Kept light on purpose: ``shoestring --help`` imports every command's wiring, so this module
imports only the config and option helpers, and the handler defers torch (through
:mod:`shoestring.train.run`) until a run really starts. Config layers, lowest first:
defaults < ``--preset`` < ``--variant`` < ``--config FILE`` < ``--set key=value`` (the
shortcut flags ``--data``, ``--steps``, ``--out`` ... are ``--set`` overrides placed before the
explicit ones). ``--resume RUN_DIR`` starts from that run's ``config.json`` instead of the
presets.
"""

from __future__ import annotations

import argparse
import os

from shoestring.cli_options import (
    OUTPUT_SHORTCUTS,
    add_config_options,
    add_output_options,
    print_config_keys,
    shortcut_overrides,
)
from shoestring.run_config import list_presets, list_variants
from shoestring.train.config import TrainJobConfig, build_train_config, resume_train_config

__all__ = ["SHORTCUT_FLAGS", "add_cli", "run_cli"]


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain a GPT on prepared data (single process or under torchrun)",
        description="Pretrain the shoestring GPT. Config layers: defaults < --preset < --variant "
        "< --config FILE < --set key=value. Run under `torchrun --nproc_per_node=N` for DDP.",
    )
    p.add_argument("--preset", help=f"model/config preset: {', '.join(list_presets())}")
    p.add_argument("--variant", help=f"attention variant: {', '.join(list_variants())}")
    add_config_options(p, "model.d_model=384")
    p.add_argument("--data", help="prepared data directory (same as --set data.path=...)")
    p.add_argument("--steps", type=int, help="same as --set train.max_steps=N")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"))
    p.add_argument("--trainer", choices=("plain", "hybrid"))
    p.add_argument("--report-to", choices=("none", "tensorboard", "wandb"))
    add_output_options(p, "preset[-variant]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.set_defaults(func=run_cli)


# shortcut flag (argparse dest) -> the config key it overrides
SHORTCUT_FLAGS = (
    ("data", "data.path"),
    ("steps", "train.max_steps"),
    ("device", "train.device"),
    ("dtype", "train.dtype"),
    ("trainer", "train.trainer"),
    ("report_to", "train.report_to"),
    *OUTPUT_SHORTCUTS,
)


def run_cli(args: argparse.Namespace) -> int:
    """Build the config from the flags, train, print the run directory (130 on Ctrl-C)."""
    if args.help_config:
        return print_config_keys(TrainJobConfig())
    overrides = shortcut_overrides(args, SHORTCUT_FLAGS) + list(args.overrides)
    if args.resume:
        from shoestring.rundir.lock import refuse_if_held

        refuse_if_held(args.resume)  # a run still training: refused before torch loads
        cfg = resume_train_config(args.resume, overrides)
    else:
        cfg = build_train_config(args.preset, args.variant, args.config, overrides)
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.train.run import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the path
        print(path)
    return 0
