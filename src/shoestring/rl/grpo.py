"""``run(cfg)``: the API of ``shoestring grpo`` (group relative policy optimisation) for any HF
causal LM or shoestring model - a new run, or the continuation of an interrupted one.

Where the parts are: the options in :mod:`shoestring.rl.config`, the prompts in
:mod:`shoestring.rl.data`, the rewards in :mod:`shoestring.rl.rewards`, the loss maths in
:mod:`shoestring.rl.loss`, the log-probs in :mod:`shoestring.rl.logprobs`, one generation batch
in :mod:`shoestring.rl.rollout`, the model and its reference in :mod:`shoestring.rl.policy`, the
checkpoints in :mod:`shoestring.rl.grpo_checkpoint`, the held-out accuracy in
:mod:`shoestring.rl.heldout` and the step loop in :mod:`shoestring.rl.trainer`.

Under ``torchrun`` the same call runs on every rank: rank 0 names the run directory and the
others follow it; each rank generates, scores and back-propagates its share of every step and
the gradients are summed, so the run is the one-process run at any number of ranks
(docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from shoestring.cli_options import read_resume_config
from shoestring.distributed import command_group, decided_by_main
from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig
from shoestring.rl.rewards import check_rewards
from shoestring.rl.trainer import GRPOTrainer
from shoestring.rundir.directory import unique_run_dir

__all__ = ["new_run_path", "run"]


def new_run_path(cfg: GRPOConfig) -> Path:
    """Where a new run goes: ``output_dir`` itself, as TRL uses it - never a suffixed
    neighbour, so the directory ``config.json`` names is the one written; else
    ``runs/grpo-<time>`` (``-2`` ... only when two runs start in the same second).

    Raises:
        UserError: ``output_dir`` exists and holds files (one line: how to resume that run or
            name another directory), so a rerun never mixes into an earlier run.
    """
    if not cfg.output_dir:
        return unique_run_dir("runs", f"grpo-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(cfg.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        resumable = (out / "config.json").is_file() and (out / "summary.json").is_file()
        how = f"resume it with `shoestring grpo --resume {out}`, or " if resumable else ""
        raise UserError(
            f"output_dir {out} already exists and is not empty; {how}set output_dir (or "
            "--out/--name) to a new directory"
        )
    return out


def run(cfg: GRPOConfig) -> Path:
    """Run GRPO (or, with ``resume``, continue an interrupted run) and return its run
    directory.

    ``run_dir/"model"`` is a loadable HF directory with the tokenizer (LoRA merged unless
    ``merge_lora`` is off), with a model card; ``report.md`` is written whatever the outcome.
    Ctrl-C / SIGTERM saves a checkpoint, marks the run interrupted and re-raises
    ``KeyboardInterrupt``; a config with ``resume`` set (:func:`shoestring.rl.config.
    resume_config`) continues it with the same result as an uninterrupted run.
    """
    quiet = cfg.quiet
    check_rewards(cfg.rewards)  # a bad reward name fails now, not after the model has loaded
    with command_group(cfg.device) as ranks:  # under torchrun: every rank runs this
        if cfg.resume:
            path = Path(cfg.resume)
            # no config.json, or a run of another kind: one line naming it
            read_resume_config(path, "grpo")
            trainer = GRPOTrainer(
                cfg, path, resume=True, echo=not quiet, progress=not quiet, ranks=ranks
            )
        else:
            cfg = cfg.resolved()
            # rank 0 names (or refuses) the directory; every rank follows it
            path = decided_by_main(lambda: new_run_path(cfg), ranks)
            # config.json names the directory the run really uses
            cfg = dataclasses.replace(cfg, output_dir=str(path))
            trainer = GRPOTrainer(cfg, path, echo=not quiet, progress=not quiet, ranks=ranks)
        return trainer.run()
