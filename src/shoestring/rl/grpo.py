"""``run(cfg)``: the API of ``shoestring grpo`` (group relative policy optimisation) for any HF
causal LM or shoestring model - a new run, or the continuation of an interrupted one.

Where the parts are: the options in :mod:`shoestring.rl.config`, the prompts in
:mod:`shoestring.rl.data`, the rewards in :mod:`shoestring.rl.rewards`, the loss maths in
:mod:`shoestring.rl.loss`, the log-probs in :mod:`shoestring.rl.logprobs`, one generation batch
in :mod:`shoestring.rl.rollout`, the model and its reference in :mod:`shoestring.rl.policy`, the
checkpoints in :mod:`shoestring.rl.grpo_checkpoint`, the held-out accuracy in
:mod:`shoestring.rl.heldout` and the step loop in :mod:`shoestring.rl.trainer`.
"""

from __future__ import annotations

import time
from pathlib import Path

from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig
from shoestring.rl.trainer import GRPOTrainer
from shoestring.rundir.directory import unique_run_dir

__all__ = ["new_run_path", "run"]


def new_run_path(cfg: GRPOConfig) -> Path:
    """Where a new run goes: ``output_dir`` (TRL's), else ``runs/grpo-<time>``; a directory
    that exists gets ``-2``, ``-3`` ... appended, so a run never overwrites another."""
    if cfg.output_dir:
        out = Path(cfg.output_dir)
        return unique_run_dir(out.parent, out.name)
    return unique_run_dir("runs", f"grpo-{time.strftime('%Y%m%d-%H%M%S')}")


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
    if cfg.resume:
        path = Path(cfg.resume)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a GRPO run directory (no config.json)")
        return GRPOTrainer(cfg, path, resume=True, echo=not quiet, progress=not quiet).run()
    cfg = cfg.resolved()
    return GRPOTrainer(cfg, new_run_path(cfg), echo=not quiet, progress=not quiet).run()
