"""The lean forward of an engine's model, kept between generation calls (``keep_packed``)."""

from __future__ import annotations

from typing import Any

from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.weight_packs import WeightPacks

__all__ = ["KeptDecoder"]


class KeptDecoder:
    """One model's lean forward, kept from one generation call to the next while nothing it
    was built from has changed.

    Why: building it packs a copy of every weight (2 GB for Qwen2.5-0.5B's shape in fp32),
    paid again by every call; an engine that serves many calls with the same
    weights - a server, a notebook, a benchmark's rounds - packs once, as vLLM and llama.cpp
    do at load time. It is opt-in (``EngineOptions.keep_packed``): the copy's memory stays
    between calls, and one kind of change escapes it. Any tracked change rebuilds it: another
    module in the tree, a weight replaced, reloaded, cast or moved, or updated in place through
    the tensor (an optimizer step bumps its version counter). A write through ``.data`` (as
    peft's in-place ``merge()`` does) bumps nothing and would leave the kept copy stale, and
    fingerprinting every weight's contents per call would cost a read of all of them - so the
    default rebuilds every call, and only a caller that knows its weights are fixed keeps it.

    With a caller's ``packs`` (:class:`~.weight_packs.WeightPacks`: a trainer whose weights
    change in place every step, and which multiplies through the same packed copies itself),
    a rebuild takes its packed weights from them: unchanged ones as they are, changed ones
    repacked in place.
    """

    def __init__(self, packs: WeightPacks | None = None) -> None:
        self.packs = packs
        self._key: tuple[Any, ...] | None = None
        self._decoder: LeanDecoder | None = None

    def get(
        self, model: Any, kernel: str = "auto", bf16_copies: bool = False
    ) -> LeanDecoder | None:
        key = (kernel, bf16_copies, *_built_from(model))
        if key != self._key:
            self._key, self._decoder = None, None  # drop the stale copy before packing anew
            self._decoder = LeanDecoder.build(
                model, kernel=kernel, packs=self.packs, bf16_copies=bf16_copies
            )
            self._key = key
        return self._decoder


def _built_from(model: Any) -> tuple[Any, ...]:
    """What a decoder built now would be built from: every module by identity, every weight
    and buffer by storage, in-place version, shape and dtype."""
    tensors = [*model.parameters(), *model.buffers()]
    return (
        tuple(id(m) for m in model.modules()),
        tuple((t.data_ptr(), t._version, t.shape, t.dtype, t.device) for t in tensors),
    )
