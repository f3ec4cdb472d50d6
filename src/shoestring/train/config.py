"""What one ``shoestring train`` call is asked: the run's config plus where it goes.

:class:`TrainJobConfig` is :class:`~shoestring.run_config.RunConfig` (model, data, train,
hybrid: what ``config.json`` holds and a resume reads back) with the run's placement added - the
``output`` section and ``resume`` - so :func:`shoestring.train.run.run` needs nothing but it.
The placement is not written to ``config.json``: a run's config says what was trained, and a
copied ``config.json`` used as ``--config`` must start a new run, not continue the old one.
Imports no torch (the command line builds this before a run starts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.cli_options import (
    OutputConfig,
    layered_config,
    read_resume_config,
    refuse_resume_key,
)
from shoestring.config import apply_dict, from_dict, opt, run_dict
from shoestring.run_config import RunConfig, load_preset, load_variant

__all__ = ["PLACEMENT_KEYS", "TrainJobConfig", "build_train_config", "resume_train_config"]

#: The keys of a TrainJobConfig that place the run rather than configure it.
PLACEMENT_KEYS = ("output", "resume")


@dataclass
class TrainJobConfig(RunConfig):
    """A training run's config and its placement: ``run(cfg)`` needs nothing else."""

    output: OutputConfig = field(default_factory=OutputConfig)
    resume: str = opt("", "run directory to continue from its newest checkpoint ('' = a new run)")

    @classmethod
    def of(
        cls,
        run_cfg: RunConfig,
        *,
        out: str | Path = "runs",
        name: str = "",
        quiet: bool = False,
        resume: str | Path = "",
    ) -> TrainJobConfig:
        """A run's config placed under ``out``/``name`` (or continuing ``resume``)."""
        fields = {f.name: getattr(run_cfg, f.name) for f in dataclasses.fields(RunConfig)}
        output = OutputConfig(dir=str(out), name=name, quiet=quiet)
        return cls(**fields, output=output, resume=str(resume) if resume else "")

    def run_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the run's config without its placement."""
        return run_dict(self, PLACEMENT_KEYS)


def build_train_config(
    preset: str | None = None,
    variant: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> TrainJobConfig:
    """Layer defaults < preset < variant < file < overrides, then resolve and validate."""
    cfg = TrainJobConfig()
    if preset:
        apply_dict(cfg, load_preset(preset))
        cfg.preset = preset
    if variant:
        apply_dict(cfg, {"model": load_variant(variant)})
        cfg.variant = variant
    layered_config(cfg, config_file=config_file, overrides=overrides or [])
    refuse_resume_key(cfg)
    return cfg.resolved()  # type: ignore[return-value]  # resolved() returns self


def resume_train_config(run_dir: str | Path, overrides: list[str]) -> TrainJobConfig:
    """The config a run was started with, plus overrides (e.g. more steps), set to resume it."""
    cfg = from_dict(TrainJobConfig, read_resume_config(run_dir, "train"))
    layered_config(cfg, overrides=overrides)
    cfg.resume = str(run_dir)  # after the overrides: the run resumed is the one --resume named
    return cfg.resolved()  # type: ignore[return-value]
