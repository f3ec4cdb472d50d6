"""A KV cache of fixed shape for the static decode path, and the buckets its shapes come from.

Why fixed shapes: a decode step can be captured once as a CUDA graph and replayed only if every
tensor it touches keeps its address and shape from one step to the next. The dynamic engine's
cache grows (or is sliced when rows finish), so its steps cannot be replayed; this cache holds
``[rows, kv_heads, width, head_dim]`` buffers per layer for the whole batch, and a step writes
its keys and values into column ``col`` - a one-element device tensor the step itself advances,
so no host value enters the graph.

Shapes come from buckets (rows rounded up to a power of two, or above :data:`ROW_STEP` to a
multiple of it; width to a multiple of :data:`WIDTH_ALIGN`), so the next batch with other
prompt lengths or a few rows fewer reuses the same buffers and the same captured graph instead
of capturing a new one.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ROW_STEP", "WIDTH_ALIGN", "StaticKVCache", "row_bucket", "width_bucket"]

# Cache columns are allocated in multiples of this many positions: prompts of 90 and of 120
# tokens with 256 new tokens then share one shape (and one captured graph).
WIDTH_ALIGN = 128
# Row buckets are powers of two up to this many rows, multiples of it above.
ROW_STEP = 64


def row_bucket(rows: int) -> int:
    """The padded batch size for ``rows`` rows: the next power of two up to
    :data:`ROW_STEP`, then the next multiple of it (150 rows pad to 192, not 256: the cache and
    the sampler's buffers grow with the padded rows)."""
    if rows < 1:
        raise ValueError(f"a batch needs at least one row, got {rows}")
    if rows <= ROW_STEP:
        return 1 << (rows - 1).bit_length()  # next power of two (5 -> 8, 8 -> 8)
    return -(-rows // ROW_STEP) * ROW_STEP  # ceil to a multiple of ROW_STEP


def width_bucket(positions: int) -> int:
    """Cache columns for ``positions`` positions, rounded up to :data:`WIDTH_ALIGN`."""
    return -(-positions // WIDTH_ALIGN) * WIDTH_ALIGN


class StaticKVCache:
    """Per-layer key/value buffers of one fixed shape; the step writes column :attr:`col`.

    It offers the one method the lean decode step calls on a cache, ``update(k, v, layer)``,
    which writes the new token's keys and values at column ``col`` of every row and returns
    the whole buffers (the step's attention mask hides the columns not written yet).
    """

    def __init__(
        self,
        layer_shapes: list[tuple[int, int, int]],
        rows: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        """``layer_shapes`` holds ``(kv_heads, key_dim, value_dim)`` of each layer."""
        self.rows = rows
        self.width = width
        self.dtype = dtype
        self.layer_shapes = list(layer_shapes)
        self.keys = [
            torch.zeros((rows, h, width, dk), dtype=dtype, device=device)
            for h, dk, _ in layer_shapes
        ]
        self.values = [
            torch.zeros((rows, h, width, dv), dtype=dtype, device=device)
            for h, _, dv in layer_shapes
        ]
        # a device tensor, not an int: the captured step reads and advances it on the device
        self.col = torch.zeros(1, dtype=torch.long, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold (for the memory line of a benchmark)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *_: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one token's keys/values ``[rows, kv_heads, 1, dim]`` at column :attr:`col`."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # dim 2 is the position; index_copy_ takes the column as a tensor, so no host sync
        keys.index_copy_(2, self.col, key_states.to(keys.dtype))
        values.index_copy_(2, self.col, value_states.to(values.dtype))
        return keys, values

    def load_prompts(self, layers: list[tuple[torch.Tensor, torch.Tensor]], repeats: int) -> None:
        """Copy a prefill's keys/values (per layer ``[prompts, kv_heads, W, dim]``, left-padded)
        into columns ``0..W`` of the first ``prompts * repeats`` rows, each prompt's row
        repeated ``repeats`` times in a row (its samples)."""
        if len(layers) != len(self.keys):
            raise ValueError(f"prefill has {len(layers)} layers, the cache {len(self.keys)}")
        for dst_k, dst_v, (k, v) in zip(self.keys, self.values, layers, strict=True):
            if repeats > 1:
                k, v = k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0)
            n, _, w, _ = k.shape
            dst_k[:n, :, :w].copy_(k)  # rows past n are bucket padding: left as zeros
            dst_v[:n, :, :w].copy_(v)
