"""``train_grpo``: the entry of GRPO (group relative policy optimisation) for any HF causal LM
or shoestring model - a new run, or the continuation of an interrupted one.

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
from shoestring.models.card import write_model_card
from shoestring.rl.config import GRPOConfig, config_from_dict
from shoestring.rl.trainer import GRPOTrainer
from shoestring.rundir.directory import read_json, unique_run_dir

__all__ = ["run", "train_grpo"]


def train_grpo(
    cfg: GRPOConfig | None,
    out: str | Path = "runs",
    name: str | None = None,
    resume_dir: str | Path | None = None,
    echo: bool = True,
    progress: bool = True,
) -> Path:
    """Run GRPO (or resume an interrupted run) and return its run directory.

    ``run_dir/"model"`` is a loadable HF directory with the tokenizer (LoRA merged unless
    ``merge_lora`` is off). Ctrl-C / SIGTERM saves a checkpoint, marks the run interrupted and
    re-raises ``KeyboardInterrupt``; ``resume_dir`` continues it with the same result as an
    uninterrupted run (the stored config is used when ``cfg`` is None; pass one to change,
    e.g., ``max_steps``).
    """
    if resume_dir is not None:
        path = Path(resume_dir)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a GRPO run directory (no config.json)")
        if cfg is None:
            cfg = config_from_dict(read_json(path / "config.json"))
        trainer = GRPOTrainer(cfg, path, resume=True, echo=echo, progress=progress)
        return _with_model_card(trainer.run())
    if cfg is None:
        raise UserError("train_grpo needs a config (or resume_dir)")
    cfg = cfg.resolved()
    if name is None:
        name = f"grpo-{time.strftime('%Y%m%d-%H%M%S')}"
    path = unique_run_dir(out, name)
    return _with_model_card(GRPOTrainer(cfg, path, echo=echo, progress=progress).run())


def _with_model_card(run_dir: Path) -> Path:
    """Write ``model/README.md`` once the run's final summary.json exists (the card quotes it)."""
    write_model_card(run_dir)
    return run_dir


def run(
    cfg: GRPOConfig | None,
    out: str | Path = "runs",
    name: str | None = None,
    resume_dir: str | Path | None = None,
) -> Path:
    """The ``shoestring grpo`` command's API (what its CLI wiring calls): :func:`train_grpo`
    with the progress bar and log echo on."""
    return train_grpo(cfg, out=out, name=name, resume_dir=resume_dir)
