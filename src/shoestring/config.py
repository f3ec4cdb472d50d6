"""How every command's config comes to be: typed fields, presets, dotted overrides, validation.

The config dataclasses live with what they configure (the training run's in
:mod:`shoestring.run_config`, bench's, GRPO's and progressive's in their packages); this module
is the one mechanism they all share, so every command builds its config the same way.

Configs work like TRL's dataclass configs: every option is a typed dataclass field with a
default, a help text and (where it has one) an allowed range or set of choices. A config is
built in layers - defaults, then a preset, then a variant, then a config file, then
``--set section.field=value`` overrides - and validated once at the end, so an error always
names the field, the value and what would have been accepted. A key that does not exist gets
the nearest valid key suggested, because a typo that is silently ignored costs a whole run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says what to do instead."""


def opt(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A dataclass field with the metadata the validator and ``--help`` read."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- validation


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a JSON/YAML/CLI value to the field's declared type or say why not."""
    if dataclasses.is_dataclass(typ):
        raise ConfigError(f"{where} is a section; set its fields, e.g. {where}.<field>=...")
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # ``X | None``: None, or coerce to X
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}={value!r} is not a boolean (use true or false)")
    if typ is int:
        if isinstance(value, bool):  # bool is an int subclass: ``true`` is not 1 here
            raise ConfigError(f"{where}={value!r} must be an integer")
        try:  # via float, so "1e3" and 1000.0 are accepted and 2.5 is refused
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} must be an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{where}={value!r} must be an integer")
        return int(f)
    if typ is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} must be a number") from None
        if math.isnan(f):
            raise ConfigError(f"{where} must not be NaN")
        return f
    if typ is str:
        return str(value)
    return value


# Names people bring from nanoGPT, Hugging Face and TRL, mapped to ours for suggestions.
ALIASES = {
    "learning_rate": "lr",
    "n_embd": "d_model",
    "hidden_size": "d_model",
    "n_layer": "n_layers",
    "num_hidden_layers": "n_layers",
    "num_layers": "n_layers",
    "n_head": "n_heads",
    "num_attention_heads": "n_heads",
    "intermediate_size": "d_ff",
    "block_size": "seq_len",
    "max_position_embeddings": "max_seq_len",
    "gradient_accumulation_steps": "grad_accum",
    "per_device_train_batch_size": "batch_size",
    "warmup": "warmup_steps",
    "steps": "max_steps",
    "max_grad_norm": "grad_clip",
    "bias": "attention_bias",
    "num_threads": "threads",
}


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of
    two neighbouring characters each cost 1 (``learnign`` is one swap from ``learning``)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            # deletion, insertion, substitution (free when the characters agree)
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:  # a swap of neighbours
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _spellings(name: str) -> list[str]:
    """A field name and the names other libraries use for it (both directions of ALIASES)."""
    out = [name]
    out += [alias for alias, ours in ALIASES.items() if ours == name]
    if name in ALIASES:
        out.append(ALIASES[name])
    return out


def nearest_key(key: str, valid: list[str]) -> str | None:
    """The valid dotted key ``key`` most likely meant, or None when nothing is close.

    Compared by edit distance against every valid key and every alias of its last part
    (``train.learning_rate`` stands for ``train.lr``), so a misspelt alias finds the real key;
    a candidate in the same section wins a tie. Close means at most a third of the typed
    name's characters changed (at least one), so hints stay plausible.
    """
    section, _, leaf = key.rpartition(".")
    best: tuple[int, int, str] | None = None
    for cand in valid:
        c_section, _, c_leaf = cand.rpartition(".")
        for spelling in _spellings(c_leaf):
            d = edit_distance(key, f"{c_section}.{spelling}" if c_section else spelling)
            if c_section != section:  # the leaf alone, for a key given without its section
                d = min(d, edit_distance(leaf, spelling) + 1)
            rank = (d, 0 if c_section == section else 1, cand)
            if best is None or rank < best:
                best = rank
    if best is None or best[0] > max(1, len(leaf) // 3):  # too far to be a typo of it
        return None
    return best[2]


def _suggest(key: str, valid: list[str], prefix: str = "") -> str:
    close = nearest_key(key, valid)
    if close:
        return f"did you mean '{prefix}{close}'?"
    return "valid keys: " + ", ".join(prefix + v for v in sorted(valid))


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every field against its declared range and choices (recursing into sections)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, prefix=f"{where}.")
            continue
        meta = f.metadata
        if not meta:
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{where}={value!r} is not allowed; choose one of: {allowed}")
        lo, hi = meta.get("min"), meta.get("max")
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"{where}={value!r} is out of range; allowed range is {rng}")


def apply_dict(cfg: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set fields from a nested dict (a preset or config file); unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'; {_suggest(key, list(names), prefix)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} is a section and needs a mapping, got {value!r}")
            apply_dict(current, value, prefix=f"{where}.")
        else:
            setattr(cfg, key, _coerce(value, _field_type(type(cfg), key), where))
    return cfg


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config, for suggestions."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix=f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.field=value``; the value is parsed as JSON when it is valid JSON."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_override(cfg: Any, key: str, value: Any) -> None:
    """Apply one dotted override, suggesting the nearest full dotted key on a typo."""
    valid = all_keys(cfg)
    parts = key.split(".")
    target = cfg
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(target)}
        if part not in names:
            close = nearest_key(key, valid)
            hint = f"did you mean '{close}'?" if close else "run with --help-config to list keys"
            raise ConfigError(f"unknown config key '{key}'; {hint}")
        if i == len(parts) - 1:
            current = getattr(target, part)
            if dataclasses.is_dataclass(current):
                raise ConfigError(
                    f"'{key}' is a section; set one of its fields, e.g. "
                    f"{key}.{dataclasses.fields(current)[0].name}=..."
                )
            setattr(target, part, _coerce(value, _field_type(type(target), part), key))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a field, not a section")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def run_dict(cfg: Any, placement: Iterable[str]) -> dict[str, Any]:
    """What a run's ``config.json`` holds: the config without the ``placement`` keys, which only
    say where the run goes and how loudly it runs (so a copied ``config.json`` used as
    ``--config`` starts a new run rather than pointing at the old one)."""
    skip = set(placement)
    return {k: v for k, v in to_dict(cfg).items() if k not in skip}


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config from its ``to_dict`` form (e.g. a run's config.json)."""
    return apply_dict(cls(), values)


def describe(cfg: Any) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field, for ``--help-config`` and the docs."""
    rows = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += [(f"{f.name}.{k}", v, h) for k, v, h in describe(value)]
        elif f.metadata:
            extra = ""
            if f.metadata.get("choices"):
                extra = f" [{'|'.join(map(str, f.metadata['choices']))}]"
            rows.append((f.name, value, f.metadata["help"] + extra))
    return rows


# ----------------------------------------------------------------------------- files and presets


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict, with the file named in any error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a binary file given as --config
        raise ConfigError(f"config file {p} is not text (UTF-8): {exc.reason}") from exc
    try:
        if p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - the message says which file and why
        raise ConfigError(f"cannot parse config file {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def preset_names(group: str = "") -> list[str]:
    """Names of the JSON presets in ``presets/<group>`` (sizes and seed configs for ``""``,
    ``variants``, ``grpo``, ``search``): the one preset loader every command uses."""
    root = resources.files("shoestring") / "presets"
    if group:
        root = root / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_named_preset(group: str, name: str, what: str = "preset") -> dict[str, Any]:
    """The preset ``presets/<group>/<name>.json`` as a dict, ``description``/``notes`` dropped;
    an unknown name gets the nearest one suggested and the list of names."""
    names = preset_names(group)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown {what} '{name}'; {hint}available: {', '.join(names)}")
    root = resources.files("shoestring") / "presets"
    path = (root / group if group else root) / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("description", None)
    data.pop("notes", None)
    return data
