"""Linear layers with weights prepacked for oneDNN, for the CPU's bf16 decode step.

Why: on a CPU, ``F.linear`` on bf16 weights goes through oneDNN, which first reorders the
weight into its blocked layout - on every call. A decode step multiplies a few rows (one token
per sequence) by every weight of the model, so that reorder costs as much as the product
itself. Reordering once per generation call (``torch.ops.mkldnn._reorder_linear_weight``) and
multiplying with the packed weight (``torch.ops.mkldnn._linear_pointwise``, the pair
``torch.compile`` uses for frozen CPU models) runs the same kernel without the per-call reorder:
the result is bit-identical to ``F.linear`` on a contiguous input, which a probe checks before
packing is used at all. ``benchmarks/decode_profile.py`` measures both against each other.

Only bf16 weights are packed: fp32 packed products sum in another order (not bit-identical),
and the engine keeps its fp32 greedy outputs identical to the model's own forward. The packed
copy costs the weights' size in memory for the length of one generation call, so packing is
skipped when the host has less than that to spare.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["can_pack", "pack_weight", "packed_linear", "packing_available"]

# Packed weights are built for this many rows (a hint to oneDNN; other row counts work).
ROWS_HINT = 16
# Keep this much memory free beyond the packed copy.
MEMORY_MARGIN_BYTES = 2**30


@functools.cache
def packing_available() -> bool:
    """True where the packing ops exist, this CPU runs bf16 oneDNN kernels, and a packed
    product equals ``F.linear`` exactly on a probe (bias included)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(48, 40, generator=gen).to(torch.bfloat16)
        b = torch.randn(48, generator=gen).to(torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT)
        for rows in (1, 3, ROWS_HINT, 37):  # below, at and above the hint, odd sizes too
            x = torch.randn(rows, 1, 40, generator=gen).to(torch.bfloat16)
            if not torch.equal(packed_linear(x, packed, b), F.linear(x, w, b)):
                return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def can_pack(weights: list[torch.Tensor]) -> bool:
    """Whether these weights (all bf16, on a CPU) should be packed: the ops work here and
    the copy fits in the memory available now with a margin."""
    if not weights or any(w.device.type != "cpu" or w.dtype != torch.bfloat16 for w in weights):
        return False
    if not packing_available():
        return False
    need = sum(w.numel() * w.element_size() for w in weights) + MEMORY_MARGIN_BYTES
    try:
        import psutil

        return psutil.virtual_memory().available > need
    except Exception:  # pragma: no cover - psutil is a dependency; be safe without it
        return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight [out, in] reordered into oneDNN's blocked layout (a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the weight from :func:`pack_weight`."""
    # "none", [None], "": no fused post-op (the pointwise op's activation slot is unused)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [None], "")
