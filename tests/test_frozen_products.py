"""A LoRA policy's frozen weights multiplied through the packed AVX2 kernel in the training pass
(``rl/frozen_products.py``): the same loss and adapter gradients as ``F.linear`` within fp32
rounding noise, through the model's own layers and the chunked head; the layers restored after;
the packed copies kept between steps, repacked when a weight changes, made only when used, and
never copied with the model; a full fine-tune untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from shoestring.engine import packed_linear
from shoestring.rl import frozen_products as fp
from shoestring.rl.logprobs import head_logps
from test_lean_decode import VOCAB, make

pytestmark = pytest.mark.skipif(
    not packed_linear.avx2_kernel_available(), reason="shoestring's AVX2 kernel cannot run here"
)


@pytest.fixture
def on_any_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel for a tiny model on whatever class of host runs the test."""
    monkeypatch.setattr(fp, "FP32_MIN_BYTES", 0)
    monkeypatch.setattr(fp, "fp32_kernel", lambda: "avx2")


def _lora_policy() -> torch.nn.Module:
    model = get_peft_model(
        make("qwen2"),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    )
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero: give both adapters a gradient to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _head(model: torch.nn.Module) -> torch.Tensor:
    return model.get_base_model().lm_head.weight


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, dict]:
    """A loss through the model's own head and through the chunked head, and the adapters'
    gradients."""
    model.zero_grad()
    logits = model(input_ids=ids).logits[:, :-1].float()
    own = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).mean()
    hidden = model.get_base_model().model(input_ids=ids).last_hidden_state
    chunked, _ = head_logps(hidden[:, :-1], _head(model), ids[:, 1:], chunk=3)
    loss = own + chunked.mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


@pytest.mark.parametrize("max_reduction", [1024, 40])
def test_frozen_products_give_the_same_loss_and_gradients(
    on_any_host: None, monkeypatch: pytest.MonkeyPatch, max_reduction: int
) -> None:
    """1024: every backward through a packed transpose; 40: the tiny model's longer
    reductions (its MLP and head) through MKL's mm, as gate/up's at a real shape."""
    monkeypatch.setattr(fp, "TRANSPOSED_MAX_REDUCTION", max_reduction)
    model = _lora_policy()
    ids = torch.randint(3, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
    want_loss, want = _loss_and_grads(model, ids)
    with fp.frozen_products(model) as switched:
        assert switched > 0
        assert fp.packed_head(_head(model)) is not None
        got_loss, got = _loss_and_grads(model, ids)
    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # outside, every layer is its class's own again, and nothing is a packed head
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert fp.packed_head(_head(model)) is None
    assert _loss_and_grads(model, ids)[0] == want_loss  # F.linear's bits again


def test_packed_copies_are_kept_refreshed_and_not_copied(on_any_host: None) -> None:
    model = _lora_policy()
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with fp.frozen_products(model):
        _loss_and_grads(model, ids)
    store = model._shoestring_frozen_packs
    kept = dict(store.packs)
    assert kept  # made at first use, kept on the model
    with fp.frozen_products(model):
        _loss_and_grads(model, ids)
    assert all(store.packs[k][1] is kept[k][1] for k in kept)  # the next step reuses them
    base = model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    with torch.no_grad():
        base.weight.add_(0.01)  # an in-place change bumps the version: packed anew
    want_loss, want = _loss_and_grads(model, ids)
    with fp.frozen_products(model):
        got_loss, got = _loss_and_grads(model, ids)
    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert copy.deepcopy(model)._shoestring_frozen_packs.packs == {}  # a copy packs its own


def test_transposes_are_packed_only_when_a_backward_needs_them(on_any_host: None) -> None:
    model = _lora_policy()
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    with fp.frozen_products(model), torch.no_grad():
        hidden = model.get_base_model().model(input_ids=ids).last_hidden_state
        head_logps(hidden, _head(model), ids)
    names = {name for name, _ in model._shoestring_frozen_packs.packs}
    transposed = {name for name, t in model._shoestring_frozen_packs.packs if t}
    assert names and not transposed  # no backward: no transpose packed
    assert any("lm_head" in n for n in names)  # the chunked head's logits took the packed head
    _loss_and_grads(model, ids)  # outside: nothing more packed
    with fp.frozen_products(model):
        _loss_and_grads(model, ids)
    transposed = {name for name, t in model._shoestring_frozen_packs.packs if t}
    eligible = {
        name
        for name, m in model.named_modules()
        if fp._frozen(m) and m.out_features <= fp.TRANSPOSED_MAX_REDUCTION
    }  # long reductions stay MKL's: never packed
    # a backward packs the transposes it runs: all but layer 0's q/k/v, whose input (the
    # frozen embeddings) needs no gradient, so autograd never runs their backward
    first = {n for n in eligible if ".layers.0.self_attn." in n and "o_proj" not in n}
    assert first and transposed == eligible - first


def test_a_full_fine_tune_and_other_dtypes_are_left_alone(on_any_host: None) -> None:
    model = make("qwen2")  # every weight trains: nothing is frozen
    with fp.frozen_products(model) as switched:
        assert switched == 0
    lora = _lora_policy().to(torch.bfloat16)
    with fp.frozen_products(lora) as switched:
        assert switched == 0  # bf16 weights: the kernel is fp32 only
