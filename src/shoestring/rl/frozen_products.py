"""The frozen weights of a LoRA policy, multiplied through the engine's packed fp32 kernel in
the training pass.

Why: in a LoRA run the base weights (and a tied head) never change, and a GRPO step's training
pass multiplies a few hundred rows - a prompt and its group's completions - by every one of them
twice: ``x W^T`` forward and ``g W`` for the input's gradient backward (a frozen weight needs no
gradient of its own; ``g W`` takes the packed transpose where the kernel is faster there,
:data:`TRANSPOSED_MAX_REDUCTION`). On the ``avx2`` host class shoestring's packed fp32 kernel
(:mod:`shoestring.engine.sgemm_avx2`) runs such products well ahead of ``F.linear``'s MKL sgemm
(``benchmarks/linear_kernels.py --rows 512``), and frozen weights can be packed once per run
instead of once per step. So, inside :func:`frozen_products`, every frozen fp32 ``nn.Linear``
of the policy multiplies through its packed weight and its packed transpose, and
:func:`packed_head` hands the chunked head (``rl/logprobs.py``) the packed head for its logits
(its backward, a reduction over the 151,936-entry vocabulary, stays MKL's).

Where it applies, and why not elsewhere: the kernel's choice is the engine's
(:func:`~shoestring.engine.packed_linear.fp32_kernel`, ``auto``: the ``avx2`` class), fp32
weights on a CPU, no autocast, weights past the caches in all
(:data:`~shoestring.engine.packed_linear.FP32_MIN_BYTES`: small models keep ``F.linear``'s
bits), and memory for both packed copies. The products sum in another order than MKL's, within
the fp32 policy of ``engine/packed_linear.py``; the tests compare the loss and the adapters'
gradients with and without. A full fine-tune trains every weight, so nothing is frozen and
nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from torch import nn

from shoestring.engine.model_io import KeptOnModel
from shoestring.engine.packed_linear import (
    FP32_MIN_BYTES,
    MEMORY_MARGIN_BYTES,
    PackedWeight,
    fp32_kernel,
    pack_weight,
    packed_linear,
)

__all__ = ["FrozenPacks", "frozen_products", "packed_head"]

# the frozen weights inside frozen_products, by identity: where their packed copies are kept
_ACTIVE: dict[int, tuple[FrozenPacks, str]] = {}


# The input's gradient g W goes through the packed W^T where its reduction (W's output
# features) is at most this long: at Qwen2.5-0.5B's shape down gains there and q/k/v and o are
# about even with MKL's mm; gate/up's 4864-long reductions are slower through the kernel, so
# they stay MKL's and their transposes' memory is not spent. Measured with
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


class FrozenPacks(KeptOnModel):
    """The packed copies of a model's frozen weights (and of their transposes), kept on the
    model between steps and made at their first use: a head multiplied only by the chunked
    head's logits never packs its transpose.

    Each is keyed by its weight's storage, in-place version and shape, and packed anew when
    that changes (a reload, a cast). A deep copy of the model (``write_model``'s merge) gets
    an empty one."""

    def __init__(self) -> None:
        self.packs: dict[tuple[str, bool], tuple[tuple[Any, ...], PackedWeight]] = {}

    def get(self, name: str, weight: torch.Tensor, transposed: bool) -> PackedWeight:
        """``weight`` [out, in] (or its transpose) packed for the AVX2 kernel."""
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        found = self.packs.get((name, transposed))
        if found is None or found[0] != key:
            self.packs.pop((name, transposed), None)  # drop a stale copy before packing anew
            with torch.no_grad():
                packed = pack_weight(weight.t() if transposed else weight, "avx2")
            found = (key, packed)
            self.packs[(name, transposed)] = found
        return found[1]


def _frozen(m: Any) -> bool:
    """A plain fp32 ``nn.Linear`` on a CPU that trains nothing, with no hooks."""
    if type(m) is not nn.Linear or m.weight.requires_grad:
        return False
    if m.bias is not None and m.bias.requires_grad:
        return False
    if m.weight.dtype != torch.float32 or m.weight.device.type != "cpu":
        return False
    return not (m._forward_hooks or m._forward_pre_hooks)


def _hooked_forward(m: nn.Linear, store: FrozenPacks, name: str) -> Callable[..., torch.Tensor]:
    """``m``'s forward through its packed copies."""

    def transposed() -> PackedWeight:
        return store.get(name, m.weight, transposed=True)

    use_transposed = m.out_features <= TRANSPOSED_MAX_REDUCTION

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return F.linear(x, m.weight, m.bias)  # another dtype: the layer's own product
        packed = store.get(name, m.weight, transposed=False)
        back = transposed if use_transposed else None
        return _FrozenLinear.apply(x, m.weight, packed, back, m.bias)

    return forward


@contextlib.contextmanager
def frozen_products(model: Any) -> Iterator[int]:
    """Inside: every frozen fp32 linear layer of ``model`` (the head included) multiplies
    through its packed copy, and :func:`packed_head` finds the head's for the chunked head.
    Yields how many layers were switched (0 where the kernel does not apply: see the module
    doc). Outside: the model as it was; the packed copies stay on it for the next step."""
    layers = [(name, m) for name, m in model.named_modules() if _frozen(m)]
    size = sum(m.weight.numel() * m.weight.element_size() for _, m in layers)
    if (
        not layers
        or fp32_kernel() != "avx2"
        or size < FP32_MIN_BYTES
        or psutil.virtual_memory().available < 2 * size + MEMORY_MARGIN_BYTES
    ):
        yield 0
        return
    store = FrozenPacks.on(model, "_shoestring_frozen_packs")
    try:
        for name, m in layers:
            m.forward = _hooked_forward(m, store, name)  # type: ignore[method-assign]
            _ACTIVE[id(m.weight)] = (store, name)
        yield len(layers)
    finally:
        for _, m in layers:
            m.__dict__.pop("forward", None)  # back to the class's forward
            _ACTIVE.pop(id(m.weight), None)


def packed_head(weight: torch.Tensor) -> PackedWeight | None:
    """The packed copy of ``weight`` where it is a frozen weight inside the current
    :func:`frozen_products` (the chunked head's logits use it), else ``None``."""
    found = _ACTIVE.get(id(weight))
    return found[0].get(found[1], weight, transposed=False) if found is not None else None
