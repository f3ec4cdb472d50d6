"""The training run's configuration: model shape, data, training and hybrid settings.

``RunConfig`` is what ``shoestring train`` (and analyze, search and quickstart, which build
train runs) is asked; it is written to ``config.json``. How a config is layered and validated
- typed ``opt`` fields, presets, files, ``--set`` overrides - is :mod:`shoestring.config`,
shared by every command's config. The model section is the GPT's shape table,
:class:`shoestring.models.shape.ModelConfig`, which the model itself reads too; that import
puts this module in the models layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoestring.config import (
    ConfigError,
    apply_dict,
    apply_override,
    load_named_preset,
    opt,
    parse_override,
    preset_names,
    read_config_file,
    validate,
)
from shoestring.models.shape import ModelConfig, check_shape


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
    optimizer: str = opt(
        "adamw",
        "adamw, or muon: Muon for the hidden matrices, AdamW for embeddings, head, norms, biases",
        choices=("adamw", "muon"),
    )
    muon_lr: float = opt(
        0.0,
        "Muon's peak lr; 0 = train.lr (update RMS matched to AdamW's, Moonshot 2025)",
        min=0.0,
        max=10.0,
    )
    muon_momentum: float = opt(
        0.95, "Muon's Nesterov momentum (Keller Jordan's default)", min=0.0, max=0.999
    )
    weight_decay: float = opt(0.1, "decoupled decay, applied to matrices only", min=0.0)
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
        "compute dtype; auto = bf16 autocast where the device computes bf16 natively (CUDA "
        "with bf16, or a CPU with AVX512-BF16 or AMX), else fp32",
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
    report_to: str = opt(
        "none", "a tracker that also gets the metrics", choices=("none", "tensorboard", "wandb")
    )


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
        "coast",
        "update predictor (docs/hybrid.md)",
        choices=("coast", "linear", "lowrank", "leap"),
    )
    verify: bool = opt(
        True,
        "keep a predict phase's weights only if the loss of a batch it skipped went down "
        "(held-out check, Leap+Verify); else roll back",
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
        8,
        "lowrank: updates kept (memory = history x parameters); leap: real steps between "
        "the two checkpoints of its finite difference",
        min=2,
        max=64,
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
        check_shape(self.model, where="model.")
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


# ----------------------------------------------------------------------------- presets


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
