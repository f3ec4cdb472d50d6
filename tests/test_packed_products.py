"""A policy's fp32 weights multiplied through the packed AVX2 kernel in the training pass
(``rl/packed_products.py``, the copies in ``engine/weight_packs.py``): a LoRA run's frozen base
and a full fine-tune's trained weights give the same loss and gradients as ``F.linear`` within
fp32 rounding noise, through the model's own layers and the chunked head; the layers restored
after; the packed copies kept between steps, repacked in place when a weight changes, made only
when used, never copied with the model, and shared with the rollout's decode step."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from shoestring.engine import packed_linear
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.lora_view import merged_lora
from shoestring.engine.weight_packs import WeightPacks
from shoestring.rl import packed_products as fp
from shoestring.rl.head_logps import head_logps
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
def test_frozen_weights_give_the_same_loss_and_gradients(
    on_any_host: None, monkeypatch: pytest.MonkeyPatch, max_reduction: int
) -> None:
    """1024: every backward through a packed transpose; 40: the tiny model's longer
    reductions (its MLP and head) through MKL's mm, as gate/up's at a real shape."""
    monkeypatch.setattr(fp, "TRANSPOSED_MAX_REDUCTION", max_reduction)
    model = _lora_policy()
    ids = torch.randint(3, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
    want_loss, want = _loss_and_grads(model, ids)
    with fp.packed_products(model) as switched:
        assert switched > 0
        assert fp.packed_head(_head(model)) is not None
        lora = [m for m in model.modules() if hasattr(m, "lora_A")]
        assert lora and all("forward" in m.__dict__ for m in lora)  # adapters added in place
        got_loss, got = _loss_and_grads(model, ids)
    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # outside, every layer is its class's own again, and nothing is a packed head
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert fp.packed_head(_head(model)) is None
    assert _loss_and_grads(model, ids)[0] == want_loss  # F.linear's bits again


def test_adapters_with_dropout_keep_pefts_forward(on_any_host: None) -> None:
    """Only a plain adapter (no dropout, one adapter, not merged) is added in place: with
    dropout the LoRA layers run peft's own forward over the packed base."""
    model = get_peft_model(
        make("qwen2"),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1),
    )
    frozen, _ = fp._switched(model)
    assert frozen and fp._lora_layers(model, frozen) == []
    with fp.packed_products(model) as switched:
        assert switched > 0
        assert not any("forward" in m.__dict__ for m in model.modules() if hasattr(m, "lora_A"))


def test_packed_copies_are_kept_refreshed_and_not_copied(on_any_host: None) -> None:
    model = _lora_policy()
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with fp.packed_products(model):
        _loss_and_grads(model, ids)
    store = getattr(model, WeightPacks.ATTR)
    kept = {k: e.packed for k, e in store.packs.items()}
    assert kept  # made at first use, kept on the model
    with fp.packed_products(model):
        _loss_and_grads(model, ids)
    assert all(store.packs[k].packed is kept[k] for k in kept)  # the next step reuses them
    base = model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    with torch.no_grad():
        base.weight.add_(0.01)  # an in-place change bumps the version: packed anew
    want_loss, want = _loss_and_grads(model, ids)
    with fp.packed_products(model):
        got_loss, got = _loss_and_grads(model, ids)
    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert getattr(copy.deepcopy(model), WeightPacks.ATTR).packs == {}  # a copy packs its own


def test_transposes_are_packed_only_when_a_backward_needs_them(on_any_host: None) -> None:
    model = _lora_policy()
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    with fp.packed_products(model), torch.no_grad():
        hidden = model.get_base_model().model(input_ids=ids).last_hidden_state
        head_logps(hidden, _head(model), ids)
    store = getattr(model, WeightPacks.ATTR)
    names = {id(w): n for n, w in model.named_parameters(remove_duplicate=False)}
    packed = {names[i] for i, _ in store.packs}
    transposed = {names[i] for i, t in store.packs if t}
    assert packed and not transposed  # no backward: no transpose packed
    assert any("lm_head" in n for n in packed)  # the chunked head's logits took the packed head
    _loss_and_grads(model, ids)  # outside: nothing more packed
    with fp.packed_products(model):
        _loss_and_grads(model, ids)
    transposed = {names[i] for i, t in store.packs if t}
    eligible = {
        name + ".weight"
        for name, m in model.named_modules()
        if fp._frozen(m) and m.out_features <= fp.TRANSPOSED_MAX_REDUCTION
    }  # long reductions stay MKL's: never packed
    # a backward packs the transposes it runs: all but layer 0's q/k/v, whose input (the
    # frozen embeddings) needs no gradient, so autograd never runs their backward
    first = {n for n in eligible if ".layers.0.self_attn." in n and "o_proj" not in n}
    assert first and transposed == eligible - first


def test_other_dtypes_are_left_alone(on_any_host: None) -> None:
    lora = _lora_policy().to(torch.bfloat16)
    with fp.packed_products(lora) as switched:
        assert switched == 0  # bf16 weights: the kernel is fp32 only
    assert fp.rollout_packs(lora) is None


def test_only_their_own_kept_copies_count_as_room_for_packed_weights(
    on_any_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory check for the frozen weights' two copies counts their copies already kept
    as available, and not the store's other copies (a LoRA rollout's merged weights)."""
    from types import SimpleNamespace

    model = _lora_policy()
    frozen, _ = fp._switched(model)
    assert frozen
    size = sum(m.weight.numel() * m.weight.element_size() for m in frozen)
    short = 2 * size + fp.MEMORY_MARGIN_BYTES - 1  # one byte short of both copies
    monkeypatch.setattr(fp.psutil, "virtual_memory", lambda: SimpleNamespace(available=short))
    assert not fp._applies(frozen, 2, model)
    store = WeightPacks.on(model, WeightPacks.ATTR)
    other = torch.randn(size // 4 // 64 + 1, 64)  # another weight, as large as all of them
    store.get(other)
    assert store.nbytes() >= size and store.nbytes([m.weight for m in frozen]) == 0
    assert not fp._applies(frozen, 2, model)  # no room made by another weight's copy
    store.get(frozen[0].weight)
    assert fp._applies(frozen, 2, model)  # a copy of their own is room they need no more


def _full_loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, dict]:
    """A full fine-tune's loss through the model's own layers and the chunked (tied) head, and
    every parameter's gradient."""
    model.zero_grad()
    hidden = model.model(input_ids=ids).last_hidden_state
    lp, _ = head_logps(hidden[:, :-1], model.lm_head.weight, ids[:, 1:], chunk=4)
    loss = lp.mean()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_a_full_fine_tunes_trained_weights_give_the_same_loss_and_gradients(
    on_any_host: None,
) -> None:
    """Every linear layer (q/k/v with biases, the tied head) forward through its packed copy,
    backward as F.linear's: the loss and every gradient within fp32 rounding; the head's
    logits through the packed head."""
    model = make("qwen2").train()
    ids = torch.randint(3, VOCAB, (3, 11), generator=torch.Generator().manual_seed(4))
    want_loss, want = _full_loss_and_grads(model, ids)
    with fp.packed_products(model) as switched:
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert switched == len(layers)
        assert fp.packed_head(model.lm_head.weight) is not None
        got_loss, got = _full_loss_and_grads(model, ids)
    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    store = getattr(model, WeightPacks.ATTR)
    assert not any(t for _, t in store.packs)  # a trained weight's backward is MKL's
    assert _full_loss_and_grads(model, ids)[0] == want_loss  # outside: F.linear's bits


def test_an_in_place_step_repacks_into_the_same_buffer(on_any_host: None) -> None:
    model = make("qwen2").train()
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    with fp.packed_products(model):
        _full_loss_and_grads(model, ids)
    store = getattr(model, WeightPacks.ATTR)
    buffers = {k: e.packed.data.data_ptr() for k, e in store.packs.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.step()  # every weight changes in place (its version moves)
    want_loss, want = _full_loss_and_grads(model, ids)
    with fp.packed_products(model):
        got_loss, got = _full_loss_and_grads(model, ids)
    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)  # the new weights' products
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert {k: e.packed.data.data_ptr() for k, e in store.packs.items()} == buffers
    # a weight replaced by another tensor gets a copy of its own, not the old buffer's
    layer = model.model.layers[0].mlp.down_proj
    old = store.get(layer.weight)
    layer.weight = torch.nn.Parameter(layer.weight.detach().clone())
    assert store.get(layer.weight) is not old
    with pytest.raises(ValueError, match="fp32"):  # the kernel is fp32 only
        store.get(layer.weight.detach().to(torch.bfloat16))


def test_the_rollout_packs_through_the_store_the_training_pass_reads(on_any_host: None) -> None:
    """A full fine-tune's rollout decodes through the kept copies (one per layer, the head's
    too) with the model's own logits within fp32 rounding; the training pass that follows
    packs nothing new."""
    model = make("qwen2").train()
    store = fp.rollout_packs(model)
    assert store is not None and store is getattr(model, WeightPacks.ATTR)
    lean = LeanDecoder.build(model, pack=True, kernel="avx2", packs=store)
    assert lean is not None
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(store.packs) == len(layers)  # every layer's weight, tied head included
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        from transformers.cache_utils import DynamicCache

        pos = torch.arange(7)[None].expand(2, -1)
        got = lean.forward(ids, torch.ones_like(ids), pos, DynamicCache())
        want = model(input_ids=ids).logits[:, -1].float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    made = {k: e.packed for k, e in store.packs.items()}
    with fp.packed_products(model):
        _full_loss_and_grads(model, ids)
    assert {k: e.packed for k, e in store.packs.items()} == made  # the same copies, none new


def _lora_rollout_logits(model: torch.nn.Module, store: WeightPacks, ids: torch.Tensor):
    """The last position's logits of a rollout's lean forward over ``model`` with its adapters
    merged (as the engine decodes a LoRA policy), packed through ``store``."""
    from transformers.cache_utils import DynamicCache

    with merged_lora(model) as merged, torch.no_grad():
        assert merged > 0
        lean = LeanDecoder.build(model.get_base_model(), pack=True, kernel="avx2", packs=store)
        assert lean is not None
        pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
        return lean.forward(ids, torch.ones_like(ids), pos, DynamicCache())


def test_a_lora_rollout_repacks_its_merged_weights_into_the_same_buffers(
    on_any_host: None,
) -> None:
    """A LoRA policy's rollout decodes its merged weights through the training pass's store:
    the model's own logits within fp32 rounding, the frozen head's copy the training pass's
    own, and after an optimizer step on the adapters the next rollout's copies repacked into
    the buffers the last one filled, with the new adapters' logits."""
    model = _lora_policy().train()
    store = fp.rollout_packs(model)
    assert store is not None and store is getattr(model, WeightPacks.ATTR)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = model(input_ids=ids).logits[:, -1].float()
    torch.testing.assert_close(_lora_rollout_logits(model, store, ids), want, rtol=1e-4, atol=1e-5)
    with fp.packed_products(model):
        _loss_and_grads(model, ids)  # the training pass: frozen base copies, the head's
        head = fp.packed_head(_head(model))
    rollout_head = store.packs[(id(_head(model)), False)].packed
    assert head is rollout_head  # one copy of the frozen head for both
    buffers = {k: e.packed.data.data_ptr() for k, e in store.packs.items()}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    with torch.no_grad():
        want = model(input_ids=ids).logits[:, -1].float()
    got = _lora_rollout_logits(model, store, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # the stepped adapters'
    assert {k: e.packed.data.data_ptr() for k, e in store.packs.items()} == buffers


def test_trained_gradients_accumulate_over_grouped_micro_batches(on_any_host: None) -> None:
    """Two micro-batches, each a grouped forward (the prompt once, then its completions:
    every weight used twice per backward): the gradients equal F.linear's sums."""
    from shoestring.rl.logprobs import grouped_completion_logps

    model = make("qwen2").train()
    gen = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(2):
        p = torch.randint(3, VOCAB, (1, 6), generator=gen)
        c = torch.randint(3, VOCAB, (3, 5), generator=gen)
        batches.append((p, torch.ones_like(p), c, torch.ones_like(c)))

    def step() -> dict:
        model.zero_grad()
        for p, pm, c, cm in batches:
            lp, _ = grouped_completion_logps(model, p, pm, c, cm, 3)
            lp.mean().backward()
        return {n: q.grad.clone() for n, q in model.named_parameters()}

    want = step()
    with fp.packed_products(model) as switched:
        assert switched > 0
        got = step()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
