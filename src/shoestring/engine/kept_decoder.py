"""The lean forward of an engine's model, kept between generation calls (``keep_packed``)."""

from __future__ import annotations

from typing import Any

from shoestring.engine.lean_decode import LeanDecoder

__all__ = ["KeptDecoder"]


class KeptDecoder:
    """One model's lean forward, kept from one generation call to the next while nothing it
    was built from has changed.

    Why: building it packs a copy of every weight (0.7 s for Qwen2.5-0.5B's shape in fp32 on a
    2-core AVX2 host), paid again by every call; an engine that serves many calls with the same
    weights - a notebook, a server, a benchmark's rounds - packs once, as vLLM and llama.cpp
    do at load time. The price is that copy's memory between calls, so an engine whose model
    trains between calls (GRPO's rollouts) does not keep it (``EngineOptions.keep_packed``).
    Any change rebuilds it: another module in the tree, a weight replaced, reloaded, cast or
    moved, or updated in place (an optimizer step bumps the tensor's version counter).
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._decoder: LeanDecoder | None = None

    def get(self, model: Any) -> LeanDecoder | None:
        key = _built_from(model)
        if key != self._key:
            self._key, self._decoder = None, None  # drop the stale copy before packing anew
            self._decoder = LeanDecoder.build(model)
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
