"""``shoestring export --to llama``: a shoestring GPT that is exactly Llama, as a
``LlamaForCausalLM`` directory.

Why: a ``LlamaForCausalLM`` directory needs no custom code at all, so vLLM, llama.cpp's
converter, TGI, MLX and every fine-tuning tool take it as is. Only a variant that computes what
Llama computes can be exported: RoPE on the whole head (no learned positions, no decoupled RoPE
dims), RMSNorm, SwiGLU, full-rank q/k/v with the default value width, no biases. Any other
variant is refused with the reason, never approximated. The parameter names already are Llama's
(``model.layers.N.self_attn.q_proj`` ...), so the export is a config translation plus a strict
``load_state_dict``; :func:`max_logit_difference` then checks the result on a probe input.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel

from shoestring.errors import UserError
from shoestring.models.gpt import MODEL_TYPE, ShoestringGPTForCausalLM
from shoestring.models.loading import quiet_hf_progress
from shoestring.models.portable import make_portable, special_token_ids
from shoestring.models.shape import HF_NAMES

__all__ = [
    "ExportReport",
    "export_llama",
    "llama_config_from",
    "llama_refusals",
    "load_source_model",
    "max_logit_difference",
    "resolve_model_dir",
]

#: files of a model directory that belong to the tokenizer (copied next to an export)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


@dataclass
class ExportReport:
    """What an export wrote and how close its logits are to the source's."""

    source: Path
    out: Path
    target: str
    max_abs_logit_diff: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"exported {self.source} -> {self.out} ({self.target})",
            f"check: max |logit difference| on a probe input = {self.max_abs_logit_diff:.3g}",
            *self.notes,
        ]


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a run directory (``RUN/model``) or a model directory itself."""
    p = Path(path)
    if (p / "model" / "config.json").is_file():  # a run directory (its config.json is the run's)
        return p / "model"
    if (p / "config.json").is_file():
        return p
    raise UserError(
        f"{p} is neither a model directory (config.json) nor a run directory with model/; "
        "give a finished run's directory or its model/ folder"
    )


def llama_refusals(config: PretrainedConfig) -> list[str]:
    """Why this shoestring GPT is not exactly Llama (empty list: it is)."""
    c = config
    reasons = []
    if c.position != "rope":
        reasons.append(f"position={c.position!r}: learned position embeddings (Llama uses RoPE)")
    if c.qk_rope_head_dim:
        reasons.append(
            f"qk_rope_head_dim={c.qk_rope_head_dim}: decoupled RoPE dims (Llama rotates the "
            "whole head)"
        )
    if c.q_lora_rank or c.kv_lora_rank:
        reasons.append(
            f"q_lora_rank={c.q_lora_rank}, kv_lora_rank={c.kv_lora_rank}: low-rank q/kv "
            "projections (Llama's are full rank)"
        )
    if c.v_head_dim and c.v_head_dim != c.head_dim:
        reasons.append(f"v_head_dim={c.v_head_dim} differs from the head dim {c.head_dim}")
    if c.norm != "rmsnorm":
        reasons.append(f"norm={c.norm!r} (Llama uses RMSNorm)")
    if c.mlp != "swiglu":
        reasons.append(f"mlp={c.mlp!r} (Llama uses SwiGLU)")
    if c.attention_bias:
        reasons.append("attention_bias=true (Llama's projections have no biases)")
    return reasons


def llama_config_from(config: PretrainedConfig, special: dict[str, int]) -> LlamaConfig:
    """The ``LlamaConfig`` that computes what this (Llama-exact) shoestring config computes."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    if config.rope_scaling != 1.0:
        rope = {**rope, "rope_type": "linear", "factor": float(config.rope_scaling)}
    return LlamaConfig(
        # hidden_size, num_hidden_layers, ...: the shape fields that have an HF name
        **{hf: getattr(config, name) for hf, name in HF_NAMES.items()},
        vocab_size=config.vocab_size,
        num_key_value_heads=config.n_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        rms_norm_eps=config.norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=config.initializer_range,
        bos_token_id=special.get("bos_token_id"),
        eos_token_id=special.get("eos_token_id"),
        pad_token_id=special.get("pad_token_id"),
    )


def load_source_model(model_dir: Path) -> ShoestringGPTForCausalLM:
    """The shoestring GPT in ``model_dir`` (fp32, eval), or a ``UserError`` saying why not."""
    model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get(
        "model_type"
    )
    if model_type != MODEL_TYPE:
        raise UserError(
            f"{model_dir} holds a {model_type!r} model, not a shoestring GPT "
            f"({MODEL_TYPE}); export converts shoestring models (a {model_type} directory "
            "already loads in transformers as it is)"
        )
    with quiet_hf_progress():
        model = ShoestringGPTForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()


def probe_ids(vocab_size: int, length: int = 24) -> torch.Tensor:
    """A fixed token sequence spread over the vocabulary (deterministic, no tokenizer needed)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, length), generator=g)


@torch.no_grad()
def max_logit_difference(a: PreTrainedModel, b: Any, ids: torch.Tensor) -> float:
    """max |logits_a - logits_b| on ``ids``; ``b`` is a model or a function ids -> logits."""
    la = a(ids).logits.float()
    lb = b(ids) if not isinstance(b, torch.nn.Module) else b(ids).logits
    return float((la - lb.float()).abs().max())


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def prepare_out(out: Path, overwrite: bool) -> Path:
    """A fresh hidden sibling of ``out`` to write into (renamed into place when complete)."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit_out(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def export_llama(source: str | Path, out: str | Path, overwrite: bool = False) -> ExportReport:
    """Write ``out`` as a ``LlamaForCausalLM`` directory with the source's tokenizer."""
    model_dir = resolve_model_dir(source)
    model = load_source_model(model_dir)
    reasons = llama_refusals(model.config)
    if reasons:
        raise UserError(
            "this model is not exactly Llama, so --to llama would change what it computes: "
            + "; ".join(reasons)
            + ". It still loads anywhere with trust_remote_code=True (its directory ships "
            "the modeling code)"
        )
    special = special_token_ids(model_dir)
    llama = LlamaForCausalLM(llama_config_from(model.config, special)).eval()
    # Same parameter names; strict loading proves nothing is dropped or left random.
    llama.load_state_dict(model.state_dict(), strict=True)
    diff = max_logit_difference(model, llama, probe_ids(model.config.vocab_size))
    out = Path(out)
    tmp = prepare_out(out, overwrite)
    with quiet_hf_progress():
        llama.save_pretrained(tmp, safe_serialization=True)
    copy_tokenizer(model_dir, tmp)
    make_portable(tmp)
    (tmp / "README.md").write_text(export_card(model_dir, diff), encoding="utf-8")
    commit_out(tmp, out)
    return ExportReport(model_dir, out, "LlamaForCausalLM, safetensors", diff)


def export_card(model_dir: Path, diff: float) -> str:
    """The exported directory's model card: where it came from, the check, and the source
    card's provenance and figures (its loading notes, which are about the source, are left out).
    """
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- shoestring",
        "- llama",
        "---",
        "",
        f"# {model_dir.parent.name if model_dir.name == 'model' else model_dir.name} (Llama)",
        "",
        f"`LlamaForCausalLM` written by `shoestring export --to llama` from `{model_dir}`; "
        f"the largest logit difference to the source on a probe sequence was {diff:.3g}. "
        "It needs no custom code: `AutoModelForCausalLM.from_pretrained(path)`.",
        "",
    ]
    source = model_dir / "README.md"
    if source.is_file():
        body = source.read_text(encoding="utf-8").split("## Use it")[0]
        kept = body.split("## How it was made", 1)
        if len(kept) == 2:
            lines += ["## How the source was made", "", kept[1].strip(), ""]
    return "\n".join(lines).rstrip() + "\n"
