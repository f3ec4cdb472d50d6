"""Dataclass configs, presets, dotted overrides and validation.

This module is one idea: how a configuration comes to be - the typed fields (``opt``), the
training run's config dataclasses, the one preset loader, the layering and its validation - so
that every command builds its config the same way.

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
from dataclasses import dataclass, field
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


@dataclass
class ModelConfig:
    """Shape and attention switches of the shoestring GPT (DeepSeek field names)."""

    vocab_size: int = opt(
        16000, "vocabulary size (set from the tokenizer when data is prepared)", min=2
    )
    d_model: int = opt(256, "residual width (HF: hidden_size)", min=8)
    n_layers: int = opt(4, "number of transformer blocks (HF: num_hidden_layers)", min=1)
    n_heads: int = opt(4, "attention heads (HF: num_attention_heads)", min=1)
    d_ff: int = opt(1024, "MLP hidden width (HF: intermediate_size)", min=1)
    max_seq_len: int = opt(0, "longest sequence the model accepts; 0 = train.seq_len", min=0)
    q_lora_rank: int = opt(0, "rank of the low-rank query projection; 0 = full projection", min=0)
    kv_lora_rank: int = opt(0, "rank of the shared low-rank key/value projection; 0 = full", min=0)
    qk_rope_head_dim: int = opt(
        0,
        "decoupled RoPE dims per head added to q/k (DeepSeek style); 0 = rotate the whole head",
        min=0,
    )
    v_head_dim: int = opt(0, "value dims per head; 0 = d_model / n_heads", min=0)
    position: str = opt("learned", "position encoding", choices=("learned", "rope"))
    rope_theta: float = opt(10000.0, "RoPE base frequency", min=1.0)
    rope_scaling: float = opt(1.0, "linear RoPE scaling factor (1 = none)", min=1.0)
    attention_bias: bool = opt(False, "bias terms on the attention projections")
    norm: str = opt("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    norm_eps: float = opt(1e-5, "epsilon of the norm layers", min=0.0, max=1.0)
    mlp: str = opt("gelu", "MLP type", choices=("gelu", "swiglu"))
    tie_word_embeddings: bool = opt(True, "share input embedding and output head weights")
    dropout: float = opt(0.0, "dropout probability", min=0.0, max=1.0)
    initializer_range: float = opt(0.02, "std of the normal weight init", min=0.0)


@dataclass
class DataConfig:
    """Where prepared token shards live (written by ``shoestring prepare``)."""

    path: str = opt("", "prepared data directory (train.bin, val.bin, tokenizer.json, meta.json)")


@dataclass
class TrainConfig:
    """Optimisation, evaluation, checkpointing and host settings of ``shoestring train``."""

    seq_len: int = opt(128, "tokens per training sequence", min=2)
    batch_size: int = opt(32, "sequences per micro-batch (per process under DDP)", min=1)
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step", min=1)
    max_steps: int = opt(200, "optimizer steps", min=1)
    lr: float = opt(1e-4, "peak learning rate", min=0.0, max=10.0)
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of lr", min=0.0, max=1.0)
    warmup_steps: int = opt(20, "linear warmup steps before cosine decay", min=0)
    weight_decay: float = opt(0.1, "AdamW decay, applied to matrices only", min=0.0)
    beta1: float = opt(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = opt(0.95, "AdamW beta2", min=0.0, max=1.0)
    grad_clip: float = opt(1.0, "max gradient norm; 0 disables clipping", min=0.0)
    eval_every: int = opt(50, "evaluate every N steps (and at the end)", min=1)
    eval_batches: int = opt(10, "validation batches per evaluation (a fixed set)", min=1)
    log_every: int = opt(10, "write a metrics line every N steps", min=1)
    save_every: int = opt(100, "write a resumable checkpoint every N steps (and at the end)", min=1)
    keep_checkpoints: int = opt(2, "step checkpoints kept besides best/last", min=1)
    seed: int = opt(1337, "random seed (model init, data order, dropout)", min=0)
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto (cuda if present, else cpu)")
    dtype: str = opt(
        "auto",
        "compute dtype; auto = bf16 autocast on CUDA with bf16, else fp32",
        choices=("auto", "fp32", "bf16"),
    )
    compile: str = opt(
        "auto",
        "torch.compile the model; auto = after 3 eager steps, if >10 min of training is left",
        choices=("auto", "on", "off"),
    )
    threads: int = opt(0, "torch intra-op threads; 0 = physical cores", min=0)
    flush_denormal: str = opt(
        "auto", "flush denormal floats to zero on CPU", choices=("auto", "on", "off")
    )
    deterministic: bool = opt(False, "deterministic algorithms (bitwise-repeatable on CPU)")
    trainer: str = opt("plain", "training algorithm", choices=("plain", "hybrid"))
    report_to: str = opt("none", "extra metric sinks", choices=("none", "tensorboard"))


@dataclass
class HybridConfig:
    """``train.trainer=hybrid``: when to predict weight updates instead of computing them.

    Phases: warmup (plain steps) -> full (plain steps that also fit the predictor and score it)
    -> predict (predicted updates, no backward) -> correct (plain steps that score the
    predictions) -> predict again or back to full. See docs/hybrid.md.
    """

    warmup_steps: int = opt(50, "plain steps before the predictor is fitted at all", min=0)
    min_full_steps: int = opt(
        20, "least full steps before a predict phase, and after every rollback", min=1
    )
    max_predict_steps: int = opt(8, "longest run of predicted steps before correcting", min=1)
    correct_steps: int = opt(2, "real steps after each predict phase that score it", min=1)
    confidence_threshold: float = opt(
        0.6, "running confidence needed to enter (or stay in) predict", min=0.0, max=1.0
    )
    divergence_sigma: float = opt(
        2.5, "a monitored loss this many std above its EMA is a divergence", min=0.0
    )
    predictor: str = opt(
        "coast", "update predictor (docs/hybrid.md)", choices=("coast", "linear", "lowrank")
    )
    monitor_every: int = opt(
        4, "forward pass (loss check) every N predicted steps; 0 = never", min=0
    )
    score_full_steps: int = opt(
        4,
        "last full steps of each minimum span that are scored (a scored step costs a "
        "predictor call and two weight copies); every full step past the minimum is scored",
        min=1,
    )
    confidence_ema: float = opt(
        0.5, "weight of the newest per-step score in the running confidence", min=0.01, max=1.0
    )
    linear_beta: float = opt(
        0.8, "linear predictor: EMA factor of the per-parameter velocity", min=0.0, max=0.999
    )
    history: int = opt(
        8, "lowrank predictor: updates kept (memory = history x parameters)", min=2, max=64
    )
    rank: int = opt(2, "lowrank predictor: directions used (<= history)", min=1, max=64)
    norm_jump: float = opt(
        3.0,
        "a predicted step that moves the weight norm this many times the mean real step's "
        "change is a divergence",
        min=1.0,
    )
    loss_window: int = opt(
        32, "real-step losses in the trend that predicts the loss at correct steps", min=4
    )


@dataclass
class RunConfig:
    """Everything ``shoestring train`` needs; written to ``config.json`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    preset: str = ""
    variant: str = ""

    def resolved(self) -> RunConfig:
        """Fill the fields whose default depends on other fields, then validate."""
        if self.model.max_seq_len == 0:
            self.model.max_seq_len = self.train.seq_len
        validate(self)
        check_model_shape(self.model)
        if self.hybrid.rank > self.hybrid.history:
            raise ConfigError(
                f"hybrid.rank={self.hybrid.rank} is larger than hybrid.history="
                f"{self.hybrid.history}; lower hybrid.rank or raise hybrid.history"
            )
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len={self.train.seq_len} is longer than model.max_seq_len="
                f"{self.model.max_seq_len}; raise model.max_seq_len or lower train.seq_len"
            )
        return self


def check_model_shape(m: ModelConfig) -> None:
    """Cross-field rules of the model shape, with the fix in the message."""
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} must be divisible by model.n_heads={m.n_heads}"
        )
    head_dim = m.d_model // m.n_heads
    if m.position == "rope" and m.qk_rope_head_dim == 0 and head_dim % 2:
        raise ConfigError(f"RoPE needs an even head dim; d_model/n_heads = {head_dim}")
    if m.qk_rope_head_dim % 2:
        raise ConfigError(f"model.qk_rope_head_dim={m.qk_rope_head_dim} must be even")
    if m.qk_rope_head_dim and m.position != "rope":
        raise ConfigError("model.qk_rope_head_dim > 0 needs model.position='rope'")


# ----------------------------------------------------------------------------- validation


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a JSON/YAML/CLI value to the field's declared type or say why not."""
    if dataclasses.is_dataclass(typ):
        raise ConfigError(f"{where} is a section; set its fields, e.g. {where}.<field>=...")
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
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
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be an integer")
        try:
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


def _suggest(key: str, valid: list[str], prefix: str = "") -> str:
    if ALIASES.get(key) in valid:
        return f"did you mean '{prefix}{ALIASES[key]}'?"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
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
            alias = ".".join(parts[:i] + [ALIASES.get(part, part)])
            close = (
                [alias]
                if alias in valid
                else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            )
            hint = f"did you mean '{close[0]}'?" if close else "run with --help-config to list keys"
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
    text = p.read_text(encoding="utf-8")
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


def list_presets() -> list[str]:
    return preset_names()


def list_variants() -> list[str]:
    return preset_names("variants")


def load_preset(name: str) -> dict[str, Any]:
    """A named preset (model size or a seed configuration) as a nested dict of overrides."""
    return load_named_preset("", name, "preset")


def load_variant(name: str) -> dict[str, Any]:
    """A named attention variant: a dict of model switches, composed on top of a size."""
    return load_named_preset("variants", name, "variant")


def build_run_config(
    preset: str | None = None,
    variant: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Layer defaults < base < preset < variant < file < overrides, then resolve and validate."""
    cfg = RunConfig()
    if base:
        apply_dict(cfg, base)
    if preset:
        apply_dict(cfg, load_preset(preset))
        cfg.preset = preset
    if variant:
        apply_dict(cfg, {"model": load_variant(variant)})
        cfg.variant = variant
    if config_file:
        apply_dict(cfg, read_config_file(config_file))
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(cfg, key, value)
    return cfg.resolved()
