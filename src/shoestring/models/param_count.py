"""Parameter counts by role (embedding, attention, MLP, norms, LM head) for any HF decoder.

Why apart from the model definition: ``analyze`` and the training summary count parameters of
the shoestring GPT and of imported Llama/Qwen2 models alike, and a tied LM head must be counted
once; one function does it for all of them.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _unique_count(params: Any, seen: set[int]) -> int:
    n = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def num_parameters_breakdown(model: nn.Module) -> dict[str, Any]:
    """Parameter counts by role, each tensor counted once (a tied head is not counted twice).

    Returns ``total``, ``embedding`` (token + learned position tables), ``lm_head`` (0 when
    tied), ``non_embedding`` (total - embedding - lm_head; the scaling-law N), ``attention``,
    ``mlp``, ``norm`` (everything else: layer norms), ``layers`` and ``per_layer`` (list of
    ``{"attention", "mlp", "other"}``). Works for any HF decoder whose layers expose
    ``self_attn``/``mlp`` (Llama, Qwen2 ...); ``peft`` wrappers are unwrapped.
    """
    base = model
    if hasattr(base, "get_base_model"):  # peft PeftModel
        base = base.get_base_model()
    total = _unique_count(base.parameters(), set())

    seen: set[int] = set()
    embedding = 0
    inp = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if inp is not None:
        embedding += _unique_count(inp.parameters(), seen)
    decoder = (
        getattr(base, base.base_model_prefix, base) if hasattr(base, "base_model_prefix") else base
    )
    pos = getattr(decoder, "embed_positions", None)
    if isinstance(pos, nn.Module):
        embedding += _unique_count(pos.parameters(), seen)
    lm_head = 0
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if out is not None:
        lm_head = _unique_count(out.parameters(), seen)

    per_layer: list[dict[str, int]] = []
    layers = getattr(decoder, "layers", None)
    for layer in layers if layers is not None else []:
        attn_mod = getattr(layer, "self_attn", None)
        mlp_mod = getattr(layer, "mlp", None)
        a = _unique_count(attn_mod.parameters(), seen) if attn_mod is not None else 0
        m = _unique_count(mlp_mod.parameters(), seen) if mlp_mod is not None else 0
        o = _unique_count(layer.parameters(), seen)
        per_layer.append({"attention": a, "mlp": m, "other": o})
    attention = sum(x["attention"] for x in per_layer)
    mlp = sum(x["mlp"] for x in per_layer)
    return {
        "total": total,
        "embedding": embedding,
        "lm_head": lm_head,
        "non_embedding": total - embedding - lm_head,
        "attention": attention,
        "mlp": mlp,
        "norm": total - embedding - lm_head - attention - mlp,
        "layers": len(per_layer),
        "per_layer": per_layer,
    }
