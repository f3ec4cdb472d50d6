"""``AnalysisConfig``: what one ``shoestring analyze`` call is asked, and where its run goes.

Kept apart from the measuring code so the command line builds and checks it without torch.
Layers, lowest first: defaults < the ``quick`` preset (``--quick``) < ``--config FILE`` < the
shortcut flags < ``--set key=value``. The targets are training configs, so a ``--set`` under a
training config's section (``model.``, ``train.``, ``data.``, ``hybrid.``) is no key of this
config: it joins ``overrides`` and applies to every target - one ``--set`` flag for both, as the
command line has always taken ``--set train.batch_size=16`` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shoestring.cli_options import OutputConfig, layered_config, split_overrides
from shoestring.config import ConfigError, opt, run_dict, to_dict, validate
from shoestring.run_config import RunConfig

__all__ = [
    "CACHE_STUDY_PRESETS",
    "QUICK_PRESET",
    "RUN_SECTIONS",
    "AnalysisConfig",
    "MeasureSettings",
    "analysis_config",
]

#: The four configurations of the CPU-cache study this project grew from (the default).
CACHE_STUDY_PRESETS = (
    "autoregressive_fast",
    "wiki_cache_optimized",
    "wiki_gpu_optimized",
    "wiki_performance_tuned",
)

#: The sections of a training config: a ``--set`` under one of them goes to every target.
RUN_SECTIONS = tuple(
    f.name
    for f in dataclasses.fields(RunConfig)
    if dataclasses.is_dataclass(getattr(RunConfig(), f.name))
)


@dataclass
class MeasureSettings:
    """How long to measure: ``warmup`` steps, then up to ``steps`` timed steps, stopping early
    (after at least ``min_steps``) once ``seconds`` of timed steps have passed."""

    warmup: int = opt(2, "warm-up steps per config", min=0)
    steps: int = opt(5, "most timed steps per config", min=1)
    min_steps: int = opt(3, "timed steps before `seconds` may stop the timing", min=1)
    seconds: float = opt(15.0, "stop timing a config after this long", min=0.0)

    @classmethod
    def quick(cls) -> MeasureSettings:
        return cls(warmup=1, steps=2, min_steps=2, seconds=2.0)


#: ``--quick``: a short measurement and a small host probe (tests, smoke checks).
QUICK_PRESET: dict[str, Any] = {"quick": True, "settings": to_dict(MeasureSettings.quick())}


@dataclass
class AnalysisConfig:
    """Everything one ``analyze`` call is asked; ``config.json`` holds it without ``output``."""

    targets: list[str] = opt(
        list(CACHE_STUDY_PRESETS), "presets, PRESET+VARIANT, config files or run directories"
    )
    overrides: list[str] = opt(
        [], "training-config overrides for every target (where --set model.*/train.*/... land)"
    )
    sweep: list[str] = opt([], "one or two KEY=V1,V2,... grids measured for every target")
    projected: dict[str, float] = opt({}, "projected tokens/s per config label, vs the measured")
    tokens: float | None = opt(None, "estimate the time to train on this many tokens", min=1)
    data: str | None = opt(None, "estimate it on a prepared dataset's train split x epochs")
    epochs: float = opt(1.0, "epochs of `data` for the time-to-train estimate", min=0.0)
    measure: bool = opt(True, "time training steps; false = formulas and counts only")
    quick: bool = opt(False, "a small host probe (the --quick preset also shortens settings)")
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    output: OutputConfig = field(default_factory=OutputConfig)

    def check(self) -> AnalysisConfig:
        """Validate ranges, and the rules between fields; returns self so calls can chain."""
        validate(self)
        if not self.targets:
            raise ConfigError("targets is empty; name a preset, a config file or a run directory")
        for label, value in self.projected.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"projected.{label}={value!r} must be a number of tokens/s")
        # a --steps below the default min_steps still stops after --steps
        self.settings.min_steps = min(self.settings.min_steps, self.settings.steps)
        return self

    def run_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the request without its placement (``output``)."""
        return run_dict(self, ("output",))


def analysis_config(
    *, quick: bool = False, config_file: str | None = None, overrides: Sequence[str] = ()
) -> AnalysisConfig:
    """The checked config: defaults < the quick preset < ``config_file`` < ``overrides``, the
    training-config ones added to ``overrides`` after the file's own."""
    own, per_target = split_overrides(overrides, RUN_SECTIONS)
    cfg = layered_config(
        AnalysisConfig(),
        preset=QUICK_PRESET if quick else None,
        config_file=config_file,
        overrides=own,
    )
    cfg.overrides = [*cfg.overrides, *per_target]
    return cfg.check()
