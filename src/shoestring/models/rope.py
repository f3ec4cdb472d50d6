"""Rotary position embeddings (RoPE) and their linear scaling, as the shoestring GPT uses them.

Why a module of its own: the GPT's attention, its decoder stack (which builds cos/sin once per
forward) and the lean decode loop (``engine/lean_decode.py``) all rotate queries and keys, and
must agree to the last bit; one definition keeps them from drifting apart. The layout is the
Hugging Face "rotate_half" convention, so weights and caches match Llama/Qwen2 code.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # a model directory ships this file; there shoestring may not be installed
    from shoestring.config import ConfigError
except ImportError:
    ConfigError = ValueError  # type: ignore[misc,assignment]


def rope_factor(value: Any) -> float:
    """Accept a float, None, or an HF-style ``{"type": "linear", "factor": f}`` dict."""
    if value is None:
        return 1.0
    if isinstance(value, dict):
        kind = value.get("rope_type", value.get("type", "linear"))
        if kind not in ("linear", "default"):
            raise ConfigError(f"rope_scaling type {kind!r} is not supported; only linear")
        return float(value.get("factor", 1.0))
    return float(value)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Swap the two halves of the last dim, negating the second: ``[x1, x2] -> [-x2, x1]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, h, T, d] by cos/sin [b, 1, T, d] (HF "rotate_half" convention)."""
    cos = cos.to(x.dtype)  # fp32 tables would promote a bf16 x to fp32
    sin = sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin  # pair i rotates with pair i + d/2 by pos * freq_i


def rope_cos_sin(
    position_ids: torch.Tensor,
    rope_dim: int,
    theta: float,
    scaling: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [b, 1, T, rope_dim] in fp32, computed per call.

    Computing them per forward is tiny and leaves nothing to keep in sync with checkpoints,
    devices or meta-device loading (a cached table would be one more buffer to move).
    ``scaling`` > 1 divides the positions (linear position interpolation).
    """
    # one frequency per dim pair: theta^(-2i/rope_dim), i = 0 .. rope_dim/2 - 1
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rope_dim, 2, device=device, dtype=torch.float32) / rope_dim)
    )
    pos = position_ids.to(device=device, dtype=torch.float32)
    if scaling != 1.0:
        pos = pos / scaling  # linear position interpolation
    freqs = pos[..., None] * inv_freq  # [b, T, rope_dim/2]: angle per position and pair
    # both halves get the same angles (rotate_half pairs i with i + d/2); [:, None] is the
    # head axis, so one table broadcasts over all heads: [b, 1, T, rope_dim]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()
