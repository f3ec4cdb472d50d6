"""Reading an ``analyze`` request: targets to training configs, the sweep grid, the token count.

Kept apart from the measuring code so that reading a request - resolving targets to configs,
expanding a sweep - never imports torch, and a bad target fails before a model is built.
Everything here turns an :class:`~shoestring.analyze.config.AnalysisConfig` into validated
:class:`~shoestring.run_config.RunConfig` objects or raises a
:class:`~shoestring.errors.UserError` that says what to type instead.
"""

from __future__ import annotations

import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from shoestring.analyze.config import AnalysisConfig
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
    "SweepPoint",
    "expand_sweep",
    "parse_sweep",
    "preset_projection",
    "resolve_targets",
    "training_tokens",
]

MAX_SWEEP_FIELDS = 2

#: (label, source, config, sweep point, base label): one configuration to analyse.
SweepPoint = tuple[str, str, RunConfig, dict[str, Any], str]


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


def training_tokens(cfg: AnalysisConfig) -> tuple[float | None, str | None]:
    """The token count a time-to-train estimate is for, and where it came from."""
    if cfg.tokens:
        return float(cfg.tokens), "--tokens"
    if cfg.data:
        meta = Path(cfg.data) / "meta.json"
        if not meta.is_file():
            raise UserError(
                f"--data {cfg.data} has no meta.json; give a directory made by "
                "`shoestring prepare`, or pass --tokens N"
            )
        info = json.loads(meta.read_text(encoding="utf-8"))
        n = float(info["train_tokens"]) * cfg.epochs
        return n, f"{cfg.data} ({info['train_tokens']:,} train tokens x {cfg.epochs:g} epochs)"
    return None, None
