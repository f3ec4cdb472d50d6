"""A policy's fp32 weights multiplied through the engine's packed AVX2 kernel in the training
pass: a LoRA run's frozen base, and a full fine-tune's trained weights.

Why: a GRPO step's training pass multiplies a few hundred rows - a prompt and its group's
completions - by every weight of the model: ``x W^T`` forward, then ``g W`` for the input's
gradient and ``g^T x`` for a trained weight's own. On the ``avx2`` host class shoestring's
packed fp32 kernel (:mod:`shoestring.engine.sgemm_avx2`) runs such products well ahead of
``F.linear``'s MKL sgemm (``benchmarks/linear_kernels.py --rows 512``). The packed copies live in
the model's :class:`~shoestring.engine.weight_packs.WeightPacks`:

- a **frozen** weight (LoRA's base, a tied head) is packed once per run, and its transpose too
  where the input's gradient ``g W`` is faster through the kernel
  (:data:`TRANSPOSED_MAX_REDUCTION`);
- a **trained** weight (a full fine-tune's: a LoRA run's adapters are thin products, left to
  MKL) changes every step, but the step's rollout has just packed it for its
  decode steps (the engine takes the same store, :func:`rollout_packs`), with the weights the
  training pass multiplies: the forward product reads that copy, and the backward's two
  products (``g W``, ``g^T x``) stay MKL's, as ``F.linear``'s backward computes them. The
  optimizer's in-place step then makes the next rollout repack into the same buffers.

- a LoRA run's rollout packs its merged weights (:mod:`~shoestring.engine.lora_view`) through
  the same store (:func:`rollout_packs`): kept, and repacked in place at each rollout;
- a plain LoRA layer over a packed base adds its adapter's product into the base product's
  output in place (:func:`_fused_lora_forward`), where peft's forward makes fresh
  activation-sized tensors to scale and add it.

:func:`packed_head` hands the chunked head (``rl/head_logps.py``) the packed head for its logits
(its backward, a reduction over the 151,936-entry vocabulary, stays MKL's).

Where it applies, and why not elsewhere: the kernel's choice is the engine's
(:func:`~shoestring.engine.packed_linear.fp32_kernel`, ``auto``: the ``avx2`` class), fp32
weights on a CPU, no autocast, weights past the caches in all
(:data:`~shoestring.engine.packed_linear.FP32_MIN_BYTES`: small models keep ``F.linear``'s
bits), and memory for the packed copies (both orientations of a frozen weight). The products
sum in another order than MKL's, within the fp32 policy of ``engine/packed_linear.py``; the
tests compare the loss and every trained tensor's gradient with and without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from torch import nn

from shoestring.engine.lora_view import lora_linear_layers, plain_adapter
from shoestring.engine.packed_linear import (
    FP32_MIN_BYTES,
    MEMORY_MARGIN_BYTES,
    PackedWeight,
    fp32_kernel,
    packed_linear,
)
from shoestring.engine.weight_packs import WeightPacks

__all__ = ["packed_head", "packed_products", "rollout_packs"]

# the weights inside packed_products, by identity: the store that keeps their packed copies
_ACTIVE: dict[int, WeightPacks] = {}


# A frozen weight's input gradient g W goes through the packed W^T where its reduction (W's
# output features) is at most this long: at Qwen2.5-0.5B's shape down gains there and q/k/v and
# o are about even with MKL's mm; gate/up's 4864-long reductions are slower through the kernel,
# so they stay MKL's and their transposes' memory is not spent. Measured with
# benchmarks/linear_kernels.py --shapes *_t at a training pass's rows.
TRANSPOSED_MAX_REDUCTION = 1024


class _FrozenLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` for a frozen ``W`` (and ``b``): the forward through ``W``'s packed
    copy, the input's gradient ``g W`` through the packed ``W^T`` (packed at the first
    backward) or MKL's ``mm``; no gradient for ``W``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        packed: PackedWeight,
        transposed: Callable[[], PackedWeight] | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.transposed, ctx.weight = transposed, weight
        return packed_linear(x, packed, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if ctx.transposed is None:
            grad_x = grad @ ctx.weight
        else:
            grad_x = packed_linear(grad.contiguous(), ctx.transposed(), None)
        return grad_x, None, None, None, None


class _TrainedLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` for a trained ``W``: the forward through ``W``'s packed copy, the
    backward as ``F.linear``'s (``g W``, ``g^T x``, ``sum g``) in MKL."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        packed: PackedWeight,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return packed_linear(x, packed, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [rows, out]
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        grad_x = grad @ weight if want_x else None
        grad_w = g2.t() @ x.reshape(-1, x.shape[-1]) if want_w else None  # [out, in]
        grad_b = g2.sum(0) if ctx.has_bias and want_b else None
        return grad_x, grad_w, grad_b, None


def _plain_fp32(m: Any) -> bool:
    """A plain fp32 ``nn.Linear`` on a CPU with no hooks."""
    if type(m) is not nn.Linear or m.weight.dtype != torch.float32:
        return False
    if m.weight.device.type != "cpu":
        return False
    return not (m._forward_hooks or m._forward_pre_hooks)


def _frozen(m: Any) -> bool:
    """A plain fp32 linear layer that trains nothing."""
    if not _plain_fp32(m) or m.weight.requires_grad:
        return False
    return m.bias is None or not m.bias.requires_grad


def _hooked_forward(m: nn.Linear, store: WeightPacks) -> Callable[..., torch.Tensor]:
    """``m``'s forward through its packed copies."""
    frozen = _frozen(m)

    def transposed() -> PackedWeight:
        return store.get(m.weight, transposed=True)

    use_transposed = frozen and m.out_features <= TRANSPOSED_MAX_REDUCTION

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return F.linear(x, m.weight, m.bias)  # another dtype: the layer's own product
        packed = store.get(m.weight)
        if not frozen:
            return _TrainedLinear.apply(x, m.weight, m.bias, packed)
        back = transposed if use_transposed else None
        return _FrozenLinear.apply(x, m.weight, packed, back, m.bias)

    return forward


def _fused_lora_forward(mod: Any) -> Callable[..., torch.Tensor]:
    """``mod``'s (a plain peft LoRA layer's) forward with the adapter's product added into
    the base product's output in place - ``y += scale * (x A^T) B^T`` in one ``addmm_`` -
    where peft's makes ``(x A^T) B^T``, scales it and adds it out of place: two fresh
    activation-sized tensors and passes per layer forward, and the scale's pass again
    backward (``addmm``'s backward scales the adapters' small gradients instead). The base
    layer's forward is whatever it is (its packed copy inside :func:`packed_products`), and
    anything peft's forward handles otherwise (its extra arguments, adapters switched) goes
    to peft's."""
    peft_forward = type(mod).forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        plain = None if args or kwargs else plain_adapter(mod)
        # another dtype (autocast included) is the base layer's own product: peft's forward
        if plain is None or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return peft_forward(mod, x, *args, **kwargs)
        a_weight, b_weight, scale = plain
        rows = x.reshape(-1, x.shape[-1])  # [N, in]: 2-D, so the in-place add is on no view
        y = mod.get_base_layer()(rows)  # [N, out], fp32
        u = F.linear(rows, a_weight)  # [N, r]: the thin product
        y.addmm_(u, b_weight.t(), alpha=scale)  # y += scale * u B^T, in place
        return y.view(*x.shape[:-1], y.shape[-1])

    return forward


def _lora_layers(model: Any, frozen: list[nn.Linear]) -> list[Any]:
    """The plain peft LoRA layers of ``model`` whose base layer multiplies through its packed
    copy: those whose adapter :func:`_fused_lora_forward` adds in place."""
    bases = {id(m) for m in frozen}
    return [
        m
        for _, m in lora_linear_layers(model)
        if id(m.get_base_layer()) in bases and plain_adapter(m) is not None
    ]


def _applies(layers: list[nn.Linear], copies: int, model: Any) -> bool:
    """The kernel runs here, the weights are past the caches, and ``copies`` packed copies of
    them fit in the memory available with a margin (their copies already kept on ``model``
    count as available: they are the same copies; the store's others - a LoRA rollout's
    merged weights - do not)."""
    size = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    kept = getattr(model, WeightPacks.ATTR, None)
    reused = kept.nbytes([m.weight for m in layers]) if kept is not None else 0
    free = psutil.virtual_memory().available + reused
    return (
        bool(layers)
        and fp32_kernel() == "avx2"
        and size >= FP32_MIN_BYTES
        and free >= copies * size + MEMORY_MARGIN_BYTES
    )


def _switched(model: Any) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """The frozen and the trained linear layers of ``model`` that multiply through packed
    copies (each list empty where :func:`_applies` says no). Trained weights only in a full
    fine-tune: a LoRA run's trained adapters are thin products, left to MKL."""
    plain = [m for m in model.modules() if _plain_fp32(m)]  # each module once
    frozen = [m for m in plain if _frozen(m)]
    trained = [m for m in plain if m.weight.requires_grad]
    use_frozen = frozen if _applies(frozen, 2, model) else []
    use_trained = trained if not frozen and _applies(trained, 1, model) else []
    return use_frozen, use_trained


def rollout_packs(model: Any) -> WeightPacks | None:
    """The store the rollout's engine should pack ``model``'s weights through - the one the
    training pass reads - where the training pass multiplies through packed copies
    (:func:`packed_products`), else ``None`` (the engine packs for itself).

    A full fine-tune's rollout packs the trained weights the training pass then reads. A LoRA
    run's rollout multiplies merged weights (:mod:`~shoestring.engine.lora_view`), kept on the
    model and refreshed in place each rollout: through the store their packed copies are
    kept too and repacked into the same buffers, where a copy packed for each rollout is a
    fresh allocation of their size whose pages must first be faulted in; the frozen head's
    packed copy is the training pass's own."""
    frozen, trained = _switched(model)
    return WeightPacks.on(model, WeightPacks.ATTR) if frozen or trained else None


@contextlib.contextmanager
def packed_products(model: Any) -> Iterator[int]:
    """Inside: every plain fp32 linear layer of ``model`` (the head included) multiplies
    through its packed copy - frozen ones (a LoRA policy's base) and trained ones (a full
    fine-tune's), each where :func:`_applies` - and :func:`packed_head` finds the head's for
    the chunked head. Yields how many layers were switched (0 where the kernel does not
    apply: see the module doc). Outside: the model as it was; the packed copies stay on it
    for the next step."""
    frozen, trained = _switched(model)
    layers = [*frozen, *trained]
    if not layers:
        yield 0
        return
    store = WeightPacks.on(model, WeightPacks.ATTR)
    lora = _lora_layers(model, frozen)
    try:
        for m in layers:
            m.forward = _hooked_forward(m, store)  # type: ignore[method-assign]
            _ACTIVE[id(m.weight)] = store
        for m in lora:
            m.forward = _fused_lora_forward(m)
        yield len(layers)
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)  # back to the class's forward
            _ACTIVE.pop(id(m.weight), None)
        for m in lora:
            m.__dict__.pop("forward", None)  # peft's forward again


def packed_head(weight: torch.Tensor) -> PackedWeight | None:
    """The packed copy of ``weight`` where it is a weight inside the current
    :func:`packed_products` (the chunked head's logits use it), else ``None``."""
    store = _ACTIVE.get(id(weight))
    return store.get(weight) if store is not None else None
