"""Padding token rows into a batch: one definition for the engine, GRPO and anything else.

Prompts are padded on the left (every row's next token is then in the last column, which is
what batched decoding needs); completions on the right (they all start at the same column).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pad_left", "pad_right", "positions_from_mask"]


def _pad(rows: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # at least one column, even when every row is empty
    width = max(1, max((len(r) for r in rows), default=0))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not len(r):
            continue
        cols = slice(width - len(r), width) if left else slice(0, len(r))  # the row's real tokens
        ids[i, cols] = torch.tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` with every row right-aligned; padding is ``pad`` with mask 0."""
    return _pad(rows, pad, left=True)


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` with every row left-aligned (at least one column, even if all empty)."""
    return _pad(rows, pad, left=False)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (as ``generate`` does); padding gets 1."""
    # cumsum - 1 numbers the real tokens 0, 1, ...; pads get any valid id (masked anyway)
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
