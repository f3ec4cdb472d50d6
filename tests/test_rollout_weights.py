"""The weights a CPU rollout samples with. The bf16 copy of a full fine-tune: made without an
fp32 detour, tied weights stay tied, made from the trained weights for every rollout and dropped
after it, and used only where it applies (bf16 asked for, fp32 weights, no LoRA, no hooks). A
LoRA run's adapters merged into plain layers for the rollout, with the unmerged model's tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from _helpers import char_tokenizer
from shoestring.engine import Engine, EngineOptions, Sampling
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.lora_view import lora_linear_layers
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


def test_lora_rollout_samples_with_merged_plain_layers_and_the_same_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CPU LoRA rollout: the engine decodes with the adapters merged into plain linear layers
    (the lean step fuses them: one q/k/v product instead of three LoRA layers) and gives the
    tokens the unmerged LoRA model gives; the LoRA layers are back after the call."""
    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(LlamaForCausalLM(cfg), lcfg).get_base_model().eval()
    prompts = ["Question: 2+2?", "Hi", "a b c d e f g h"]
    sampling = Sampling(max_new_tokens=12, eos_token_ids=[], num_return_sequences=2)
    fused: list[bool] = []
    real_build = LeanDecoder.build

    def recording(m, fuse=None, pack=None, kernel="auto", **kw):  # type: ignore[no-untyped-def]
        lean = real_build(m, fuse, pack, kernel, **kw)
        fused.append(bool(lean and lean.layers[0].qkv.single))
        return lean

    monkeypatch.setattr(LeanDecoder, "build", recording)
    merged = Engine(model, tok, EngineOptions(merge_lora=True)).generate(prompts, sampling)
    plain = Engine(model, tok, EngineOptions(merge_lora=False)).generate(prompts, sampling)
    assert fused == [True, False]  # merged: one plain q/k/v product; unmerged: LoRA modules
    assert [r.token_ids for r in merged] == [r.token_ids for r in plain]
    assert len(lora_linear_layers(model)) == 2 * 7  # every LoRA layer is back in place


@pytest.mark.parametrize("adapters", [1, 2])
def test_merged_weight_is_the_base_plus_every_active_delta(adapters: int) -> None:
    """The merged weight is ``W + scale * B @ A`` (one fused ``addmm`` for one plain fp32
    adapter; the general sum over adapters otherwise) within fp32 rounding of peft's own
    delta, and the trained tensors are untouched."""
    from shoestring.engine.lora_view import _merged_linears, _plain_adapter

    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(_llama(), lcfg)
    if adapters == 2:
        peft_model.add_adapter("second", lcfg)
        peft_model.base_model.set_adapter(["default", "second"])
    model = peft_model.get_base_model()
    store = _merged_linears(model)
    for name, mod in lora_linear_layers(model):
        w = mod.get_base_layer().weight
        before = w.detach().clone()
        active = [a for a in mod.active_adapters if a in mod.lora_A]
        assert (_plain_adapter(mod, active, w) is not None) == (adapters == 1)
        want = before + sum(mod.get_delta_weight(a) for a in active)
        got = store.linear_for(name, mod).weight
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert torch.equal(w, before)
