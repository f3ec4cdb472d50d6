"""peft LoRA layers seen as plain linear layers with merged weights, for one generation call.

Why: a peft ``LoraLayer`` runs its base layer plus two small products, a cast and an add on
every call - per layer, per token. On a GPU a rollout's decode step is bound by such small
kernels and their Python, and GRPO samples with the adapters on. :func:`merged_lora` swaps each
LoRA linear layer for an ``nn.Linear`` whose weight is ``W + B A * scale`` while the call runs
and puts the LoRA layer back afterwards.

It never writes to the trained tensors (neither the base weight nor the adapters): the merged
weight is a separate tensor, kept on the model and refreshed in place at every call - so the
weights training sees stay bit-identical, and a captured CUDA graph that reads the merged
weight stays valid (same address) after the next optimizer step refreshes it. peft's own
``merge``/``unmerge`` would add and subtract the delta, which is not bit-exact in floating
point. The cost is one copy of the adapted weights (in the base dtype) and one ``B @ A`` per
layer per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from shoestring.engine.model_io import KeptOnModel

__all__ = ["MergedLinears", "lora_linear_layers", "merged_lora", "plain_adapter"]


def _mergeable(mod: Any) -> bool:
    """A peft LoRA layer over a plain ``nn.Linear`` whose adapters are plain LoRA (no DoRA, no
    LoRA bias): then ``W + get_delta_weight`` is exactly what its forward adds."""
    if not (hasattr(mod, "get_delta_weight") and hasattr(mod, "lora_A")):
        return False
    base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else None
    if type(base) is not nn.Linear:
        return False
    for name in mod.active_adapters:
        if getattr(mod, "use_dora", {}).get(name, False):
            return False
        if getattr(mod, "lora_bias", {}).get(name, False):
            return False
    return True


def lora_linear_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """``(qualified name, layer)`` of every LoRA linear layer :func:`merged_lora` can merge."""
    return [(name, m) for name, m in model.named_modules() if _mergeable(m)]


class MergedLinears(KeptOnModel):
    """The merged ``nn.Linear`` of each LoRA layer, kept between calls (see the module doc);
    a deep copy of the model gets an empty one."""

    def __init__(self) -> None:
        self.by_name: dict[str, nn.Linear] = {}

    def linear_for(self, name: str, mod: Any) -> nn.Linear:
        """The merged layer standing in for ``mod``, its weight refreshed from the adapters."""
        base: nn.Linear = mod.get_base_layer()
        lin = self.by_name.get(name)
        w = base.weight
        if lin is None or _layout(lin.weight) != _layout(w):
            lin = nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
            lin.weight = nn.Parameter(torch.empty_like(w), requires_grad=False)
            self.by_name[name] = lin
        lin.bias = base.bias  # shared: LoRA leaves the bias alone
        active = [a for a in mod.active_adapters if a in mod.lora_A]
        if mod.merged or getattr(mod, "disable_adapters", False) or not active:
            # merged already (the delta is in W) or adapters off: the base weight is the layer
            lin.weight.copy_(w)
            return lin
        with torch.no_grad():
            plain = _plain_adapter(mod, active, w)
            if plain is not None:
                # one fused pass: W + scale * (B @ A) written into the merged weight, where
                # the general path below makes several weight-sized passes
                a_weight, b_weight, scale = plain
                torch.addmm(w, b_weight, a_weight, alpha=scale, out=lin.weight)
                return lin
            delta = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
            for name_a in active:
                delta += mod.get_delta_weight(name_a).float()
            lin.weight.copy_(w.float() + delta)
        return lin


def plain_adapter(mod: Any) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(A, B, scale)`` of a peft LoRA layer whose output is exactly ``base(x) + scale * x A^T
    B^T`` with one plain adapter (see :func:`_plain_adapter`) - mergeable, not merged,
    adapters on, no variant (DoRA and the like) and no dropout - else None."""
    if not _mergeable(mod) or mod.merged or getattr(mod, "disable_adapters", False):
        return None
    active = [a for a in mod.active_adapters if a in mod.lora_A]
    if len(active) != 1 or active[0] in getattr(mod, "lora_variant", {}):
        return None
    dropout = mod.lora_dropout[active[0]]
    if not (type(dropout) is nn.Identity or (isinstance(dropout, nn.Dropout) and dropout.p == 0)):
        return None
    return _plain_adapter(mod, active, mod.get_base_layer().weight)


def _plain_adapter(
    mod: Any, active: list[str], w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(A, B, scale)`` when the layer's delta is exactly ``scale * B @ A`` in ``w``'s dtype -
    one active adapter, not transposed (``fan_in_fan_out``), adapters stored in the base
    weight's dtype - so :func:`torch.addmm` can merge it in one pass; else None."""
    if len(active) != 1 or getattr(mod, "fan_in_fan_out", False):
        return None
    name = active[0]
    lora_a, lora_b = mod.lora_A[name], mod.lora_B[name]
    if type(lora_a) is not nn.Linear or type(lora_b) is not nn.Linear:
        return None
    a_weight, b_weight = lora_a.weight, lora_b.weight
    if not (a_weight.dtype == b_weight.dtype == w.dtype) or a_weight.device != w.device:
        return None
    return a_weight, b_weight, float(mod.scaling[name])


def _layout(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.shape, t.dtype, t.device)


def _merged_linears(model: Any) -> MergedLinears:
    return MergedLinears.on(model, "_shoestring_merged_lora")


@contextlib.contextmanager
def merged_lora(model: nn.Module) -> Iterator[int]:
    """Inside: every mergeable LoRA layer of ``model`` replaced by a plain linear layer with
    the merged weight; yields how many were replaced. Outside: the model as it was."""
    layers = lora_linear_layers(model)
    if not layers:
        yield 0
        return
    store = _merged_linears(model)
    swapped: list[tuple[nn.Module, str, Any]] = []
    try:
        with torch.no_grad():
            for name, mod in layers:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                lin = store.linear_for(name, mod)
                setattr(parent, attr, lin)
                swapped.append((parent, attr, mod))
        yield len(swapped)
    finally:
        for parent, attr, mod in reversed(swapped):
            setattr(parent, attr, mod)
