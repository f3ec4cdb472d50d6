"""Packed copies of a model's fp32 weights for shoestring's AVX2 kernel, kept on the model from
one step to the next and shared by everything that multiplies through them.

Why: packing copies a weight into the kernel's panels (:mod:`.sgemm_avx2`); for Qwen2.5-0.5B's
shape that is 2 GB per pass over the model. A GRPO step multiplies the same weights twice - the
rollout's decode steps (the engine's lean step) and then the training pass's forward products
(``rl/packed_products.py``) - and a full fine-tune changes every weight once per step, in place.
So one store packs each weight once per change and both read it; a weight updated in place (an
optimizer step bumps its version counter) is repacked into the buffer it already had, which
costs a read and a write of the weight instead of a fresh allocation whose pages the kernel
must first fault in. A LoRA run's frozen weights are packed once for the run.

Each copy is keyed by its weight's identity (a weak reference: a weight that is gone is never
mistaken for a new one at the same address), in-place version and shape; the transposed copy
(``W^T``, for an input's gradient ``g W``) is a separate entry made only when asked for. A deep
copy or pickle of the model gets an empty store (:class:`~.model_io.KeptOnModel`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from shoestring.engine.model_io import KeptOnModel
from shoestring.engine.packed_linear import PackedWeight, pack_weight
from shoestring.engine.sgemm_avx2 import pack as avx2_pack

__all__ = ["WeightPacks"]


@dataclass
class _Entry:
    ref: weakref.ref[torch.Tensor]
    version: int
    shape: tuple[int, ...]
    packed: PackedWeight


class WeightPacks(KeptOnModel):
    """The AVX2-packed copies of a model's weights (and, where asked, of their transposes);
    found or made on a model with ``WeightPacks.on(model, WeightPacks.ATTR)``."""

    ATTR = "_shoestring_weight_packs"

    def __init__(self) -> None:
        self.packs: dict[tuple[int, bool], _Entry] = {}

    def get(self, weight: torch.Tensor, transposed: bool = False) -> PackedWeight:
        """``weight`` [out, in] (or its transpose), fp32, packed for the AVX2 kernel as it is
        now."""
        if weight.dtype != torch.float32:
            raise ValueError(f"WeightPacks packs fp32 weights (AVX2 kernel), not {weight.dtype}")
        key = (id(weight), transposed)
        entry = self.packs.get(key)
        shape = tuple(weight.shape)
        if entry is not None and (entry.ref() is not weight or entry.shape != shape):
            del self.packs[key]  # another tensor, or a reshaped one: a new copy
            entry = None
        if entry is not None and entry.version == weight._version:
            return entry.packed  # unchanged since it was packed
        source = weight.detach().t() if transposed else weight.detach()
        if entry is not None:  # updated in place: the same layout, into the same buffer
            avx2_pack(source, out=entry.packed.data)
            entry.version = weight._version
            return entry.packed
        self._drop_dead()
        packed = pack_weight(source, "avx2")  # fp32: a changed weight repacks into it
        self.packs[key] = _Entry(weakref.ref(weight), weight._version, shape, packed)
        return packed

    def _drop_dead(self) -> None:
        """Forget the copies of weights that no longer exist (a replaced model's)."""
        for key in [k for k, e in self.packs.items() if e.ref() is None]:
            del self.packs[key]

    def nbytes(self, weights: list[torch.Tensor] | None = None) -> int:
        """The memory the kept copies hold: all of them, or those of ``weights`` (both
        orientations)."""
        ids = None if weights is None else {id(w) for w in weights}
        return sum(
            e.packed.nbytes
            for (i, _), e in self.packs.items()
            if ids is None or (i in ids and e.ref() is not None)
        )
