"""The GPT's shape, written once: every field with its default, range, help and Hugging Face name.

Why one table: the run config (``RunConfig.model``), the model's Hugging Face config
(``gpt.ShoestringGPTConfig``), the cost formulas (``analyze/cost.py``) and the exporters all read
these fields, so adding a shape field is one edit here. Field names are DeepSeek's where
DeepSeek has one (``q_lora_rank``, ``kv_lora_rank``, ``qk_rope_head_dim``, ``v_head_dim``); the
``hf`` name is what Hugging Face's standard configs call the same thing.

This file ships in every model directory next to ``gpt.py`` (``portable.MODELING_FILES``), so
it needs only the standard library and imports shoestring only inside ``try``. Its annotations
are evaluated (no ``from __future__ import annotations``): a field's ``type`` is the class that
converts a value read from ``config.json``.
"""

from dataclasses import dataclass, field, fields
from typing import Any

try:
    from shoestring.config import ConfigError
except ImportError:  # a model directory's copy, loaded where shoestring is not installed
    ConfigError = ValueError  # type: ignore[misc,assignment]

__all__ = ["HF_NAMES", "ModelConfig", "ShapeSizes", "check_shape", "shape_field", "shape_values"]


def shape_field(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    hf: str | None = None,
) -> Any:
    """A field with the metadata ``shoestring.config`` validates and lists (what its ``opt``
    makes; this file cannot import ``opt``), plus ``hf``: the field's Hugging Face name."""
    meta = {
        "help": f"{help} (HF: {hf})" if hf else help,
        "min": min,
        "max": max,
        "choices": choices,
        "hf": hf,
    }
    return field(default=default, metadata=meta)


class ShapeSizes:
    """The sizes that follow from the shape fields, for every class that has those fields."""

    d_model: int
    n_heads: int
    qk_rope_head_dim: int
    v_head_dim: int
    position: str

    @property
    def head_dim(self) -> int:
        """Per-head width of the content ("nope") part of q/k: d_model // n_heads."""
        return self.d_model // self.n_heads

    @property
    def qk_head_dim(self) -> int:
        """Per-head width of q and k as SDPA sees them (content + decoupled RoPE dims)."""
        return self.head_dim + self.qk_rope_head_dim

    @property
    def value_head_dim(self) -> int:
        """Per-head width of v (``v_head_dim``, or the head dim when it is 0)."""
        return self.v_head_dim or self.head_dim

    @property
    def rotary_dim(self) -> int:
        """Dims RoPE rotates per head: the decoupled dims, else the whole head; 0 = learned."""
        if self.position != "rope":
            return 0
        return self.qk_rope_head_dim or self.head_dim


@dataclass
class ModelConfig(ShapeSizes):
    """Shape and attention switches of the shoestring GPT (DeepSeek field names)."""

    vocab_size: int = shape_field(
        16000, "vocabulary size (set from the tokenizer when data is prepared)", min=2
    )
    d_model: int = shape_field(256, "residual width", min=8, hf="hidden_size")
    n_layers: int = shape_field(4, "number of transformer blocks", min=1, hf="num_hidden_layers")
    n_heads: int = shape_field(4, "attention heads", min=1, hf="num_attention_heads")
    d_ff: int = shape_field(1024, "MLP hidden width", min=1, hf="intermediate_size")
    max_seq_len: int = shape_field(
        0,
        "longest sequence the model accepts; 0 = train.seq_len",
        min=0,
        hf="max_position_embeddings",
    )
    q_lora_rank: int = shape_field(
        0, "rank of the low-rank query projection; 0 = full projection", min=0
    )
    kv_lora_rank: int = shape_field(
        0, "rank of the shared low-rank key/value projection; 0 = full", min=0
    )
    qk_rope_head_dim: int = shape_field(
        0,
        "decoupled RoPE dims per head added to q/k (DeepSeek style); 0 = rotate the whole head",
        min=0,
    )
    v_head_dim: int = shape_field(0, "value dims per head; 0 = d_model / n_heads", min=0)
    position: str = shape_field("learned", "position encoding", choices=("learned", "rope"))
    rope_theta: float = shape_field(10000.0, "RoPE base frequency", min=1.0)
    rope_scaling: float = shape_field(1.0, "linear RoPE scaling factor (1 = none)", min=1.0)
    attention_bias: bool = shape_field(False, "bias terms on the attention projections")
    norm: str = shape_field("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    norm_eps: float = shape_field(1e-5, "epsilon of the norm layers", min=0.0, max=1.0)
    mlp: str = shape_field("gelu", "MLP type", choices=("gelu", "swiglu"))
    tie_word_embeddings: bool = shape_field(True, "share input embedding and output head weights")
    dropout: float = shape_field(0.0, "dropout probability", min=0.0, max=1.0)
    initializer_range: float = shape_field(0.02, "std of the normal weight init", min=0.0)


#: Hugging Face's standard name -> ours, for the fields that have one (``hidden_size`` ...).
HF_NAMES: dict[str, str] = {
    f.metadata["hf"]: f.name for f in fields(ModelConfig) if f.metadata["hf"]
}

#: Must be >= 1 in any config; the run config's own ranges (``min``) are tighter.
_SIZES = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff")
#: The attention switches where 0 means "off".
_SWITCHES = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim")


def shape_values(config: Any) -> dict[str, Any]:
    """Every shape field of ``config`` (a ``ModelConfig``, the HF config, ...) by name."""
    return {f.name: getattr(config, f.name) for f in fields(ModelConfig)}


def check_shape(config: Any, where: str = "") -> None:
    """The rules a shape must keep, checked for the run config (``where="model."``) and for
    every HF config built or loaded, so a bad shape fails before any weight is made."""
    w = where
    for f in fields(ModelConfig):
        choices, value = f.metadata["choices"], getattr(config, f.name)
        if choices and value not in choices:
            raise ConfigError(
                f"{w}{f.name}={value!r} is not allowed; choose {' or '.join(choices)}"
            )
    for name in _SIZES:
        if getattr(config, name) < 1:
            raise ConfigError(f"{w}{name}={getattr(config, name)} must be >= 1")
    for name in _SWITCHES:
        if getattr(config, name) < 0:
            raise ConfigError(f"{w}{name}={getattr(config, name)} must be >= 0 (0 = off)")
    d, h, rope = config.d_model, config.n_heads, config.qk_rope_head_dim
    if d % h:
        raise ConfigError(f"{w}d_model={d} must be divisible by {w}n_heads={h}")
    if rope and config.position != "rope":
        raise ConfigError(
            f"{w}qk_rope_head_dim={rope} needs {w}position='rope' (got position="
            f"{config.position!r}); set position=rope or qk_rope_head_dim=0"
        )
    if rope % 2:
        raise ConfigError(f"{w}qk_rope_head_dim={rope} must be even")
    if config.position == "rope" and rope == 0 and (d // h) % 2:
        # rotate_half pairs dim i with dim i + head_dim / 2
        raise ConfigError(
            f"RoPE on the whole head needs an even head dim; {w}d_model/{w}n_heads = {d // h}"
        )
    if config.position == "learned" and config.max_seq_len < 1:
        raise ConfigError(
            f"position='learned' needs {w}max_seq_len >= 1 (the size of the position table); "
            "resolve the run config (max_seq_len=0 means train.seq_len) or pass max_seq_len"
        )
    if config.rope_scaling <= 0:
        raise ConfigError(f"{w}rope_scaling={config.rope_scaling} must be > 0 (1.0 = no scaling)")
    if not 0.0 <= config.dropout <= 1.0:
        raise ConfigError(f"{w}dropout={config.dropout} must be in [0, 1]")
