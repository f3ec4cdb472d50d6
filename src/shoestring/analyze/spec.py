"""What one ``analyze`` call is asked: targets, overrides, sweep grid, projections, timing.

Kept apart from the measuring code so that reading a request - the CLI's defaults, resolving
targets to configs, expanding a sweep - never imports torch. Everything here turns user input
into validated :class:`~shoestring.run_config.RunConfig` objects or raises a
:class:`~shoestring.errors.UserError` that says what to type instead.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from shoestring.config import (
    ConfigError,
    apply_dict,
    apply_override,
    parse_override,
    read_config_file,
    to_dict,
)
from shoestring.errors import UserError
from shoestring.run_config import RunConfig, build_run_config, list_presets

__all__ = [
    "CACHE_STUDY_PRESETS",
    "AnalysisSpec",
    "MeasureSettings",
    "SweepPoint",
    "expand_sweep",
    "parse_sweep",
    "preset_projection",
    "resolve_targets",
    "training_tokens",
]

#: The four configurations of the CPU-cache study this project grew from (the default).
CACHE_STUDY_PRESETS = (
    "autoregressive_fast",
    "wiki_cache_optimized",
    "wiki_gpu_optimized",
    "wiki_performance_tuned",
)
MAX_SWEEP_FIELDS = 2

#: (label, source, config, sweep point, base label): one configuration to analyse.
SweepPoint = tuple[str, str, RunConfig, dict[str, Any], str]


@dataclass
class MeasureSettings:
    """How long to measure: ``warmup`` steps, then up to ``steps`` timed steps, stopping early
    (after at least ``min_steps``) once ``seconds`` of timed steps have passed."""

    warmup: int = 2
    steps: int = 5
    min_steps: int = 3
    seconds: float = 15.0

    @classmethod
    def quick(cls) -> MeasureSettings:
        return cls(warmup=1, steps=2, min_steps=2, seconds=2.0)


@dataclass
class AnalysisSpec:
    """Everything one ``analyze`` call was asked (written to config.json)."""

    targets: list[str] = field(default_factory=lambda: list(CACHE_STUDY_PRESETS))
    overrides: list[str] = field(default_factory=list)
    sweep: list[str] = field(default_factory=list)
    projected: dict[str, float] = field(default_factory=dict)
    tokens: float | None = None
    data: str | None = None
    epochs: float = 1.0
    measure: bool = True
    quick: bool = False
    settings: MeasureSettings = field(default_factory=MeasureSettings)


def preset_projection(name: str) -> float | None:
    """A projected tokens/s a preset's ``notes`` may carry (``projected_tokens_per_second``)."""
    path = resources.files("shoestring") / "presets" / f"{name}.json"
    try:
        notes = json.loads(path.read_text(encoding="utf-8")).get("notes")
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(notes, dict) and notes.get("projected_tokens_per_second") is not None:
        return float(notes["projected_tokens_per_second"])
    return None


def resolve_targets(targets: list[str], overrides: list[str]) -> list[tuple[str, str, RunConfig]]:
    """Each target -> (label, source, resolved config). A target is a preset name, a preset
    with an attention variant (``small+lora_small``), a JSON/YAML config file, or a run
    directory (its config.json). Overrides apply to every target."""
    out: list[tuple[str, str, RunConfig]] = []
    presets = list_presets()
    for target in targets:
        path = Path(target)
        try:
            if path.is_dir():
                if not (path / "config.json").is_file():
                    raise UserError(f"{path} has no config.json; give a run directory or a preset")
                base = read_config_file(path / "config.json")
                base = {k: base[k] for k in ("model", "train", "data") if k in base}
                cfg = build_run_config(base=base, overrides=overrides)
                label, source = path.name, f"run:{path}"
            elif path.is_file():
                cfg = build_run_config(config_file=str(path), overrides=overrides)
                label, source = path.stem, f"file:{path}"
            else:
                preset, _, variant = target.partition("+")
                if preset not in presets:
                    build_run_config(preset=preset)  # raises with the nearest name
                cfg = build_run_config(preset=preset, variant=variant or None, overrides=overrides)
                label, source = target, f"preset:{target}"
        except ConfigError as exc:
            raise UserError(f"{target}: {exc}") from None
        out.append((label, source, cfg))
    # the same target given twice gets #2, #3 ... so every row keeps its own label
    seen: dict[str, int] = {}
    unique = []
    for label, source, cfg in out:
        seen[label] = seen.get(label, 0) + 1
        unique.append((label if seen[label] == 1 else f"{label}#{seen[label]}", source, cfg))
    return unique


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.batch_size=8,16,32"]`` -> ``[("train.batch_size", ["8", "16", "32"])]``."""
    if len(items) > MAX_SWEEP_FIELDS:
        raise UserError(
            f"--sweep takes at most {MAX_SWEEP_FIELDS} fields (got {len(items)}); a grid of "
            "more fields multiplies the measuring time - sweep them in separate calls"
        )
    out = []
    for item in items:
        if "=" not in item:
            raise UserError(f"--sweep {item!r} must look like train.batch_size=8,16,32")
        key, values = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            key = f"train.{key}"  # batch_size=... is the common case
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise UserError(f"--sweep {item!r} lists no values; e.g. {key}=8,16,32")
        out.append((key, vals))
    return out


def expand_sweep(
    targets: list[tuple[str, str, RunConfig]], sweep: list[tuple[str, list[str]]]
) -> list[SweepPoint]:
    """The grid: every target x every combination of the swept values (validated configs).

    Returns (label, source, config, sweep point, base label) tuples.
    """
    if not sweep:
        return [(label, source, cfg, {}, label) for label, source, cfg in targets]
    out = []
    for label, source, cfg in targets:
        for combo in itertools.product(*(vals for _, vals in sweep)):
            c = apply_dict(RunConfig(), to_dict(cfg))  # a copy: each point edits its own
            point: dict[str, Any] = {}
            try:
                for (key, _), raw in zip(sweep, combo, strict=True):
                    k, v = parse_override(f"{key}={raw}")
                    apply_override(c, k, v)
                    point[key] = v
                c = c.resolved()
            except ConfigError as exc:
                raise UserError(f"--sweep: {exc}") from None
            tag = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
            out.append((f"{label} [{tag}]", source, c, point, label))
    return out


def training_tokens(spec: AnalysisSpec) -> tuple[float | None, str | None]:
    """The token count a time-to-train estimate is for, and where it came from."""
    if spec.tokens:
        return float(spec.tokens), "--tokens"
    if spec.data:
        meta = Path(spec.data) / "meta.json"
        if not meta.is_file():
            raise UserError(
                f"--data {spec.data} has no meta.json; give a directory made by "
                "`shoestring prepare`, or pass --tokens N"
            )
        info = json.loads(meta.read_text(encoding="utf-8"))
        n = float(info["train_tokens"]) * spec.epochs
        return n, f"{spec.data} ({info['train_tokens']:,} train tokens x {spec.epochs:g} epochs)"
    return None, None
