"""The engine's KV cache: a preallocated cache layer and the surgery the decode loop does on a
cache - dropping finished rows, trimming leading all-padding columns, repeating a prompt's rows
for its samples.

Why its own module: transformers' ``DynamicCache`` grows by ``torch.cat`` every step and has no
notion of rows that finished; these functions know which cache types can be sliced safely and
leave every other type alone (the decode loop then keeps finished rows instead).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - transformers < 4.56 has no layer classes
    DynamicCache = DynamicLayer = None  # type: ignore[assignment,misc]

__all__ = [
    "PreallocatedLayer",
    "append_cache_rows",
    "can_append_rows",
    "cache_layers",
    "is_dynamic_cache",
    "make_cache",
    "repeat_cache_rows",
    "select_cache_rows",
    "trim_cache_left",
]


def cache_layers(cache: Any) -> list[Any] | None:
    """The per-layer objects of a transformers >= 4.56 ``Cache`` (``cache.layers``)."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list | tuple):
        return list(layers)
    return None


if DynamicLayer is not None:

    class PreallocatedLayer(DynamicLayer):  # type: ignore[misc,valid-type]
        """A full-attention cache layer that writes into a reserved buffer instead of growing
        by ``torch.cat``.

        ``DynamicLayer`` concatenates on every step, which allocates and copies the whole
        cache once per token and layer; on a CPU those large short-lived allocations (page
        faults included) cost more than the matmuls of a small model. This layer reserves
        ``prompt + max_new_tokens`` positions once and exposes ``keys``/``values`` as views of
        the filled part, so everything that reads a ``DynamicLayer`` keeps working. Dropping
        rows and trimming leading padding are O(buffer) and O(1) respectively.

        ``store_dtype`` keeps the cache in another dtype than the model computes in (fp32 for a
        bf16 model on a CPU, see ``cpu_attention.cpu_fp32_attention``).
        """

        def __init__(self, reserve: int = 0, store_dtype: torch.dtype | None = None) -> None:
            super().__init__()
            self.reserve = reserve
            self.store_dtype = store_dtype
            self._kbuf: torch.Tensor | None = None
            self._vbuf: torch.Tensor | None = None
            self._len = 0

        def _views(self) -> None:
            assert self._kbuf is not None and self._vbuf is not None
            # [B, H, filled, d] views of the [B, H, capacity, d] buffers: no copy
            self.keys = self._kbuf[:, :, : self._len]
            self.values = self._vbuf[:, :, : self._len]

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._len + key_states.shape[-2]  # positions filled after this write
            if self._kbuf is None or need > self._kbuf.shape[-2]:
                self._grow(key_states, value_states, need)
            assert self._kbuf is not None and self._vbuf is not None
            self._kbuf[:, :, self._len : need].copy_(key_states)
            self._vbuf[:, :, self._len : need].copy_(value_states)
            self._len = need
            self._views()
            return self.keys, self.values

        def append_column(self) -> tuple[torch.Tensor, torch.Tensor, int]:
            """Room for one more position per row, counted as filled: the key and value
            buffers [B, H, capacity, d] and the column the caller writes this token's keys
            and values into itself (the fused decode step writes them in place, no copy)."""
            assert self._kbuf is not None and self._vbuf is not None, "prefill first"
            need = self._len + 1
            if need > self._kbuf.shape[-2]:
                self._grow(self._kbuf, self._vbuf, need)
            assert self._kbuf is not None and self._vbuf is not None
            self._len = need
            self._views()
            return self._kbuf, self._vbuf, need - 1

        def _grow(self, k: torch.Tensor, v: torch.Tensor, need: int) -> None:
            old = 0 if self._kbuf is None else self._kbuf.shape[-2]
            cap = max(need + self.reserve, 2 * old)  # doubling: amortised O(1) per token
            b, h, _, d = k.shape
            dtype = self.store_dtype or k.dtype
            kbuf = k.new_empty((b, h, cap, d), dtype=dtype)
            vbuf = v.new_empty((b, h, cap, v.shape[-1]), dtype=dtype)
            if self._kbuf is not None and self._len:
                kbuf[:, :, : self._len].copy_(self._kbuf[:, :, : self._len])
                assert self._vbuf is not None
                vbuf[:, :, : self._len].copy_(self._vbuf[:, :, : self._len])
            self._kbuf, self._vbuf = kbuf, vbuf
            self.reserve = 0  # the reserve is for the first allocation; later growth doubles

        def place(
            self,
            rows: torch.Tensor,
            keys: torch.Tensor,
            values: torch.Tensor,
            batch: int,
            width: int,
        ) -> None:
            """Write a sub-batch's prefill (``rows`` of the full batch, right-aligned to
            ``width`` columns) into this layer; the buffer is zero-filled first so the left
            padding holds finite values (masked, but 0 * NaN would still be NaN)."""
            if self._kbuf is None:
                self.lazy_initialization(keys, values)
                b, h, _, d = keys.shape
                dtype = self.store_dtype or keys.dtype
                self._kbuf = keys.new_zeros((batch, h, width + self.reserve, d), dtype=dtype)
                self._vbuf = values.new_zeros(
                    (batch, h, width + self.reserve, values.shape[-1]), dtype=dtype
                )
                self.reserve = 0
                self._len = width
            assert self._kbuf is not None and self._vbuf is not None
            w = keys.shape[-2]
            idx = rows.to(self._kbuf.device)
            # right-aligned: every row's last prompt token sits in column width - 1
            self._kbuf[idx, :, width - w : width] = keys.to(self._kbuf.dtype)
            self._vbuf[idx, :, width - w : width] = values.to(self._vbuf.dtype)
            self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep rows ``indices``; only the filled positions are copied (the reserve past
            them is allocated, not copied: early in a batch it is most of the buffer)."""
            if self._kbuf is None or self._vbuf is None:
                return
            idx = indices.to(self._kbuf.device)
            self._kbuf = self._select(self._kbuf, idx)
            self._vbuf = self._select(self._vbuf, idx)
            self._views()

        def _select(self, buf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if 2 * self._len >= buf.shape[2]:  # mostly filled: one plain copy is cheaper
                return buf.index_select(0, idx)
            out = buf.new_empty((idx.numel(), *buf.shape[1:]))
            torch.index_select(buf[:, :, : self._len], 0, idx, out=out[:, :, : self._len])
            return out

        def append_rows(self, other: PreallocatedLayer) -> None:
            """Add ``other``'s rows (a later prefill) below this layer's, both right-aligned
            to the wider of the two (the narrower side gets zero columns on the left, which
            the caller's mask covers as padding): continuous batching's refill. The filled
            positions are copied once; the free capacity past them is kept."""
            if other._kbuf is None or other._vbuf is None:
                return
            if self._kbuf is None or self._vbuf is None:
                self.lazy_initialization(other.keys, other.values)
                self._kbuf, self._vbuf, self._len = other._kbuf, other._vbuf, other._len
                self._views()
                return
            width = max(self._len, other._len)
            # free columns after the merge: the larger of the two, so neither side must grow
            cap = max(self._kbuf.shape[2] - self._len, other._kbuf.shape[2] - other._len)
            self._kbuf = _stack_right_aligned(self._kbuf, self._len, other._kbuf, other._len, cap)
            self._vbuf = _stack_right_aligned(self._vbuf, self._len, other._vbuf, other._len, cap)
            self._len = width
            self._views()

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._kbuf is None or self._vbuf is None:
                return
            self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
            self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
            self._views()

        def trim_left(self, n: int) -> None:
            """Forget the first ``n`` positions (a view: no copy)."""
            if self._kbuf is None or self._vbuf is None or n <= 0:
                return
            self._kbuf = self._kbuf[:, :, n:]
            self._vbuf = self._vbuf[:, :, n:]
            self._len -= n
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            if self._kbuf is not None:
                self._len = max(0, self._len + tokens_to_remove)
                self._views()

        def reset(self) -> None:
            self._kbuf = self._vbuf = None
            self._len = 0
            super().reset()

else:  # pragma: no cover
    PreallocatedLayer = None  # type: ignore[assignment,misc]


def _stack_right_aligned(
    a: torch.Tensor, a_len: int, b: torch.Tensor, b_len: int, free: int
) -> torch.Tensor:
    """Rows of ``a`` then rows of ``b`` ([rows, heads, positions, d] buffers filled up to
    ``a_len``/``b_len``), filled parts right-aligned to the wider, zeros on their left, and
    ``free`` unfilled positions after them."""
    width = max(a_len, b_len)
    out = a.new_empty((a.shape[0] + b.shape[0], a.shape[1], width + free, a.shape[3]))
    ra = a.shape[0]
    # zeros, not empty: the masked padding must hold finite values (0 * NaN is NaN)
    out[:ra, :, : width - a_len].zero_()
    out[:ra, :, width - a_len : width].copy_(a[:, :, :a_len])
    out[ra:, :, : width - b_len].zero_()
    out[ra:, :, width - b_len : width].copy_(b[:, :, :b_len])
    return out


def can_append_rows(cache: Any) -> bool:
    """True when every layer of ``cache`` is a :class:`PreallocatedLayer` (the only kind
    :func:`append_cache_rows` extends)."""
    layers = cache_layers(cache)
    return (
        PreallocatedLayer is not None
        and bool(layers)
        and all(isinstance(x, PreallocatedLayer) for x in layers or [])
    )


def append_cache_rows(cache: Any, other: Any) -> bool:
    """Append ``other``'s rows to ``cache``, right-aligned (see
    :meth:`PreallocatedLayer.append_rows`); False, leaving ``cache`` untouched, unless every
    layer of both is a :class:`PreallocatedLayer`."""
    layers, extra = cache_layers(cache), cache_layers(other)
    if PreallocatedLayer is None or not layers or not extra or len(layers) != len(extra):
        return False
    if not all(isinstance(x, PreallocatedLayer) for x in layers + extra):
        return False
    for dst, src in zip(layers, extra, strict=True):
        dst.append_rows(src)
    return True


def make_cache(model: Any, reserve: int, store_dtype: torch.dtype | None = None) -> Any | None:
    """A ``DynamicCache`` for ``model`` whose full-attention layers are preallocated
    (:class:`PreallocatedLayer`), or ``None`` to let the model build its own cache.

    Built from the model config like ``model.generate`` does, so sliding-window and other
    special layers keep their own classes; only plain ``DynamicLayer`` entries are swapped.
    """
    if DynamicCache is None or PreallocatedLayer is None:
        return None
    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    except Exception:  # noqa: BLE001 - an exotic config: let the model make its own cache
        return None
    layers = cache_layers(cache)
    if layers is None:
        return None
    if layers:
        cache.layers = [  # exact type: a DynamicLayer subclass (sliding window) keeps its own
            PreallocatedLayer(reserve, store_dtype) if type(layer) is DynamicLayer else layer
            for layer in layers
        ]
    elif getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        # a cache that makes its layers lazily, one per model layer on first update
        cache.layer_class_to_replicate = lambda: PreallocatedLayer(reserve, store_dtype)
    else:
        return None
    return cache


def is_dynamic_cache(cache: Any) -> bool:
    """True for a transformers ``DynamicCache`` (the only kind the lean decode step updates)."""
    return DynamicCache is not None and isinstance(cache, DynamicCache)


def _sliceable(layer: Any) -> bool:
    return DynamicLayer is not None and isinstance(layer, DynamicLayer)


def _trimmable(layer: Any) -> bool:
    return (PreallocatedLayer is not None and isinstance(layer, PreallocatedLayer)) or (
        DynamicLayer is not None and type(layer) is DynamicLayer
    )


def select_cache_rows(cache: Any, index: torch.Tensor) -> Any | None:
    """Keep only the batch rows in ``index`` of a KV cache; returns the cache, or ``None`` when
    this cache type cannot be sliced (the caller then keeps finished rows instead).

    Handles transformers ``DynamicCache`` (every ``DynamicLayer`` subclass - preallocated,
    sliding-window, indexed - through its ``batch_select_indices``) and legacy tuple caches
    ``((k, v), ...)``. Anything else (static, quantised, offloaded, linear-attention states)
    is left alone rather than risk corrupting it halfway.
    """
    if cache is None:
        return None
    if isinstance(cache, tuple | list):
        try:
            return type(cache)(
                tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache
            )
        except (AttributeError, TypeError, RuntimeError):
            return None
    layers = cache_layers(cache)
    if DynamicCache is None or not isinstance(cache, DynamicCache) or layers is None:
        return None
    if getattr(cache, "offloading", False) or not all(_sliceable(layer) for layer in layers):
        return None
    for layer in layers:
        if getattr(layer, "is_initialized", True):  # a layer not yet written has no rows
            layer.batch_select_indices(index)
    return cache


def trim_cache_left(cache: Any, n: int) -> bool:
    """Drop the first ``n`` positions of every layer (columns that are padding in every row
    left after compaction). Only for full-attention dynamic layers; returns success."""
    if n <= 0:
        return True
    layers = cache_layers(cache)
    if DynamicCache is None or not isinstance(cache, DynamicCache) or not layers:
        return False
    if not all(_trimmable(layer) for layer in layers):
        return False
    for layer in layers:
        if isinstance(layer, PreallocatedLayer):
            layer.trim_left(n)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, n:, :]  # [B, H, T - n, d]: a view, no copy
            layer.values = layer.values[:, :, n:, :]
    return True


def repeat_cache_rows(cache: Any, repeats: int) -> Any | None:
    """Repeat every row ``repeats`` times (row i -> rows i*r .. i*r+r-1); None if unsupported."""
    if repeats == 1:
        return cache
    if isinstance(cache, tuple | list):
        return type(cache)(
            tuple(t.repeat_interleave(repeats, dim=0) for t in layer) for layer in cache
        )
    layers = cache_layers(cache)
    if DynamicCache is None or not isinstance(cache, DynamicCache) or layers is None:
        return None
    if not all(_sliceable(layer) for layer in layers):
        return None
    cache.batch_repeat_interleave(repeats)
    return cache
