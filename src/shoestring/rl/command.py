"""``shoestring grpo``: GRPO fine-tuning from the command line (and registration of
``shoestring progressive``, whose module owns its own parser)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shoestring.cli_options import add_set_option, shortcut_overrides
from shoestring.config import read_config_file
from shoestring.errors import UserError


def add_cli(sub: argparse._SubParsersAction) -> None:
    from shoestring.rl.config import list_grpo_presets

    p = sub.add_parser(
        "grpo",
        help="GRPO reinforcement learning on math problems (TRL GRPOConfig names)",
        description="GRPO on GSM8K or synthetic math with the batched KV-cache engine. Config "
        "layers: defaults < --config FILE < --preset < --set key=value. Field names and "
        "meanings follow TRL's GRPOConfig; `--help-config` lists them.",
    )
    p.add_argument("--model", help="model dir, shoestring run dir or Hub name")
    p.add_argument("--preset", help=f"GRPO preset: {', '.join(list_grpo_presets())}")
    p.add_argument("--config", help="JSON or YAML file of GRPOConfig fields")
    p.add_argument("--dataset", help="synthetic:LEVEL, gsm8k or gsm8k:PATH")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (0 = full fine-tune)")
    p.add_argument("--steps", type=int, help="same as --set max_steps=N")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"))
    add_set_option(p, "num_generations=8")
    p.add_argument("--out", default="runs", help="parent directory of run directories")
    p.add_argument("--name", help="run directory name (default grpo-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--help-config", action="store_true", help="list every field and exit")
    p.set_defaults(func=run_cli)

    from shoestring.rl import progressive

    progressive.add_cli(sub)


SHORTCUT_FLAGS = (
    ("model", "model_name_or_path"),
    ("dataset", "dataset"),
    ("lora_rank", "lora_rank"),
    ("steps", "max_steps"),
    ("device", "device"),
    ("dtype", "dtype"),
)


def _overrides(args: argparse.Namespace) -> list[str]:
    return shortcut_overrides(args, SHORTCUT_FLAGS) + list(args.overrides)


def run_cli(args: argparse.Namespace) -> int:
    from shoestring.config import describe
    from shoestring.rl.config import GRPOConfig, grpo_config
    from shoestring.rl.grpo import train_grpo

    if args.help_config:
        for key, default, help_text in describe(GRPOConfig()):
            print(f"{key:30s} {default!s:>14}  {help_text}")
        return 0
    overrides = _overrides(args)
    if args.resume:
        cfg_path = Path(args.resume) / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{args.resume} is not a GRPO run directory (no config.json)")
        cfg = grpo_config(base=read_config_file(cfg_path), overrides=overrides)
    else:
        base = read_config_file(args.config) if args.config else None
        cfg = grpo_config(args.preset, overrides, base=base)
    try:
        run = train_grpo(cfg, out=args.out, name=args.name, resume_dir=args.resume)
    except KeyboardInterrupt:
        return 130
    print(run)
    return 0
