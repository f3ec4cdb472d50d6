"""``run(cfg)``: the API behind ``shoestring train`` - place the run directory, pick the trainer.

Why a module of its own: it is the one place that knows both trainers (plain and hybrid), so
the hybrid trainer can build on the plain one without the two importing each other. It also
owns the process group's end: every rank leaves together after the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shoestring.distributed import launched_distributed, leave_group, wait_for_all
from shoestring.run_config import RunConfig
from shoestring.rundir.directory import unique_run_dir
from shoestring.train.config import TrainJobConfig
from shoestring.train.hybrid import HybridTrainer
from shoestring.train.trainer import Trainer

__all__ = ["TRAINERS", "run", "run_path_for"]

# train.trainer -> the class that runs it
TRAINERS: dict[str, type[Trainer]] = {"plain": Trainer, "hybrid": HybridTrainer}


def run_path_for(cfg: RunConfig, out: str | Path, name: str | None) -> Path:
    """A new run directory under ``out``: ``name`` or preset[-variant], made unique.

    Under torchrun every rank must agree on the path, so it is used as given (no suffix).
    """
    default = cfg.preset + (f"-{cfg.variant}" if cfg.variant else "") if cfg.preset else "run"
    base = name or default
    if launched_distributed():
        return Path(out) / base
    return unique_run_dir(out, base)


def run(cfg: TrainJobConfig, on_eval: Callable[[int, float], None] | None = None) -> Path:
    """Train (or, with ``cfg.resume``, continue) a run and return its directory.

    ``on_eval(step, val_loss)`` is called after every evaluation; raising ``StopTraining`` from
    it ends the run with status ``pruned`` (used by ``search --prune``).
    """
    resume = bool(cfg.resume)
    path = Path(cfg.resume) if resume else run_path_for(cfg, cfg.output.dir, cfg.output.name)
    trainer_cls = TRAINERS.get(cfg.train.trainer, Trainer)
    trainer = trainer_cls(cfg, path, resume=resume, on_eval=on_eval)
    try:
        path = trainer.run()
        wait_for_all(trainer.dist)
        return path
    finally:
        leave_group(trainer.dist)
