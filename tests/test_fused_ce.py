"""The chunked linear + cross-entropy equals the plain head + F.cross_entropy, values and grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shoestring.models.fused_ce import chunked_linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_matches_reference_loss_and_gradients(chunk: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(3, 41, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 24, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 53, (3, 41))
    t[0, :9] = -100
    ref = F.cross_entropy((h @ w.t()).reshape(-1, 53), t.reshape(-1), ignore_index=-100)
    gh, gw = torch.autograd.grad(ref * 2.5, (h, w))
    out = chunked_linear_cross_entropy(h, w, t, chunk=chunk)
    ch, cw = torch.autograd.grad(out * 2.5, (h, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ch, gh)
    torch.testing.assert_close(cw, gw)


def test_no_grad_path_and_all_ignored() -> None:
    h, w = torch.randn(10, 8), torch.randn(11, 8)
    t = torch.randint(0, 11, (10,))
    with torch.no_grad():
        a = chunked_linear_cross_entropy(h, w, t, chunk=3)
    torch.testing.assert_close(a, F.cross_entropy(h @ w.t(), t))
    assert chunked_linear_cross_entropy(h, w, torch.full((10,), -100)).item() == 0.0


def test_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(1)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(100, 32, requires_grad=True)
    t = torch.randint(0, 100, (64,))
    ref = F.cross_entropy(h @ w.t(), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_linear_cross_entropy(h, w, t, chunk=16)
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) / ref.item() < 2e-2
    out.backward()
    assert h.grad is not None and h.grad.dtype == torch.float32 and w.grad is not None


def test_model_fused_path_matches_logits_path() -> None:
    from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM

    torch.manual_seed(0)
    cfg = ShoestringGPTConfig(
        vocab_size=97, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16
    )
    model = ShoestringGPTForCausalLM(cfg)
    x, y = torch.randint(0, 97, (2, 3, 16))
    a = model(x, targets=y).loss
    ga = torch.autograd.grad(a, list(model.parameters()))
    b = model(x, targets=y, return_logits=False)
    assert b.logits is None
    gb = torch.autograd.grad(b.loss, list(model.parameters()))
    torch.testing.assert_close(a, b.loss)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)
