"""This module is one idea: the shoestring GPT model definition (config, decoder, LM head).

A nanoGPT-style decoder packaged as a Hugging Face causal LM. Why a ``transformers``
``PreTrainedModel`` instead of a bare ``nn.Module``: a run's ``model/`` directory must load with
``AutoModelForCausalLM.from_pretrained``, generate with ``model.generate`` (KV cache, left
padding, sampling) and wrap with ``peft`` exactly like a Qwen2 or Llama checkpoint, so every
downstream command treats "our" model and "their" model the same way.

The pieces live next door: the shape's fields (one table, which the run config, ``analyze`` and
the exporters read too) in ``shape.py``, attention and its variants (MHA, low-rank q/kv,
decoupled RoPE) in ``attention.py``, RoPE and its scaling in ``rope.py``, norms and the MLP in
``layers.py``, parameter counts in ``param_count.py``, the chunked loss in ``fused_ce.py``.

Importing this module registers the classes with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM`` (model type ``shoestring_gpt``), so ``from_pretrained`` needs no
``trust_remote_code``; ``shoestring.models.loading`` imports it for that reason.
"""

from __future__ import annotations

import math
from dataclasses import field, fields, make_dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# Relative imports, and shoestring's own modules only inside ``try``: this file and its
# neighbours are copied verbatim into every model directory (``models/portable.py``), where
# transformers loads them with ``trust_remote_code=True`` and shoestring may not be installed.
from .attention import ShoestringAttention, sdpa_mask
from .fused_ce import IGNORE_INDEX, chunked_linear_cross_entropy
from .layers import ShoestringMLP, make_norm
from .rope import rope_cos_sin, rope_factor
from .shape import HF_NAMES, ModelConfig, ShapeSizes, check_shape, shape_values

try:  # transformers >= 5: init helpers that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init  # type: ignore[assignment]

try:  # transformers >= 4.53: lets ``gradient_checkpointing_enable()`` wrap our blocks
    from transformers.modeling_layers import GradientCheckpointingLayer as _BlockBase
except ImportError:  # pragma: no cover - older transformers
    _BlockBase = nn.Module  # type: ignore[assignment,misc]

try:
    from transformers.cache_utils import Cache, DynamicCache
except ImportError:  # pragma: no cover - very old transformers
    Cache = DynamicCache = None  # type: ignore[assignment,misc]

__all__ = [
    "ShoestringGPTConfig",
    "ShoestringGPTModel",
    "ShoestringGPTForCausalLM",
    "lm_loss",
    "register_auto_classes",
]

MODEL_TYPE = "shoestring_gpt"


# ============================================================================ config

# The shape table's fields as a dataclass with no methods of its own, for the HF config to
# inherit: transformers makes every config class a dataclass, and its generated ``__eq__`` and
# ``fields()`` see only declared fields. The ``rope_scaling`` class attribute this declares also
# shadows the base class's ``rope_scaling`` -> ``rope_parameters`` property, so assigning our
# float never reaches that setter.
_ShapeFields = make_dataclass(
    "_ShapeFields",
    [(f.name, f.type, field(default=f.default)) for f in fields(ModelConfig)],
    bases=(ShapeSizes,),
    init=False,
    repr=False,
    eq=False,
)


class ShoestringGPTConfig(_ShapeFields, PretrainedConfig):
    """HF config of the shoestring GPT: the fields of the shape table (``shape.ModelConfig``).

    ``attribute_map`` exposes the HF standard names (``hidden_size`` ...) so generic tooling
    (``peft``, caches, ``bench``) that reads those names works without knowing our names.
    ``rope_scaling`` is a plain float (linear position interpolation factor, 1.0 = none); it is
    saved in HF's dict form (``to_dict``) and read in either form.
    """

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = dict(HF_NAMES)

    # A model built outside a run has no train.seq_len for max_seq_len=0 to mean.
    max_seq_len: int = 128
    use_cache: bool = True

    def __init__(self, use_cache: bool = True, **kwargs: Any) -> None:
        for f in fields(ModelConfig):
            value = kwargs.pop(f.name, getattr(type(self), f.name))  # class attr = default
            # ``config.json`` may hold rope_scaling as HF's dict; ``rope_factor`` reads both
            setattr(self, f.name, rope_factor(value) if f.name == "rope_scaling" else f.type(value))
        self.use_cache = bool(use_cache)
        super().__init__(tie_word_embeddings=self.tie_word_embeddings, **kwargs)
        check_shape(self)  # a bad checkpoint or shape fails here, before any weight is made

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kw: Any) -> ShoestringGPTConfig:
        """Build the HF config from a shoestring ``ModelConfig`` (``kw`` overrides/extends it).

        ``max_seq_len == 0`` in a ``ModelConfig`` means "use train.seq_len"; resolve the run
        config first (``build_run_config`` does) or pass ``max_seq_len=`` here.
        """
        return cls(**{**shape_values(cfg), **kw})

    def to_dict(self) -> dict[str, Any]:
        """The config as saved, with ``rope_scaling`` in Hugging Face's form: absent at 1.0,
        else ``{"rope_type": "linear", "factor": f}``.

        Why: code that parses ``config.json`` without this class (``AutoTokenizer`` where
        shoestring is not installed, vLLM, converters) reads ``rope_scaling`` as HF's dict and
        fails on a bare float.
        """
        out = super().to_dict()
        if self.rope_scaling == 1.0:
            out.pop("rope_scaling", None)
        else:
            out["rope_scaling"] = {"rope_type": "linear", "factor": self.rope_scaling}
        return out

    def to_model_config(self) -> ModelConfig:
        """The shoestring ``ModelConfig`` with this config's values (for run directories)."""
        return ModelConfig(**shape_values(self))


# ============================================================================ layers


class ShoestringBlock(_BlockBase):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)) (Llama names)."""

    def __init__(self, config: ShoestringGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = make_norm(config, config.d_model)
        self.self_attn = ShoestringAttention(config, layer_idx)
        self.post_attention_layernorm = make_norm(config, config.d_model)
        self.mlp = ShoestringMLP(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = True,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        a = self.self_attn(
            self.input_layernorm(hidden_states), rope, attn_mask, is_causal, past_key_values
        )
        # pre-norm: the residual stream itself is never normalised, only each branch's input
        hidden_states = hidden_states + self.resid_dropout(a)
        m = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.resid_dropout(m)


# ============================================================================ models


class ShoestringGPTPreTrainedModel(PreTrainedModel):
    """Shared HF plumbing: config class, init rule, SDPA-only attention."""

    config_class = ShoestringGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ShoestringBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range); residual output projections get the nanoGPT scaling
        std / sqrt(2 * n_layers) so the residual stream's variance does not grow with depth."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_shoestring_residual", False):
                # two residual adds per block (attention, MLP): 2 * n_layers in all
                std = std / math.sqrt(2 * self.config.n_layers)
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                _init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)


class ShoestringGPTModel(ShoestringGPTPreTrainedModel):
    """The decoder stack without the LM head (``AutoModel``): embeddings, blocks, final norm."""

    def __init__(self, config: ShoestringGPTConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = (
            nn.Embedding(config.max_seq_len, config.d_model)
            if config.position == "learned"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(ShoestringBlock(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config, config.d_model)
        self.rope_dim = config.rotary_dim
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _rope_cos_sin(
        self, position_ids: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [b, 1, T, rope_dim] for this model's RoPE settings (see ``rope.py``)."""
        return rope_cos_sin(
            position_ids,
            self.rope_dim,
            self.config.rope_theta,
            self.config.rope_scaling,
            device,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        bsz, q_len = hidden.shape[:2]  # hidden: [B, T, d_model]; T = new tokens only
        device = hidden.device

        if use_cache is None:
            # A plain forward (training, eval, scoring) builds no cache; generate() passes
            # use_cache explicitly, and a caller that hands in a cache clearly wants it used.
            use_cache = past_key_values is not None
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a recomputed block would append its keys to the cache twice
        if use_cache and past_key_values is None:
            if DynamicCache is None:  # pragma: no cover
                raise RuntimeError("this transformers version has no DynamicCache")
            past_key_values = DynamicCache()
        if past_key_values is not None and not isinstance(past_key_values, Cache):
            raise TypeError(
                "past_key_values must be a transformers Cache (e.g. DynamicCache), "
                f"got {type(past_key_values).__name__}; legacy tuples are not supported"
            )
        # tokens already cached: the new tokens' positions start here
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0

        # A 2D mask of all ones carries no information; dropping it keeps the fused path.
        if (
            attention_mask is not None
            and attention_mask.dim() == 2
            and not torch.compiler.is_compiling()
            and bool(attention_mask.all())
        ):
            attention_mask = None

        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # left padding: a row's positions count its real tokens only (pads get position 0)
            pos = attention_mask.long().cumsum(-1) - 1
            # the mask spans cache + input; only the last q_len positions are new tokens
            position_ids = pos.masked_fill(attention_mask == 0, 0)[:, -q_len:]

        if self.embed_positions is not None:
            if position_ids is None:
                if past_len + q_len > self.config.max_seq_len:
                    raise ValueError(
                        f"sequence of {past_len + q_len} tokens is longer than max_seq_len="
                        f"{self.config.max_seq_len} (learned positions cannot extrapolate)"
                    )
                # the same positions for every row: a slice of the table, no index tensor
                hidden = hidden + self.embed_positions.weight[past_len : past_len + q_len]
            else:
                hidden = hidden + self.embed_positions(position_ids)
        rope = None
        if self.rope_dim:
            if position_ids is None:
                # [1, T]: the same positions for every row, broadcast over the batch
                position_ids = torch.arange(past_len, past_len + q_len, device=device)[None]
            rope = self._rope_cos_sin(position_ids, device)  # once here, shared by every layer

        attn_mask, is_causal = sdpa_mask(attention_mask, q_len, past_len, device)
        hidden = self.drop(hidden)

        all_hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        for block in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden)  # HF convention: the input of each layer, then the end
            hidden = block(
                hidden,
                rope=rope,
                attn_mask=attn_mask,
                is_causal=is_causal,
                past_key_values=past_key_values,
            )
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class ShoestringGPTForCausalLM(ShoestringGPTPreTrainedModel, GenerationMixin):
    """Decoder + LM head (``AutoModelForCausalLM``); the head is tied to the token embedding
    when ``tie_word_embeddings`` (nanoGPT's weight tying), which safetensors saves once."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ShoestringGPTConfig) -> None:
        super().__init__(config)
        self.model = ShoestringGPTModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        targets: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple[Any, ...]:
        """Run the model; the loss uses ``labels`` (HF: shifted here) or ``targets`` (nanoGPT:
        already aligned with ``input_ids``, as the trainer's x/y windows are). Both ignore -100.

        ``logits_to_keep`` (generation sets 1) computes the head only for the last positions;
        with a loss the head runs on every position and the returned logits are sliced.
        ``num_items_in_batch`` (HF Trainer, gradient accumulation) turns the mean into
        sum / num_items_in_batch. ``return_logits=False`` with a loss (the trainer's path)
        computes head and loss chunk by chunk without materialising the logits
        (``fused_ce.chunked_linear_cross_entropy``: same loss and gradients, less time and
        memory) and returns ``logits=None``.
        """
        if labels is not None and targets is not None:
            raise ValueError("pass labels (shifted inside) or targets (pre-aligned), not both")
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if labels is not None:
            # Shift the labels, not the logits: no copy of the [B, T, V] tensor.
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        loss = logits = None
        if targets is None:
            # no loss: slice before the head, so generation pays for [B, 1, V] only
            logits = self.lm_head(_keep_last(hidden, logits_to_keep))
        elif not return_logits and num_items_in_batch is None:
            # training: head + loss per chunk, the [B, T, V] logits never exist at once
            loss = chunked_linear_cross_entropy(hidden, self.lm_head.weight, targets)
        else:
            logits = self.lm_head(hidden)  # [B, T, V]
            loss = lm_loss(logits, targets, num_items_in_batch)
            logits = _keep_last(logits, logits_to_keep)
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
        )
        return result.to_tuple() if return_dict is False else result


def _keep_last(x: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    if isinstance(logits_to_keep, int):
        return x if logits_to_keep == 0 else x[:, -logits_to_keep:]  # 0 = HF's "keep all"
    return x[:, logits_to_keep]  # a tensor of positions to keep


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Token cross-entropy over positions whose target is not -100.

    Upcasts to fp32 only when the logits are not fp32 already (under bf16 autocast
    ``cross_entropy`` computes in fp32 anyway), so the fp32 path makes no extra copy.
    """
    flat = logits.reshape(-1, logits.size(-1))  # [B, T, V] -> [B*T, V]
    if flat.dtype != torch.float32:
        flat = flat.float()
    flat_t = targets.reshape(-1).to(flat.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat, flat_t, ignore_index=IGNORE_INDEX)
    # sum, then divide by the tokens of the whole accumulated batch: every micro-batch's
    # tokens weigh the same, however many each holds
    total = F.cross_entropy(flat, flat_t, ignore_index=IGNORE_INDEX, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


# ============================================================================ registration


def register_auto_classes() -> None:
    """Register with the HF Auto classes (idempotent; runs at import of this module)."""
    AutoConfig.register(MODEL_TYPE, ShoestringGPTConfig, exist_ok=True)
    AutoModel.register(ShoestringGPTConfig, ShoestringGPTModel, exist_ok=True)
    AutoModelForCausalLM.register(ShoestringGPTConfig, ShoestringGPTForCausalLM, exist_ok=True)


# Only the package registers: a model directory's copy loaded with trust_remote_code must not
# replace shoestring's classes for ``shoestring_gpt`` in a process that has both.
if __name__ == "shoestring.models.gpt":
    register_auto_classes()
