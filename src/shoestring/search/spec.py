"""What a study is: its grid (sizes x variants x seeds x choices), ranges, mode and overrides.

The spec is stored in the Optuna study itself (a study user attribute), so a worker that joins
with nothing but the storage URL trains exactly the configurations the study was created with,
and a resumed sweep can refuse to mix two different grids in one study.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from shoestring.config import ConfigError, opt, parse_override, to_dict, validate
from shoestring.run_config import RunConfig, build_run_config, list_presets, list_variants

SIZES = ("tiny", "small", "medium", "large")
SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median")
SPEC_ATTR = "shoestring_spec"  # study user attribute holding the spec (StudySpec.to_json)


def list_modes() -> list[str]:
    """The search mode presets shipped in ``presets/search``."""
    root = resources.files("shoestring") / "presets" / "search"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_mode(name: str) -> dict[str, Any]:
    """A search mode preset (steps, batch, evaluation cadence) as nested config overrides."""
    modes = list_modes()
    if name not in modes:
        raise ConfigError(f"unknown search mode '{name}'; available: {', '.join(modes)}")
    path = resources.files("shoestring") / "presets" / "search" / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("description", None)
    return data


def parse_list(text: str, allowed: list[str], what: str) -> list[str]:
    """``"a,b"`` or ``"all"`` -> names, each checked against ``allowed`` (with a suggestion)."""
    if text.strip() == "all":
        return list(allowed)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--{what} is empty; give a comma-separated list or 'all'")
    for n in names:
        if n not in allowed:
            close = difflib.get_close_matches(n, allowed, n=1, cutoff=0.4)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown {what[:-1]} '{n}'; {hint}available: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--{what} lists a name twice: {text}")
    return names


def parse_choice(text: str) -> tuple[str, list[Any]]:
    """``model.n_layers=2,4`` -> ("model.n_layers", [2, 4]) (values parsed as JSON when valid)."""
    key, raw = parse_override(text)
    values = [parse_override(f"{key}={v.strip()}")[1] for v in str(raw).split(",") if v.strip()]
    if len(values) < 1:
        raise ConfigError(f"--choice {text}: give at least one value, e.g. {key}=2,4")
    return key, values


def parse_range(text: str) -> dict[str, Any]:
    """``train.lr=1e-4:3e-3:log`` or ``model.n_layers=2:6:int`` -> a range description."""
    key, raw = text.split("=", 1) if "=" in text else (text, "")
    parts = str(raw).split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(
            f"--range {text} must look like KEY=LOW:HIGH[:log|:int], e.g. train.lr=1e-4:3e-3:log"
        )
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--range {text}: LOW and HIGH must be numbers") from None
    kind = parts[2] if len(parts) == 3 else "float"
    if kind not in ("float", "log", "int"):
        raise ConfigError(f"--range {text}: the third field is log, int or empty, not '{kind}'")
    if not lo < hi:
        raise ConfigError(f"--range {text}: LOW must be below HIGH")
    if kind == "log" and lo <= 0:
        raise ConfigError(f"--range {text}: a log range needs LOW > 0")
    return {"key": key.strip(), "low": lo, "high": hi, "kind": kind}


@dataclass
class StudySpec:
    """Everything that defines the trials of a study (stored in the study, compared on resume).

    ``sizes`` and ``variants`` may be given as ``"a,b"`` or ``"all"`` (a flag's or a ``--set``'s
    text) and ``ranges`` as ``KEY=LOW:HIGH[:log|:int]`` texts: :meth:`check` reads them into
    lists and range descriptions, so the stored spec is always in that one form.
    """

    sizes: list[str] = opt([], "size presets (tiny, small, medium, large or any preset) or all")
    variants: list[str] = opt([], "attention variants (presets/variants) or all")
    seeds: int = opt(3, "seeds per configuration", min=1)
    mode: str = opt("fast", "search mode preset: steps, batch and evaluation cadence")
    data: str = opt("", "prepared data directory (from `shoestring prepare`)")
    overrides: list[str] = opt([], "training-config overrides for every trial")
    choices: dict[str, list[Any]] = opt({}, "extra grid dimensions: KEY -> values")
    ranges: list[Any] = opt([], "ranges for sampler tpe: KEY=LOW:HIGH[:log|:int] texts")
    sampler: str = opt("grid", "the full grid, or a TPE budget of `trials`", choices=SAMPLERS)
    trials: int = opt(0, "trial budget of sampler tpe", min=0)
    prune: str = opt("none", "median: stop trials the median pruner rejects", choices=PRUNERS)
    base_seed: int = opt(1337, "base seed every trial seed derives from")
    oom_retries: int = opt(2, "retries of an out-of-memory trial at half micro-batch", min=0)

    def to_json(self) -> dict[str, Any]:
        """The spec alone (what the study stores), also from a config that extends it."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(StudySpec)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudySpec:
        return StudySpec(**data)

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a resumed or joined sweep to be the same study."""
        d = self.to_json()
        d.pop("data", None)  # a worker on another machine may keep the data elsewhere
        d.pop("trials", None)  # a TPE study may be extended with more trials
        return d

    def search_space(self) -> dict[str, list[Any]]:
        """The categorical dimensions (the full grid for GridSampler)."""
        space: dict[str, list[Any]] = {
            "size": list(self.sizes),
            "variant": list(self.variants),
            "seed": list(range(self.seeds)),
        }
        for key, values in self.choices.items():
            space[key] = list(values)
        return space

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.search_space().values())

    def check(self) -> StudySpec:
        """Read the list texts, validate every field, and build every grid corner once, so a
        bad ``--set`` or an impossible shape is reported before Optuna and torch load."""
        validate(self)
        presets = list_presets()
        size_names = [s for s in SIZES if s in presets] + [p for p in presets if p not in SIZES]
        if isinstance(self.sizes, str):
            every = self.sizes.strip() == "all"
            self.sizes = parse_list(self.sizes, size_names, "sizes")
            if every:  # 'all' is the four sizes, in size order
                self.sizes = [s for s in SIZES if s in self.sizes]
        if isinstance(self.variants, str):
            self.variants = parse_list(self.variants, list_variants(), "variants")
        self.ranges = [parse_range(r) if isinstance(r, str) else r for r in self.ranges]
        if self.data:  # absolute: trials run in other directories and other processes
            self.data = str(Path(self.data).resolve())
        if self.sampler == "grid" and self.ranges:
            raise ConfigError(
                "--range needs --sampler tpe (a grid needs discrete values: use --choice)"
            )
        if self.sampler == "tpe" and self.trials < 1:
            raise ConfigError("--sampler tpe needs a budget: --trials N (N >= 1)")
        bad = [s for s in self.sizes if s not in presets]
        if bad:
            raise ConfigError(f"unknown size preset(s) {bad}; available: {', '.join(SIZES)}")
        bad = [v for v in self.variants if v not in list_variants()]
        if bad:
            raise ConfigError(f"unknown variant(s) {bad}; available: {', '.join(list_variants())}")
        # every grid corner must build: catch a bad override or an impossible shape up front
        for size in self.sizes:
            for variant in self.variants:
                trial_config(self, {"size": size, "variant": variant, "seed": 0})
        return self


def derived_seed(base_seed: int, seed_index: int, config: dict[str, Any]) -> int:
    """A training seed that is a pure function of (seed index, resolved config).

    Hashing the config (minus the seed itself) means a trial is reproducible from its row alone,
    and two configurations never share a seed by accident of their order in the grid.
    """
    cfg = json.loads(json.dumps(config, sort_keys=True, default=str))
    cfg.get("train", {}).pop("seed", None)
    cfg.get("data", {}).pop("path", None)  # the same data elsewhere gives the same seed
    cfg.get("train", {}).pop("threads", None)  # how many threads ran it does not change it
    blob = json.dumps([base_seed, seed_index, cfg], sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") % (2**31 - 1)


def _param_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def trial_config(spec: StudySpec, params: dict[str, Any]) -> RunConfig:
    """The resolved RunConfig of one trial: size preset < variant < mode < overrides < params.

    The training seed is derived here, before any host adjustment (threads) or OOM retry
    (micro-batch), so a retried trial sees the same initial weights and the same data order.
    """
    mode = load_mode(spec.mode)
    overrides = [
        *(f"{sec}.{k}={json.dumps(v)}" for sec, d in mode.items() for k, v in d.items()),
        *([f"data.path={spec.data}"] if spec.data else []),
        *spec.overrides,
        *(_param_override(k, v) for k, v in params.items() if k not in ("size", "variant", "seed")),
    ]
    cfg = build_run_config(preset=params["size"], variant=params["variant"], overrides=overrides)
    cfg.train.seed = derived_seed(spec.base_seed, int(params["seed"]), to_dict(cfg))
    return cfg
