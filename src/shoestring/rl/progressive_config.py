"""What a curriculum is: the stages file, its validation settings and each stage's GRPO config.

Why a module of its own: the stages file is the user's whole interface to ``shoestring
progressive``, and every mistake in it (a typo in a stage's GRPO field, a duplicate stage name,
a stage that sets the starting model) must be reported before minutes are spent evaluating the
base model. This module reads and checks the file and builds the GRPOConfig of any stage
attempt; it imports nothing heavy, so the CLI can list the settings without loading torch.

The stages file (YAML or JSON)::

    model: runs/quickstart            # starting model: run dir or HF model dir
    grpo_preset: cpu                  # GRPO preset shared by all stages (optional)
    grpo: {num_generations: 4}        # GRPOConfig fields shared by all stages
    validation: {dataset: "synthetic:2", n: 200, protocol: auto}
    threshold: 2.0                    # points of accuracy
    on_regression: retry              # or stop
    retry_lr_factor: 0.5
    max_retries: 1
    retention_penalty: 0.0            # lambda * ||theta - theta_base||^2 (theta_base = model)
    stages:
      - {name: level1, dataset: "synthetic:1", max_steps: 30}
      - {name: level2, dataset: "synthetic:2", max_steps: 30, learning_rate: 5e-6}

Every stage key other than ``name`` is a :class:`~shoestring.rl.config.GRPOConfig` field.

Layers, lowest first. The curriculum's own settings: ProgressiveConfig defaults < the stages
file < ``--set key=value``. Each stage's GRPOConfig: GRPOConfig defaults < ``grpo_preset`` <
the file's shared ``grpo`` < the stage's own fields < ``--set grpo.KEY=V`` (kept apart in
``grpo_overrides``, so the command line reaches every stage: ``--set grpo.max_steps=2`` runs
two steps per stage whatever the bundled stages say) < the runner's own fields (start model,
retry learning rate, retention reference).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from shoestring.cli_options import OutputConfig, read_resume_config
from shoestring.config import (
    ConfigError,
    apply_dict,
    apply_override,
    opt,
    parse_override,
    read_config_file,
    run_dict,
    validate,
)
from shoestring.rl.config import GRPOConfig, apply_grpo_override, grpo_config
from shoestring.rundir.trackers import check_trackers
from shoestring.scoring.protocols import PROTOCOLS

__all__ = [
    "PLACEMENT_KEYS",
    "ProgressiveConfig",
    "ValidationConfig",
    "apply_cli_overrides",
    "load_stages_file",
    "resume_config",
    "stage_grpo_config",
]

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Fields the runner sets itself: a stage that set them would break the curriculum's contract.
_RUNNER_FIELDS = {
    "model_name_or_path": "each stage starts from the best model so far; set the starting "
    "model with the top-level 'model' key",
    "output_dir": "each attempt's GRPO run lives in the run's stages/ folder",
    "resume": "resume the whole curriculum with --resume RUN_DIR",
}
#: The keys of a ProgressiveConfig that place the run rather than configure the curriculum.
PLACEMENT_KEYS = ("output", "resume")


@dataclass
class ValidationConfig:
    """Which problems every stage is validated on, and the protocol they are scored under."""

    dataset: str = opt(
        "synthetic:1", "task spec like GRPO's dataset: synthetic:LEVEL | gsm8k | gsm8k:PATH"
    )
    split: str = opt(
        "test", "split to draw from (the stages train on 'train')", choices=("train", "test")
    )
    n: int = opt(200, "number of validation problems (fixed for the whole run)", min=1)
    seed: int = opt(1234, "seed that picks/generates the validation problems", min=0)
    max_new_tokens: int = opt(160, "tokens generated per answer at most", min=1)
    protocol: str = opt(
        "auto",
        "scoring protocol (prompt, stop strings, extractor); auto = chat-cot for a model with "
        "a chat template, else qa - the protocol a GRPO stage resolves for the same model",
        choices=("auto", *PROTOCOLS),
    )
    batch_size: int = opt(0, "rows per forward pass; 0 = auto", min=0)
    device: str = opt("auto", "device for validation: cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt(
        "fp32",
        "weights dtype for validation; fp32 = greedy decoding that matches model.generate",
        choices=("auto", "fp32", "bf16", "fp16"),
    )


@dataclass
class ProgressiveConfig:
    """A curriculum: global settings plus a list of stages (config.json of the run)."""

    model: str = opt("", "starting model: shoestring run dir or HF model dir (required)")
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    threshold: float = opt(
        2.0, "a stage more than this many accuracy points below the best is rolled back", min=0.0
    )
    on_regression: str = opt(
        "retry",
        "after a rollback: retry the stage with a lower lr, or stop",
        choices=("retry", "stop"),
    )
    retry_lr_factor: float = opt(0.5, "learning rate multiplier per retry", min=0.0, max=1.0)
    max_retries: int = opt(1, "retries per stage before the curriculum stops", min=0)
    retention_penalty: float = opt(
        0.0, "lambda of lambda*||theta - theta_base||^2 in every stage (0 = off)", min=0.0
    )
    start_from: str = opt(
        "best",
        "model each stage starts from: best (highest validated accuracy so far, ties to the "
        "later stage) or accepted (the last accepted stage)",
        choices=("best", "accepted"),
    )
    grpo_preset: str = opt("", "GRPO preset shared by all stages ('' = GRPOConfig defaults)")
    grpo: dict[str, Any] = opt({}, "GRPOConfig fields shared by all stages (under each stage's)")
    grpo_overrides: dict[str, Any] = opt(
        {}, "GRPOConfig fields from --set grpo.KEY=V: over every stage's own fields"
    )
    significance: float = opt(
        0.05,
        "a drop past threshold rolls back only when McNemar's exact test against the best model "
        "gives p below this (1 = the drop alone decides)",
        min=0.0,
        max=1.0,
    )
    stages: list[dict[str, Any]] = opt([], "the stages: {name, <GRPOConfig fields>...}")
    report_to: list[str] = opt(
        ["none"],
        "trackers for the curriculum's evals and stage verdicts and (unless a stage sets its "
        "own) every stage's GRPO metrics: tensorboard, wandb, none",
    )
    output: OutputConfig = field(default_factory=OutputConfig)
    resume: str = opt("", "run directory to continue ('' = a new run; --resume)")

    def run_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the curriculum without its placement (``output``,
        ``resume``), so a copied ``config.json`` used as a stages file starts a new run."""
        return run_dict(self, PLACEMENT_KEYS)

    def check(self) -> ProgressiveConfig:
        """Validate ranges, stage names and the runner-owned fields before anything runs."""
        validate(self)
        if not self.model:
            raise ConfigError("model is required: a shoestring run dir or a HF model dir")
        for name in ("grpo", "grpo_overrides"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(
                    f"{name} must be a mapping of GRPOConfig fields, got {getattr(self, name)!r}"
                )
        self.report_to = check_trackers(self.report_to) or ["none"]  # a name or a list
        if not self.stages:
            raise ConfigError("stages is empty; give at least one {name: ..., dataset: ...}")
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, dict):
                raise ConfigError(f"stages[{i}] must be a mapping, got {stage!r}")
            name = stage.get("name")
            if not isinstance(name, str) or not _STAGE_NAME.match(name):
                raise ConfigError(
                    f"stages[{i}] needs a name of letters, digits, '_', '-' or '.' "
                    f"(it names the stage's directory), got {name!r}"
                )
            if name in seen:
                raise ConfigError(f"stage name {name!r} is used twice; names must be unique")
            seen.add(name)
            for key, why in _RUNNER_FIELDS.items():
                if key in stage or key in self.grpo or key in self.grpo_overrides:
                    raise ConfigError(f"{key} is set by the curriculum ({why})")
        return self


def load_stages_file(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> ProgressiveConfig:
    """Read a stages file (a path, or the name of a bundled example) and apply ``key=value``
    overrides (``grpo.KEY=V`` sets a shared GRPO field)."""
    data = read_config_file(_find_stages_file(path))
    try:
        cfg = ProgressiveConfig()
        cfg.output.name = Path(path).stem  # the run is named after its stages file
        apply_dict(cfg, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    apply_cli_overrides(cfg, overrides)
    return cfg.check()


def resume_config(
    run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> ProgressiveConfig:
    """The curriculum of an existing run directory (its config.json) plus ``key=value``
    overrides, e.g. ``max_retries=2`` to retry a stage that stopped the run, set to continue
    that run (``resume``)."""
    # not a train or GRPO run's: one line naming the kind, not an unknown key
    cfg = apply_dict(ProgressiveConfig(), read_resume_config(run_dir, "progressive"))
    apply_cli_overrides(cfg, overrides)
    cfg.resume = str(run_dir)
    return cfg.check()


def _find_stages_file(path: str | Path) -> Path:
    """``path`` itself, or the bundled example of that name (``synthetic_levels``)."""
    p = Path(path)
    if p.exists():
        return p
    root = resources.files("shoestring") / "presets" / "progressive"
    for suffix in ("", ".yaml", ".yml", ".json"):
        cand = root / f"{path}{suffix}"
        if cand.is_file():
            return Path(str(cand))
    names = sorted(x.name for x in root.iterdir()) if root.is_dir() else []
    raise ConfigError(
        f"stages file {path} does not exist (bundled examples: {', '.join(names) or 'none'})"
    )


def apply_cli_overrides(cfg: ProgressiveConfig, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``key=value`` strings; ``grpo.KEY=V`` sets KEY in ``grpo_overrides``, above every
    stage's own fields (checked now against GRPOConfig, and again per stage)."""
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("grpo."):
            # the key and the value's type now (a typo fails before the base model is
            # validated); ranges are checked per stage, with the stage's other fields
            apply_grpo_override(GRPOConfig(), text)
            cfg.grpo_overrides = {**cfg.grpo_overrides, key[5:]: value}
        else:
            apply_override(cfg, key, value)


def stage_grpo_config(
    cfg: ProgressiveConfig,
    stage: dict[str, Any],
    start_model: str | Path,
    lr_factor: float = 1.0,
    retention_reference: str | None = None,
) -> GRPOConfig:
    """The GRPOConfig of one stage attempt: preset < shared ``grpo`` < stage fields <
    ``grpo_overrides`` (the command line), then the runner's own fields (start model, retry
    learning rate, retention reference)."""
    # the curriculum validates (no second eval); its trackers follow every stage by default
    fields: dict[str, Any] = {"eval_problems": 0, "report_to": cfg.report_to}
    fields.update(cfg.grpo)
    fields.update({k: v for k, v in stage.items() if k != "name"})
    fields.update(cfg.grpo_overrides)
    if "retention_penalty" not in stage and cfg.retention_penalty:
        fields["retention_penalty"] = cfg.retention_penalty
    if (
        fields.get("retention_penalty")
        and retention_reference
        and not fields.get("retention_reference")
    ):
        fields["retention_reference"] = retention_reference
    fields["model_name_or_path"] = str(start_model)
    # Overrides (not a base dict), so the stage's fields land above the shared preset.
    overrides = [f"{k}={json.dumps(v)}" for k, v in fields.items()]
    try:
        gcfg = grpo_config(cfg.grpo_preset or None, overrides)
    except ConfigError as exc:
        raise ConfigError(f"stage {stage.get('name')!r}: {exc}") from None
    if lr_factor != 1.0:
        gcfg.learning_rate = gcfg.learning_rate * lr_factor
    return gcfg
