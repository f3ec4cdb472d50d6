"""``GRPOConfig``: the options of ``shoestring grpo``, named and meant as in TRL's ``GRPOConfig``.

This module is one idea: the GRPO config - its fields, their layers and the checks across them.

Why TRL's names: users move configurations between TRL and shoestring, and the original study
published its settings in TRL's vocabulary (``num_generations``, ``beta``, ``loss_type`` ...).
A field that exists in TRL means the same thing here; the few TRL does not have (LoRA, the
data spec, the retention penalty, the held-out evaluation) are shoestring's own and say so.

Batch semantics follow TRL: ``per_device_train_batch_size`` counts *completions* per
micro-batch, so one optimizer step sees ``per_device_train_batch_size *
gradient_accumulation_steps`` completions, i.e. that number divided by ``num_generations``
distinct prompts, and the product must be divisible by ``num_generations``.

Configs are built in layers - defaults, ``base`` dict, preset
(``src/shoestring/presets/grpo/*.json``), ``key=value`` overrides - and validated once, with
the nearest valid key suggested on a typo, as for ``shoestring train``. A config file written
for TRL (its ``trl grpo`` YAML, with ``output_dir``, ``bf16``, ``use_peft`` ...) is translated by
:mod:`shoestring.rl.trl_config`, with TRL's defaults below the preset for the keys it leaves
unset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.cli_options import read_resume_config
from shoestring.config import (
    ConfigError,
    _coerce,
    _field_type,
    apply_dict,
    load_named_preset,
    nearest_key,
    opt,
    parse_override,
    preset_names,
    run_dict,
    validate,
)
from shoestring.rl.trl_config import is_trl_config, translate_trl, trl_defaults
from shoestring.rundir.trackers import check_trackers
from shoestring.scoring.protocols import PROTOCOLS

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "luspo", "cispo", "sapo", "vespo")  # TRL 1.16's
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
SCALE_REWARDS = ("group", "batch", "none")
PROTOCOL_CHOICES = ("auto", *PROTOCOLS)
#: The fields that say how this process runs the config, not what is trained.
PLACEMENT_KEYS = ("resume", "quiet")


@dataclass
class GRPOConfig:
    """Everything ``shoestring grpo`` needs; written to ``config.json`` in the run directory."""

    # --- model and data (shoestring's own)
    model_name_or_path: str = opt("", "HF model dir, shoestring run dir or Hub name (required)")
    dataset: str = opt(
        "gsm8k", "training prompts: 'synthetic:LEVEL' (1-3), 'gsm8k' (shared data) or 'gsm8k:PATH'"
    )
    dataset_slice: str | None = opt(None, "'START:END' rows of the dataset (None = all)")
    dataset_size: int = opt(
        0,
        "problems to draw (synthetic: generated, default 5000; gsm8k: first N after slice)",
        min=0,
    )
    protocol: str = opt(
        "auto",
        "scoring protocol of prompts, rewards and held-out accuracy (scoring.protocols): "
        "auto = chat-cot with a chat template, else qa ('Question: ...\\nAnswer:', '#### N')",
        choices=PROTOCOL_CHOICES,
    )
    stop_strings: list[str] | None = opt(
        None, "a completion ends at any of these (None = the protocol's stop strings)"
    )
    trust_remote_code: bool = opt(False, "allow models that ship their own code (TRL name)")

    # --- generation (TRL names)
    num_generations: int = opt(8, "completions sampled per prompt (the group size)", min=1)
    temperature: float = opt(1.0, "sampling temperature of the completions", min=0.0)
    top_p: float = opt(1.0, "nucleus sampling mass (1 = off)", min=0.0, max=1.0)
    top_k: int = opt(0, "sample among the k most likely tokens (0 = off)", min=0)
    max_prompt_length: int | None = opt(
        512, "prompts longer than this keep their last tokens (None = no limit)", min=1
    )
    max_completion_length: int = opt(256, "tokens generated per completion at most", min=1)

    # --- optimisation (TRL / TrainingArguments names)
    learning_rate: float = opt(1e-6, "peak AdamW learning rate", min=0.0, max=10.0)
    per_device_train_batch_size: int = opt(8, "completions per micro-batch", min=1)
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", min=1)
    num_train_epochs: float = opt(3.0, "passes over the prompts (fractions allowed)", min=0.0)
    max_steps: int = opt(-1, "optimizer steps; -1 = from num_train_epochs", min=-1)
    warmup_steps: int = opt(0, "linear warmup steps", min=0)
    warmup_ratio: float = opt(
        0.0, "warmup as a fraction of the total steps, used when warmup_steps=0 (TRL name)", min=0.0
    )
    lr_scheduler_type: str = opt(
        "linear", "decay after warmup", choices=("linear", "cosine", "constant")
    )
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    adam_beta1: float = opt(0.9, "AdamW beta1", min=0.0, max=1.0)
    adam_beta2: float = opt(0.999, "AdamW beta2", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 = off", min=0.0)
    seed: int = opt(42, "seed of data order, sampling and LoRA init", min=0)
    dataloader_num_workers: int = opt(
        0,
        "kept so the original study's presets load unchanged; prompts are in memory, so it "
        "changes nothing",
        min=0,
    )
    disable_dropout: bool = opt(True, "turn dropout off so log-probs are deterministic")
    share_prompt_prefix: bool = opt(
        True,
        "run each prompt once per group in the training forward and repeat its KV cache "
        "(same log-probs, fewer tokens; micro-batches must hold whole groups)",
    )
    gradient_checkpointing: bool = opt(False, "recompute activations in backward (less memory)")

    # --- GRPO loss (TRL names and meanings)
    beta: float = opt(0.0, "KL coefficient to the reference model; 0 = no reference pass", min=0.0)
    epsilon: float = opt(0.2, "lower clipping range of the policy ratio", min=0.0)
    epsilon_high: float | None = opt(None, "upper clip (None = epsilon); cispo: ratio cap", min=0.0)
    num_iterations: int = opt(1, "optimizer steps per generated batch (mu)", min=1)
    loss_type: str = opt(
        "dapo",
        "TRL's: grpo, bnpo, dr_grpo, dapo, luspo (clipped surrogate, aggregated differently), "
        "cispo (capped detached ratio), sapo (soft gate), vespo (Gamma sequence weight)",
        choices=LOSS_TYPES,
    )
    importance_sampling_level: str = opt(
        "token", "policy ratio per token or per sequence (GSPO)", choices=IMPORTANCE_SAMPLING_LEVELS
    )
    sapo_temperature_pos: float = opt(1.0, "sapo: gate temperature where advantage > 0", min=1e-6)
    sapo_temperature_neg: float = opt(1.05, "sapo: gate temperature where advantage <= 0", min=1e-6)
    vespo_k_pos: float = opt(2.0, "vespo: power k of the weight where advantage >= 0", min=0.0)
    vespo_lambda_pos: float = opt(3.0, "vespo: decay lambda where advantage >= 0", min=0.0)
    vespo_k_neg: float = opt(3.0, "vespo: power k of the weight where advantage < 0", min=0.0)
    vespo_lambda_neg: float = opt(2.0, "vespo: decay lambda where advantage < 0", min=0.0)
    scale_rewards: str = opt(
        "group",
        "divide advantages by the std of the group, the batch, or not",
        choices=SCALE_REWARDS,
    )
    mask_truncated_completions: bool = opt(
        False, "completions cut at max_completion_length get no loss (DAPO)"
    )

    # --- rewards
    rewards: list[str] = opt(
        ["correctness", "format"], "reward functions: correctness, format or module:function"
    )
    reward_weights: list[float] | None = opt(
        None, "weight per reward (None = correctness 1.0, format 0.1, others 1.0)"
    )

    # --- LoRA and retention (shoestring's own)
    lora_rank: int = opt(0, "LoRA rank; 0 = full fine-tune", min=0)
    lora_alpha: float = opt(16.0, "LoRA alpha (scale = alpha / rank)", min=0.0)
    lora_dropout: float = opt(0.0, "dropout inside the LoRA adapters", min=0.0, max=1.0)
    lora_target_modules: list[str] = opt(
        ["all-linear"], "module names to adapt ('all-linear' = every linear except the head)"
    )
    merge_lora: bool = opt(True, "merge the adapters into the weights of the final model/")
    retention_penalty: float = opt(
        0.0, "lambda of lambda*||theta - theta_ref||^2 over the trained parameters", min=0.0
    )
    retention_reference: str | None = opt(
        None, "model dir for theta_ref of the retention penalty (None = the starting weights)"
    )

    # --- host, logging, checkpoints
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt(
        "auto",
        "auto = bf16 autocast where the host computes bf16 fast, else fp32",
        choices=("auto", "fp32", "bf16"),
    )
    threads: int = opt(0, "torch threads; 0 = physical cores", min=0)
    logging_steps: int = opt(1, "write a metrics line every N steps", min=1)
    log_completions_steps: int = opt(10, "log sample completions every N steps (0 = never)", min=0)
    report_to: list[str] = opt(
        ["none"],
        "trackers that get metrics.jsonl's numbers under TRL's names (TRL name): tensorboard "
        "(RUN/tensorboard), wandb (offline without network), none",
    )
    num_completions_to_print: int = opt(4, "completions per samples record", min=1)
    save_steps: int = opt(50, "resumable checkpoint every N steps (and at the end)", min=1)
    save_total_limit: int = opt(2, "step checkpoints kept", min=1)
    eval_problems: int = opt(
        0, "greedy held-out accuracy before and after training on N problems (0 = off)", min=0
    )
    eval_dataset: str | None = opt(
        None, "held-out problems (None = the test split of the training dataset's family)"
    )
    eval_exclude_file: str | None = opt(
        None, "JSONL whose questions never enter the held-out set (e.g. a pretraining corpus)"
    )
    warn_steps: int = opt(2, "first steps measured for the 'this cannot learn' warning", min=1)
    preset: str = opt("", "preset this config started from (informational)")
    output_dir: str | None = opt(
        None,
        "run directory (TRL name; --out/--name set it; an existing non-empty one is refused: "
        "resume it or name another; None = runs/grpo-<time>)",
    )
    resume: str = opt(
        "", "run directory to continue from its newest checkpoint ('' = a new run; --resume)"
    )
    quiet: bool = opt(False, "no progress bar or log lines on stderr (log.txt keeps them)")
    notices: list[str] = opt(
        [], "what reading a TRL config did (keys ignored, TRL defaults); logged at the start"
    )

    def run_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the config without how this process runs it (``resume``,
        ``quiet``), so a copied ``config.json`` used as ``--config`` starts a new run."""
        return run_dict(self, PLACEMENT_KEYS)

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def upper_epsilon(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def completions_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> int:
        return self.completions_per_step // self.num_generations

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps of a run of ``total_steps``: ``warmup_steps``, else TrainingArguments'
        ``ceil(warmup_ratio * total_steps)``."""
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)

    def total_steps(self, n_prompts: int) -> int:
        """Optimizer steps of a run over ``n_prompts`` prompts: ``max_steps``, or
        ``num_train_epochs`` passes of generation batches, each used ``num_iterations`` times."""
        if self.max_steps > 0:
            return self.max_steps
        gens_per_epoch = n_prompts / self.prompts_per_step
        return max(1, math.ceil(self.num_train_epochs * gens_per_epoch)) * self.num_iterations

    def resolved(self) -> GRPOConfig:
        """Validate ranges and the cross-field rules TRL enforces, with the fix in the message."""
        validate(self)
        if self.completions_per_step % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size * gradient_accumulation_steps = "
                f"{self.completions_per_step} must be divisible by num_generations="
                f"{self.num_generations} (each prompt's group is trained together); e.g. set "
                f"per_device_train_batch_size={self.num_generations}"
            )
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"reward_weights has {len(self.reward_weights)} entries but rewards has "
                f"{len(self.rewards)} ({', '.join(self.rewards)}); give one weight per reward"
            )
        if not self.rewards:
            raise ConfigError('rewards is empty; use e.g. rewards=["correctness","format"]')
        if self.dataset_slice is not None:
            parse_slice(self.dataset_slice)
        self.report_to = check_trackers(self.report_to) or ["none"]  # a name or a list
        if self.max_steps == 0:
            raise ConfigError(
                "max_steps=0 trains nothing; use -1 (from epochs) or a positive number"
            )
        return self


def parse_slice(text: str) -> tuple[int | None, int | None]:
    """``'START:END'`` (either side may be empty) as a pair for ``list[start:end]``."""
    if ":" not in text:
        raise ConfigError(f"dataset_slice={text!r} must look like START:END, e.g. 0:1000")
    a, b = text.split(":", 1)
    try:
        return (int(a) if a.strip() else None, int(b) if b.strip() else None)
    except ValueError:
        raise ConfigError(f"dataset_slice={text!r}: START and END must be integers") from None


# ----------------------------------------------------------------------------- presets


def list_grpo_presets() -> list[str]:
    return preset_names("grpo")


def load_grpo_preset(name: str) -> dict[str, Any]:
    """A named GRPO preset as a flat dict of fields (``description``/``notes`` dropped)."""
    return load_named_preset("grpo", name, "GRPO preset")


def apply_grpo_override(cfg: GRPOConfig, text: str, trl: bool = False) -> None:
    """One ``key=value`` (``grpo.key=value`` also accepted), nearest key suggested on a typo;
    with ``trl`` a TRL key (``bf16=false``) is translated as in a TRL config file."""
    key, value = parse_override(text)
    if key.startswith("grpo."):
        key = key[5:]
    names = [f.name for f in dataclasses.fields(cfg)]
    if trl and key not in names:
        # lora_r alone means "LoRA with this rank", as it does next to the file's use_peft
        values = {"use_peft": True, key: value} if key == "lora_r" else {key: value}
        translated = translate_trl(values, set(names))
        cfg.notices = [*cfg.notices, *translated.pop("notices")]
        apply_dict(cfg, translated)
        return
    if key not in names:
        close = nearest_key(key, names)
        hint = f"did you mean '{close}'?" if close else "see `shoestring grpo --help-config`"
        raise ConfigError(f"unknown GRPO config key '{key}'; {hint}")
    setattr(cfg, key, _coerce(value, _field_type(GRPOConfig, key), key))


def grpo_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
    trl: bool | None = None,
) -> GRPOConfig:
    """Layer defaults < preset < ``base`` < overrides, then validate: every command's order.

    ``base`` is a dict of fields (a config file, or a run's config.json on resume) that refines
    the preset; ``overrides`` are ``key=value`` strings whose value is parsed as JSON when it
    is JSON. ``base`` is read as a TRL config (:mod:`shoestring.rl.trl_config`: TRL keys
    translated, TRL's defaults for the keys it leaves unset, the rest logged) when ``trl`` is
    true, or when ``trl`` is None and it holds a key only TRL has.
    """
    cfg = GRPOConfig()
    names = {f.name for f in dataclasses.fields(cfg)}
    if trl is None:
        trl = bool(base) and is_trl_config(base or {}, names)
    notices: list[str] = []
    if trl:  # TRL's defaults sit below the preset and the file
        defaults = trl_defaults(base or {})
        notices = defaults.pop("notices")
        apply_dict(cfg, defaults)
    if preset:
        apply_dict(cfg, load_grpo_preset(preset))
        cfg.preset = preset
    if trl:
        base = translate_trl(base or {}, names)
        base["notices"] = notices + base["notices"]
    if base:
        apply_dict(cfg, _upgrade(base))
    for text in overrides:
        apply_grpo_override(cfg, text, trl=trl)
    return cfg.resolved()


def config_from_dict(values: dict[str, Any]) -> GRPOConfig:
    """Rebuild a config from a run's ``config.json`` (validated)."""
    return apply_dict(GRPOConfig(), _upgrade(values)).resolved()


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GRPOConfig:
    """The config an interrupted run was started with (its ``config.json``), plus ``key=value``
    overrides (e.g. more ``max_steps``), set to continue that run (``resume``)."""
    # a train run's config is not a GRPO config: one line naming the kind, not an unknown key
    cfg = grpo_config(base=read_resume_config(run_dir, "grpo"), overrides=overrides)
    cfg.resume = str(run_dir)
    return cfg


#: ``prompt_format`` (a stored config's prompt key) -> the protocol that prompts the same way.
OLD_PROMPT_FORMATS = {"auto": "auto", "chat": "chat-cot", "plain": "qa"}


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """A stored ``config.json`` may name ``prompt_format`` rather than ``protocol``; it maps onto
    the protocol that prompts the same way (chat -> chat-cot, plain -> qa), so such runs resume."""
    values = dict(values)
    if "prompt_format" in values:
        old = values.pop("prompt_format")
        values.setdefault("protocol", OLD_PROMPT_FORMATS.get(old, old))
    return values


__all__ = [
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "PLACEMENT_KEYS",
    "PROTOCOL_CHOICES",
    "SCALE_REWARDS",
    "GRPOConfig",
    "config_from_dict",
    "grpo_config",
    "list_grpo_presets",
    "load_grpo_preset",
    "parse_slice",
    "resume_config",
]
