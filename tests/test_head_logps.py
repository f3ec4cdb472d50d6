"""GRPO's chunked head: log-probs, entropies and gradients equal the full computation.

``rl.head_logps.head_logps`` never builds the [tokens, vocab] logits in fp32 (a trained head
keeps them chunk by chunk in the compute dtype, a frozen head keeps nothing vocabulary-wide);
these tests hold it to ``selective_logps_and_entropy`` over the full logits, alone and inside
``completion_logps``/``grouped_completion_logps`` on a real model.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from shoestring.rl.head_logps import head_logps
from shoestring.rl.logprobs import (
    completion_logps,
    grouped_completion_logps,
    selective_logps_and_entropy,
)


@pytest.mark.parametrize("train_head", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_head_logps_equal_full_logits(
    train_head: bool, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.rl import head_logps as module

    monkeypatch.setattr(module, "HEAD_GRAD_VOCAB_BLOCK", 16)  # 50 rows: 4 uneven blocks
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64).float()
    weight = torch.randn(50, 16, generator=gen).mul(0.5)
    targets = torch.randint(0, 50, (3, 7), generator=gen)
    upstream = torch.randn(3, 7, generator=gen)

    def run(fn):  # type: ignore[no-untyped-def]
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(train_head)
        lp, ent = fn(h, w)
        (lp * upstream).sum().backward()
        return lp.detach(), ent, h.grad, w.grad

    want = run(
        lambda h, w: selective_logps_and_entropy(h @ w.t(), targets, True, temperature=temperature)
    )
    # chunk 5 splits the 21 tokens unevenly: chunk boundaries are exercised
    got = run(lambda h, w: head_logps(h, w, targets, True, temperature, chunk=5))
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], want[2], atol=1e-5, rtol=1e-5)
    if train_head:
        torch.testing.assert_close(got[3], want[3], atol=1e-5, rtol=1e-5)
    else:
        assert got[3] is None


def test_head_logps_under_bf16_autocast_match_within_bf16_tolerance() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 32, generator=gen)
    weight = torch.randn(300, 32, generator=gen).mul(0.2).requires_grad_(True)
    targets = torch.randint(0, 300, (2, 9), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = selective_logps_and_entropy(hidden @ weight.t(), targets, False)
        got, ent = head_logps(hidden, weight, targets, chunk=4)
    assert got.dtype == torch.float32 and ent is None
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    got.sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32


def _llama(vocab: int = 90) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def _reference(model, p, pm, c, cm):  # type: ignore[no-untyped-def]
    """The full computation: the model's own forward, all logits, then log-softmax."""
    ids, mask = torch.cat([p, c], 1), torch.cat([pm, cm], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return selective_logps_and_entropy(logits[:, -(c.size(1) + 1) : -1], c, True)


@pytest.mark.parametrize("grouped", [False, True])
def test_completion_logps_chunked_head_equals_full_forward(grouped: bool) -> None:
    """Values, entropies and every parameter's gradient (tied embeddings: the head's
    gradient reaches the embedding) equal the model's full forward."""
    model = _llama()
    torch.manual_seed(3)
    g = 2
    p = torch.randint(4, 80, (2, 5))
    pm = torch.ones_like(p)
    pm[1, :2] = 0
    c = torch.randint(4, 80, (2 * g, 6))
    cm = torch.ones_like(c)
    cm[1, 3:] = 0
    adv = torch.randn(2 * g)
    pr, pmr = p.repeat_interleave(g, 0), pm.repeat_interleave(g, 0)

    def run(fn):  # type: ignore[no-untyped-def]
        model.zero_grad()
        lp, ent = fn()
        (lp * cm * adv[:, None]).sum().backward()
        # the tied embedding's rows come back sparse and are added to the head's dense grad
        assert not any(q.grad.is_sparse for q in model.parameters())
        return lp.detach(), ent, [q.grad.clone() for q in model.parameters()]

    want = run(lambda: _reference(model, pr, pmr, c, cm))
    if grouped:
        got = run(lambda: grouped_completion_logps(model, p, pm, c, cm, g, True))
    else:
        got = run(lambda: completion_logps(model, pr, pmr, c, cm, True))
    torch.testing.assert_close(got[0] * cm, want[0] * cm, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1] * cm, want[1] * cm, atol=1e-5, rtol=1e-4)
    for a, b in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lora_gradients_through_the_frozen_head_equal_full_forward() -> None:
    """A LoRA run's head is frozen: only the hidden states' gradient flows (the per-token
    vectors formed in the forward pass), and the adapters' gradients equal the full forward."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # make the adapters matter (B starts at zero)
        for name, q in model.named_parameters():
            if "lora_B" in name:
                q.normal_(0, 0.5)
    torch.manual_seed(4)
    p, c = torch.randint(4, 80, (3, 4)), torch.randint(4, 80, (3, 5))
    pm, cm = torch.ones_like(p), torch.ones_like(c)
    pm[0, :1] = 0
    trained = [q for q in model.parameters() if q.requires_grad]

    def run(fn):  # type: ignore[no-untyped-def]
        model.zero_grad()
        lp, _ = fn()
        (lp * cm).sum().backward()
        return lp.detach(), [q.grad.clone() for q in trained]

    want = run(lambda: _reference(model, p, pm, c, cm))
    got = run(lambda: completion_logps(model, p, pm, c, cm))
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
