"""Read a TRL GRPO config (the flat YAML of ``trl grpo``) as a ``shoestring grpo`` config.

Why a translation layer and not more fields: a TRL config mixes four dataclasses
(:mod:`shoestring.rl.trl_keys` lists every key), most of whose keys are plumbing with no
meaning here (hub uploads, trackers, DeepSpeed). Adding them all to :class:`GRPOConfig` would
bury its real options; refusing them (as before) made every TRL config fail on its first such
key. So a TRL config is translated once, up front:

- keys with shoestring's name and meaning pass through; mapped keys become shoestring fields
  (``bf16`` -> ``dtype``, ``use_peft``/``lora_r`` -> ``lora_rank``, ``dataset_name`` ->
  ``dataset``, ``output_dir`` ...);
- every key with no meaning here is named once in the run's log with the reason - never an
  error, never silence;
- a TRL feature shoestring does not implement is accepted only at the values where TRL does
  what shoestring does, and is a config error otherwise;
- keys the config does not set take TRL's defaults where TRL's differ (``max_completion_length``
  512, ``gradient_checkpointing`` on, ...), so the config means what it means in TRL; the log
  lists them.

A config is TRL's when ``--trl-config`` says so or when it holds a key that only TRL has
(:func:`is_trl_config`). The notices travel in the config's ``notices`` field and are logged at
the start of the run.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from shoestring.config import ConfigError
from shoestring.rl.trl_keys import (
    TRL_DEFAULTS,
    TRL_DEFAULTS_NOT_APPLIED,
    TRL_KEYS,
    TRL_LORA_DEFAULTS,
    TRL_SCRIPT_REWARDS,
)
from shoestring.rundir.trackers import TRACKERS, tracker_names

__all__ = ["is_trl_config", "translate_trl", "trl_defaults", "trl_key_table"]

GSM8K_HUB_NAMES = ("openai/gsm8k", "gsm8k")
TRL_SCHEDULERS = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant",
    "constant_with_warmup": "constant",
}
#: ModelConfig's ``dtype`` values (weight storage), as opposed to shoestring's own ``dtype``.
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def is_trl_config(values: dict[str, Any], native: set[str]) -> bool:
    """True when ``values`` hold a key only TRL has (``output_dir``, ``bf16``, ``use_peft``...);
    ``native`` are shoestring's GRPOConfig field names."""
    only_trl = (k for k in values if k in TRL_KEYS and TRL_KEYS[k].kind != "same")
    return any(k not in native for k in only_trl) or _model_dtype(values)


def _model_dtype(values: dict[str, Any]) -> bool:
    """A ``dtype`` in ModelConfig's spelling (``bfloat16``) marks a TRL config too."""
    return str(values.get("dtype", "")).lower() in ("float32", "bfloat16", "float16")


def translate_trl(values: dict[str, Any], native: set[str]) -> dict[str, Any]:
    """``values`` of a TRL config as GRPOConfig fields (``native`` are their names) plus
    ``notices`` (what the run logs). TRL's defaults for unset keys are :func:`trl_defaults`'s.

    Raises:
        ConfigError: an unknown key (nearest key suggested), or a TRL feature shoestring does
            not implement set to a value that changes training.
    """
    out: dict[str, Any] = {}
    notices: list[str] = []
    ignored: dict[str, list[str]] = {}
    for key, value in values.items():
        entry = TRL_KEYS.get(key)
        if entry is None:
            if key in native:
                out[key] = value
                continue
            valid = sorted(native | set(TRL_KEYS))
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "see docs/grpo.md's TRL key table"
            raise ConfigError(
                f"unknown config key '{key}' (neither TRL's nor shoestring's); {hint}"
            )
        if entry.kind == "ignored":
            ignored.setdefault(entry.note, []).append(key)
        elif entry.kind == "unsupported":
            if value not in entry.accept:
                msg = (
                    f"{key}={value!r} asks for {entry.note}, which shoestring grpo does not "
                    f"implement; remove it or set {key}: {entry.accept[0]!r}"
                )
                if not entry.notice_only:
                    raise ConfigError(msg)
                if values.get("beta", 0) and value:
                    notices.append(f"{key}={value!r}: {entry.note}")
        elif entry.kind == "same":
            out[key] = _same(key, value, notices)
    _dtype(values, out, notices)
    _device(values, out)
    _lora(values, out, notices)
    _dataset(values, out, notices)
    _schedule(values, out, notices)
    _logging_and_saving(values, out, notices)
    if "reward_funcs" in values:
        out["rewards"] = [_reward_name(n) for n in values["reward_funcs"] or []]
    for reason, keys in ignored.items():
        notices.append(f"{', '.join(keys)}: ignored - {reason}")
    out["notices"] = notices
    return out


def _same(key: str, value: Any, notices: list[str]) -> Any:
    """A shared field, with TRL-only values translated."""
    if key == "report_to":  # TRL's other trackers (trackio, mlflow ...) are named and dropped
        names = tracker_names(value)
        other = [n for n in names if n not in TRACKERS]
        if other:
            notices.append(
                f"report_to: {', '.join(other)} ignored - shoestring writes tensorboard and "
                "wandb (metrics.jsonl always)"
            )
        return [n for n in names if n in TRACKERS] or ["none"]
    if key == "scale_rewards" and isinstance(value, bool):
        return "group" if value else "none"
    if key in ("num_completions_to_print", "save_total_limit") and value is None:
        keep = {"num_completions_to_print": 4, "save_total_limit": 2}[key]
        notices.append(f"{key}=null (TRL: all) keeps shoestring's {keep}")
        return keep
    return value


def _dtype(values: dict[str, Any], out: dict[str, Any], notices: list[str]) -> None:
    """bf16/fp16 (compute) and ModelConfig's dtype (weights) -> shoestring's ``dtype``.

    A dtype the user set is honoured or refused, never dropped: ``bf16: false`` runs fp32.
    """
    if values.get("fp16"):
        raise ConfigError(
            "fp16: true asks for fp16 mixed precision, which shoestring grpo does not implement; "
            "use bf16: true (bf16 autocast) or fp16: false (fp32)"
        )
    own = None
    for key in ("dtype", "torch_dtype"):
        if values.get(key) is None:
            continue
        weight = str(values[key]).lower()
        if key == "dtype" and weight in ("fp32", "bf16"):
            own = out["dtype"] = weight  # shoestring's own spelling: the compute dtype
            continue
        if weight not in MODEL_DTYPES:
            raise ConfigError(f"{key}={weight!r}: use float32, bfloat16 or auto")
        if weight == "float16":
            raise ConfigError(
                f"{key}: float16 asks for fp16 weights, which shoestring grpo does not train; "
                "use bfloat16 or float32"
            )
        if weight != "float32":
            notices.append(
                f"{key}={weight}: trained weights stay fp32 (under bf16 the computation runs "
                "in bf16 autocast and LoRA's frozen base weights are held in bf16)"
            )
    if values.get("bf16") is not None:
        want = "bf16" if values["bf16"] else "fp32"
        if own is not None and own != want:
            raise ConfigError(f"bf16={values['bf16']} contradicts dtype={own}; keep one of them")
        out["dtype"] = want


def _device(values: dict[str, Any], out: dict[str, Any]) -> None:
    cpu = bool(values.get("use_cpu")) or bool(values.get("no_cuda"))
    if cpu:
        own = values.get("device")
        if own not in (None, "cpu", "auto"):
            raise ConfigError(f"use_cpu: true contradicts device={own}; keep one of them")
        out["device"] = "cpu"


def _lora(values: dict[str, Any], out: dict[str, Any], notices: list[str]) -> None:
    """``use_peft`` + ``lora_*`` -> ``lora_rank`` and friends; LoRA keys without LoRA are
    named in the log (TRL ignores them silently; the run is a full fine-tune)."""
    given = [k for k in LORA_KEYS if k in values]
    if "use_peft" not in values and values.get("lora_rank"):  # shoestring's own LoRA switch
        out.update({k: _lora_value(k, values[k]) for k in given if k != "lora_r"})
        return
    if "use_peft" not in values:
        if given:
            notices.append(
                f"{', '.join(given)} set without use_peft: true - this is a full fine-tune and "
                "they have no effect (as in TRL); add use_peft: true for LoRA"
            )
        return
    if not values["use_peft"]:
        out["lora_rank"] = 0
        if given:
            notices.append(
                f"use_peft: false - full fine-tune; {', '.join(given)} have no effect (as in TRL)"
            )
        return
    out["lora_rank"] = int(values.get("lora_r", 16))
    for key in ("lora_alpha", "lora_dropout", "lora_target_modules"):
        if key in values:
            out[key] = _lora_value(key, values[key])


def _lora_value(key: str, value: Any) -> Any:
    """``lora_target_modules: null`` is peft's default for the architecture, as in TRL."""
    if key != "lora_target_modules":
        return value
    value = ["peft-default"] if value is None else value
    return [value] if isinstance(value, str) else list(value)


def _dataset(values: dict[str, Any], out: dict[str, Any], notices: list[str]) -> None:
    name = values.get("dataset_name")
    split = values.get("dataset_train_split", "train")
    if split != "train":
        raise ConfigError(
            f"dataset_train_split={split!r}: shoestring grpo trains on the train split; use "
            "dataset: gsm8k:PATH with a JSONL file of the problems to train on"
        )
    if name is None:
        return
    config = values.get("dataset_config")
    if config not in (None, "main"):
        raise ConfigError(
            f"dataset_config={config!r}: shoestring reads GSM8K's 'main' configuration; use "
            "dataset: gsm8k:PATH with a local JSONL file of another one"
        )
    if str(name).lower() in GSM8K_HUB_NAMES:
        out["dataset"] = "gsm8k"
        notices.append(
            f"dataset_name={name}: read from the local GSM8K copy (shared/data/gsm8k or "
            "$SHOESTRING_SHARED/data/gsm8k); nothing is downloaded"
        )
    elif Path(name).exists():
        out["dataset"] = f"gsm8k:{name}"
    else:
        raise ConfigError(
            f"dataset_name={name!r}: shoestring grpo reads GSM8K-format JSONL (question, answer) "
            "and synthetic math, and downloads nothing; use openai/gsm8k, a local JSONL "
            "file or folder, or dataset: synthetic:LEVEL"
        )


def _schedule(values: dict[str, Any], out: dict[str, Any], notices: list[str]) -> None:
    """Scheduler names, TRL's warmup spellings (``warmup_ratio``, ``warmup_steps`` < 1)."""
    kind = values.get("lr_scheduler_type")
    if kind is not None:
        if kind not in TRL_SCHEDULERS:
            raise ConfigError(
                f"lr_scheduler_type={kind!r} is not implemented; use one of "
                f"{', '.join(TRL_SCHEDULERS)}"
            )
        out["lr_scheduler_type"] = TRL_SCHEDULERS[kind]
    steps = values.get("warmup_steps")
    if isinstance(steps, float) and 0 < steps < 1:
        out["warmup_steps"] = 0
        out["warmup_ratio"] = steps
    elif "warmup_ratio" in values:
        out["warmup_ratio"] = float(values["warmup_ratio"] or 0.0)
    if kind == "constant" and (out.get("warmup_ratio") or values.get("warmup_steps")):
        out["warmup_steps"], out["warmup_ratio"] = 0, 0.0
        notices.append(
            "lr_scheduler_type=constant has no warmup in TRL; warmup_steps/warmup_ratio are "
            "dropped (use constant_with_warmup to warm up)"
        )


def _logging_and_saving(values: dict[str, Any], out: dict[str, Any], notices: list[str]) -> None:
    strategy = values.get("save_strategy", "steps")
    if strategy == "no":
        out["save_steps"] = 2**31 - 1
        notices.append(
            "save_strategy=no: no intermediate checkpoints; the final one is still written "
            "(--resume and the model directory need it)"
        )
    elif strategy != "steps":
        raise ConfigError(
            f"save_strategy={strategy!r} is not implemented; use steps (with save_steps) or no"
        )
    if values.get("activation_checkpointing"):
        out["gradient_checkpointing"] = True
    if "log_completions" in values:
        every = values.get("logging_steps", out.get("logging_steps", TRL_DEFAULTS["logging_steps"]))
        out["log_completions_steps"] = int(every) if values["log_completions"] else 0


def trl_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """TRL's defaults for the keys the TRL config ``values`` leaves unset, where TRL's differ
    from shoestring's, as GRPOConfig fields plus ``notices``. They sit below a preset and the
    file in the layers, so the config means what it means in TRL."""
    out: dict[str, Any] = {}
    applied = []
    for key, value in TRL_DEFAULTS.items():
        if key in values:
            continue
        if key == "log_completions":
            if "log_completions_steps" not in values:
                out["log_completions_steps"] = 0
                applied.append("log_completions=false")
            continue
        out[key] = value
        if key == "max_prompt_length":
            applied.append("max_prompt_length=None (TRL 1.x has none and never cuts prompts)")
        else:
            applied.append(f"{key}={value}")
    if values.get("use_peft"):
        for key, value in TRL_LORA_DEFAULTS.items():
            if key not in values:
                out[key] = _lora_value(key, value)
                applied.append(f"{key}={value if value is not None else 'peft default'}")
    if "bf16" not in values and str(values.get("dtype", "")) not in ("fp32", "bf16"):
        applied.append("bf16 unset (TRL: true): dtype=auto, bf16 where the host runs it fast")
    if values.get("beta") and "use_bias_correction_kl" not in values:
        applied.append(
            "use_bias_correction_kl (TRL: true) is not implemented: the KL term is the plain k3"
        )
    notices = ["TRL defaults for unset keys: " + "; ".join(applied)] if applied else []
    kept = [f"{k} ({why})" for k, why in TRL_DEFAULTS_NOT_APPLIED.items() if k not in values]
    if kept:
        notices.append("TRL defaults not applied to unset keys: " + "; ".join(kept))
    if "reward_funcs" not in values and "rewards" not in values:
        notices.append(
            "reward_funcs is not set: shoestring's rewards run (correctness 1.0 + format 0.1, "
            "judged by the scoring protocol)"
        )
    out["notices"] = notices
    return out


def _reward_name(name: str) -> str:
    """TRL script's reward spelling -> shoestring's: registry names and dotted paths."""
    if name in ("correctness", "format") or ":" in name:
        return name
    if name in TRL_SCRIPT_REWARDS:
        return f"trl:{name}"
    if "." in name:
        module, _, fn = name.rpartition(".")
        return f"{module}:{fn}"
    raise ConfigError(
        f"reward_funcs entry {name!r}: use one of TRL's {', '.join(TRL_SCRIPT_REWARDS)}, "
        "shoestring's correctness/format, or a dotted path pkg.module.function"
    )


def trl_key_table() -> str:
    """The Markdown table of every TRL key (docs/grpo.md carries it; a test keeps it equal)."""
    rows = ["| TRL key | from | here | what happens |", "|---|---|---|---|"]
    order = {"same": 0, "mapped": 1, "unsupported": 2, "ignored": 3}
    for key, e in sorted(TRL_KEYS.items(), key=lambda kv: (order[kv[1].kind], kv[0])):
        note = e.note
        if e.kind == "unsupported":
            accepted = ", ".join(json.dumps(a) for a in e.accept)
            verdict = "logged" if e.notice_only else "refused"
            note = f"{note}: accepted at {accepted}, otherwise {verdict}"
        default = TRL_DEFAULTS.get(key, TRL_LORA_DEFAULTS.get(key, ...))
        if default is not ...:
            note += f" (TRL default {json.dumps(default)} applied to a TRL config)"
        rows.append(f"| `{key}` | {e.source} | {e.kind} | {note} |")
    return "\n".join(rows)
