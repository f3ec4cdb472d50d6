"""The learning-rate schedule of every trainer: linear warmup, then a decay to a floor.

``train`` uses cosine decay to ``min_lr_ratio``; GRPO uses TRL's names (linear, cosine,
constant) decaying to 0. One function, so the two cannot drift apart.
"""

from __future__ import annotations

import math

__all__ = ["DECAYS", "lr_multiplier"]

DECAYS = ("linear", "cosine", "constant")


def lr_multiplier(
    step: int, total: int, warmup: int, decay: str = "cosine", floor: float = 0.0
) -> float:
    """Multiplier of the peak learning rate at 0-based ``step`` of ``total``.

    Linear warmup over ``warmup`` steps to 1, then ``decay`` from 1 to ``floor`` at ``total``:
    ``linear`` (TRL's default), ``cosine`` or ``constant`` (stays at 1).
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, not {decay!r}")
    if warmup and step < warmup:
        return (step + 1) / warmup  # step 0 already moves the weights, so it starts above 0
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return floor + (1 - floor) * shape
