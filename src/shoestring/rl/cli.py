"""The command-line wiring of ``shoestring grpo`` and ``shoestring progressive``.

Why a light module: ``shoestring --help`` imports every command's ``add_cli``; this one imports
only config dataclasses and argparse, and each handler defers the trainer (torch, transformers,
peft) until the command actually runs. Both commands layer their settings the same way, lowest
first: defaults < preset < config file < ``--set key=value`` (the shortcut flags such as
``--steps``, ``--out``/``--name`` and ``--quiet`` are ``--set`` in disguise). On ``--resume``
the run's own ``config.json`` takes the place of preset and file. Each handler has one shape:
build the config, call the API (``shoestring.rl.grpo.run(cfg)``,
``shoestring.rl.progressive.run(cfg)``), print the run directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from shoestring.cli_options import (
    OUTPUT_SHORTCUTS,
    add_output_options,
    add_quiet_option,
    add_set_option,
    check_run_name,
    refuse_resume_key,
    shortcut_overrides,
)
from shoestring.config import describe, read_config_file
from shoestring.errors import UserError
from shoestring.rl.config import (
    GRPOConfig,
    apply_grpo_override,
    grpo_config,
    list_grpo_presets,
    resume_config,
)
from shoestring.rl.progressive_config import ProgressiveConfig, load_stages_file
from shoestring.rl.progressive_config import resume_config as progressive_resume_config
from shoestring.rl.rewards import check_rewards

__all__ = [
    "add_cli",
    "grpo_cli_config",
    "progressive_cli_config",
    "run_grpo_cli",
    "run_progressive_cli",
]

LAYERS = (
    "Config layers: defaults (TRL's for a TRL config) < --preset < --config FILE < --set key=value."
)

# (argparse destination, GRPOConfig field) of grpo's shortcut flags
SHORTCUT_FLAGS = (
    ("model", "model_name_or_path"),
    ("dataset", "dataset"),
    ("lora_rank", "lora_rank"),
    ("steps", "max_steps"),
    ("device", "device"),
    ("dtype", "dtype"),
    ("quiet", "quiet"),
    ("report_to", "report_to"),
)


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``grpo`` and ``progressive``."""
    _add_grpo(sub)
    _add_progressive(sub)


def _print_fields(cfg: Any, key_width: int, default_width: int) -> None:
    for key, default, help_text in describe(cfg):
        print(f"{key:{key_width}s} {default!s:>{default_width}}  {help_text}")


# ----------------------------------------------------------------------------- grpo


def _add_grpo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grpo",
        help="GRPO reinforcement learning on math problems (TRL GRPOConfig names)",
        description="GRPO on GSM8K or synthetic math with the batched KV-cache engine. "
        f"{LAYERS} Field names and meanings follow TRL's GRPOConfig; `--help-config` lists "
        "them.",
    )
    p.add_argument("--model", help="model dir, shoestring run dir or Hub name")
    p.add_argument("--preset", help=f"GRPO preset: {', '.join(list_grpo_presets())}")
    p.add_argument(
        "--config", help="JSON or YAML file of GRPOConfig fields or a TRL config (over the preset)"
    )
    p.add_argument(
        "--trl-config",
        metavar="FILE",
        help="a TRL GRPO config (trl grpo's flat YAML): TRL keys translated, TRL's defaults; "
        "--config detects one by its TRL-only keys",
    )
    p.add_argument("--dataset", help="synthetic:LEVEL, gsm8k or gsm8k:PATH")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (0 = full fine-tune)")
    p.add_argument("--steps", type=int, help="same as --set max_steps=N")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"))
    p.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="tensorboard, wandb (offline without network), both comma-separated, or none "
        "(TRL's report_to; metrics.jsonl is always written)",
    )
    add_set_option(p, "num_generations=8")
    p.add_argument(
        "--out", help="parent directory of the run directory (sets output_dir; default runs)"
    )
    p.add_argument("--name", help="run directory name (sets output_dir; default grpo-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--help-config", action="store_true", help="list every field and exit")
    add_quiet_option(p)
    p.set_defaults(func=run_grpo_cli)


def grpo_cli_config(args: argparse.Namespace) -> GRPOConfig:
    """The GRPOConfig the flags describe: preset < --config file < --set (and shortcuts); on
    --resume the run's config.json < --set, set to continue that run."""
    overrides = shortcut_overrides(args, SHORTCUT_FLAGS) + list(args.overrides)
    if args.resume:
        from shoestring.rundir.lock import refuse_if_held

        refuse_if_held(args.resume)  # a run still training: refused before torch loads
        return resume_config(args.resume, overrides)
    if args.config and args.trl_config:
        raise UserError("give --config or --trl-config, not both")
    path = args.config or args.trl_config
    base = read_config_file(path) if path else None
    cfg = grpo_config(args.preset, overrides, base=base, trl=True if args.trl_config else None)
    if args.out or args.name is not None:
        apply_grpo_override(cfg, f"output_dir={json.dumps(_output_dir(args, cfg))}")
    return refuse_resume_key(cfg)


def _output_dir(args: argparse.Namespace, cfg: GRPOConfig) -> str:
    """``--out``/``--name`` over the config's ``output_dir`` (TRL's): each replaces its part
    (parent, name) of it; the parts neither gives are ``runs`` and ``grpo-<time>``."""
    current = Path(cfg.output_dir) if cfg.output_dir else None
    if args.name is not None:
        check_run_name(args.name, "--name")  # one directory inside --out, never ../ or /
    parent = args.out or (str(current.parent) if current else "runs")
    name = args.name or (current.name if current else f"grpo-{time.strftime('%Y%m%d-%H%M%S')}")
    return str(Path(parent) / name)


def run_grpo_cli(args: argparse.Namespace) -> int:
    """``shoestring grpo``: build the config, train, print the run directory."""
    if args.help_config:
        _print_fields(GRPOConfig(), 30, 14)
        return 0
    cfg = grpo_cli_config(args)
    check_rewards(cfg.rewards)  # with the other config errors, before torch is imported
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.distributed import is_main_process
    from shoestring.rl.grpo import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    if is_main_process():  # under torchrun: once, by rank 0 (the one that wrote it)
        print(path)
    return 0


# ----------------------------------------------------------------------------- progressive


def _add_progressive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "progressive",
        help="GRPO curriculum with validation after every stage and automatic rollback",
        description=(
            "Run GRPO stages in order, each from the best model so far. The base model and "
            "every stage are validated on one fixed set (greedy, one scoring protocol, accuracy "
            "with a 95% CI); a stage that falls more than `threshold` points below the best is "
            "rolled back and retried with a lower learning rate or the curriculum stops "
            "(on_regression). Config layers: defaults < --stages FILE (a bundled example or "
            "your own) < --model, --out, --name, -q < --set key=value. Each stage's GRPO "
            "settings: grpo_preset < the file's shared grpo < the stage's own fields < "
            "--set grpo.KEY=V, so --set grpo.max_steps=2 runs two steps in every stage."
        ),
    )
    p.add_argument(
        "--stages",
        "--config",
        dest="stages",
        metavar="STAGES.yaml",
        help="stages file (the command's config file, hence also --config), or a bundled "
        "example's name",
    )
    p.add_argument("--model", help="starting model (overrides the file's 'model')")
    p.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="tensorboard, wandb or none: the curriculum's evals and every stage's metrics",
    )
    add_set_option(p, "threshold=3 --set validation.n=100 --set grpo.max_steps=5")
    add_output_options(p, "the stages file's name")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted progressive run")
    p.add_argument("--help-config", action="store_true", help="list the settings and exit")
    p.set_defaults(func=run_progressive_cli)


def progressive_cli_config(args: argparse.Namespace) -> ProgressiveConfig:
    """The curriculum the flags describe: the stages file (or the run's config.json on
    --resume) < --model, --out, --name < --set; ``--set grpo.KEY=V`` lands above every stage's
    own fields."""
    flags = (("model", "model"), ("report_to", "report_to"), *OUTPUT_SHORTCUTS)
    overrides = shortcut_overrides(args, flags) + list(args.overrides)
    if args.resume:
        from shoestring.rundir.lock import refuse_if_held

        refuse_if_held(args.resume)  # a run still training: refused before torch loads
        return progressive_resume_config(args.resume, overrides)
    if args.stages:
        return refuse_resume_key(load_stages_file(args.stages, overrides))
    raise UserError("give --stages STAGES.yaml (or --resume RUN_DIR)")


def run_progressive_cli(args: argparse.Namespace) -> int:
    """``shoestring progressive``: read the curriculum, run or resume it, print the run dir."""
    if args.help_config:
        _print_fields(ProgressiveConfig(), 26, 12)
        return 0
    cfg = progressive_cli_config(args)
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.distributed import is_main_process
    from shoestring.rl.progressive import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    if is_main_process():  # under torchrun: once, by rank 0 (the one that wrote it)
        print(path)
    return 0
