"""The bf16 rollout copy of a CPU full fine-tune: made without an fp32 detour, tied weights
stay tied, made from the trained weights for every rollout and dropped after it, and used
only where it applies (bf16 asked for, fp32 weights, no LoRA, no hooks)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from shoestring.rl.rollout_weights import RolloutWeights, bf16_copy


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def _policy(model: torch.nn.Module, dtype: str = "bf16", peft: object = None) -> SimpleNamespace:
    return SimpleNamespace(
        model=model,
        device=torch.device("cpu"),
        runtime=SimpleNamespace(dtype=dtype),
        peft_model=peft,
    )


def test_bf16_copy_is_bf16_tied_and_computes_the_same_function() -> None:
    model = _llama().eval()
    shadow = bf16_copy(model)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in shadow.parameters())
    assert shadow.lm_head.weight is shadow.model.embed_tokens.weight  # still tied
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original untouched
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        want = model(ids).logits
        got = shadow(ids).logits.float()
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_rollout_weights_follow_training_and_apply_only_where_they_should() -> None:
    model = _llama()
    weights = RolloutWeights()
    shadow = weights.model_for(_policy(model))
    assert shadow is not model and next(shadow.parameters()).dtype == torch.bfloat16
    with torch.no_grad():  # an optimizer step
        for p in model.parameters():
            p.add_(0.25)
    weights.release()
    assert weights.shadow is None  # dropped after the rollout: not there in training
    shadow = weights.model_for(_policy(model))  # the next rollout: the trained weights
    for s, p in zip(shadow.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(s, p.detach().to(torch.bfloat16))

    fresh = RolloutWeights()
    assert fresh.model_for(_policy(model, dtype="fp32")) is model
    assert fresh.model_for(_policy(model, peft=object())) is model
    handle = model.model.embed_tokens.register_forward_hook(lambda *a: None)
    assert fresh.model_for(_policy(model)) is model  # hooks: left as it is
    handle.remove()
    assert fresh.shadow is None
