"""TRL's per-token policy losses beyond PPO's clipped surrogate, and GSPO's sequence-level ratio.

Why a module of its own: ``loss.py`` holds the surrogate every GRPO loss type shares; the losses
here replace that surrogate (CISPO clips a detached importance weight, SAPO a soft sigmoid gate,
VESPO a Gamma-shaped sequence weight) and each is a formula a reader checks against its paper
and TRL 1.16's ``GRPOTrainer._compute_loss``, which ``tests/test_trl_losses.py`` runs on the
same tensors. Shapes: log-probs and masks [B, T], advantages [B, 1] (or [B, T]); a
sequence-level importance weight is [B, 1] and broadcasts over the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "LossVariant",
    "cispo_token_loss",
    "importance_log_weights",
    "sapo_token_loss",
    "vespo_sequence_weights",
    "vespo_token_loss",
]

#: VESPO's floor on the sequence weight, log(1e-8), as TRL (matching the paper's code)
_VESPO_LOG_FLOOR = math.log(1e-8)


@dataclass(frozen=True)
class LossVariant:
    """Which per-token loss to compute and the parameters only that loss reads (TRL's names and
    defaults). The clipping epsilons and ``beta`` are arguments of ``per_token_loss`` itself,
    since every loss type reads them."""

    loss_type: str = "dapo"
    importance_sampling_level: str = "token"
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0


def importance_log_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor | None, level: str
) -> torch.Tensor:
    """log pi/pi_old per token ([B, T], ``token``) or its mean over each sequence's completion
    tokens ([B, 1], ``sequence``: GSPO's length-normalised sequence ratio)."""
    if level == "token":
        return log_ratio
    if level == "sequence":
        if mask is None:
            raise ValueError("importance_sampling_level='sequence' needs the completion mask")
        m = mask.to(log_ratio.dtype)
        # clamp: an empty completion gets weight exp(0) = 1, not a division by zero
        return ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level={level!r}")


def cispo_token_loss(
    logps: torch.Tensor, ratio: torch.Tensor, adv: torch.Tensor, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1): ``-sg(min(ratio, epsilon_high)) * A * log pi``; returns ``(loss,
    clipped)``. The weight is detached, so every token keeps a gradient (REINFORCE scaled by
    the capped weight) instead of dropping out where PPO's clip is active. ``epsilon_high`` is
    the cap on the ratio itself (TRL's meaning; ScaleRL recommends 5.0)."""
    capped = torch.clamp(ratio, max=epsilon_high).detach()
    loss = -capped * adv * logps
    clipped = (ratio > epsilon_high) & (adv > 0)  # TRL's cispo_clip_ratio
    return loss, clipped


def sapo_token_loss(
    ratio: torch.Tensor, adv: torch.Tensor, temperature_pos: float, temperature_neg: float
) -> torch.Tensor:
    """SAPO: ``-(4 / tau) * sigmoid(tau * (ratio - 1)) * A``, a smooth gate in place of the hard
    clip (its gradient at ratio 1 equals the surrogate's and fades off-policy); ``tau`` is
    ``temperature_pos`` where the advantage is positive, ``temperature_neg`` elsewhere."""
    tau = torch.where(
        adv > 0, torch.full_like(adv, temperature_pos), torch.full_like(adv, temperature_neg)
    )
    return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv


@torch.no_grad()
def vespo_sequence_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, variant: LossVariant
) -> torch.Tensor:
    """VESPO's Gamma weight per sequence, [B, 1]: ``phi(w) = e^lambda * w^k * e^(-lambda*w)``
    (so phi(1) = 1) of the sequence ratio ``w = prod pi/pi_old`` (a sum in log space, not GSPO's
    mean), with ``(k, lambda)`` by the advantage's sign (``>= 0`` is positive, as TRL). Computed
    without gradient: it only scales the REINFORCE gradient."""
    m = mask.to(log_ratio.dtype)
    # per-token clamp then sum, then a floor of 1e-8 on w: TRL's (and the paper's) guards
    seq_log_w = (torch.clamp(log_ratio, -20.0, 20.0) * m).sum(-1, keepdim=True)
    log_w = torch.clamp(seq_log_w, _VESPO_LOG_FLOOR, 20.0)
    nonneg = adv >= 0
    k = torch.where(
        nonneg, torch.full_like(adv, variant.vespo_k_pos), torch.full_like(adv, variant.vespo_k_neg)
    )
    lam = torch.where(
        nonneg,
        torch.full_like(adv, variant.vespo_lambda_pos),
        torch.full_like(adv, variant.vespo_lambda_neg),
    ).clamp(min=1e-4)
    log_phi = lam + k * log_w - lam * torch.exp(log_w)
    # an overflow gives weight 0 (the sequence is dropped), never NaN in the gradient
    return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_token_loss(
    logps: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor | None,
    adv: torch.Tensor,
    variant: LossVariant,
) -> torch.Tensor:
    """VESPO: ``-phi(w) * A * log pi`` with the detached sequence weight of
    :func:`vespo_sequence_weights`."""
    if mask is None:
        raise ValueError("loss_type='vespo' needs the completion mask (its weight is per sequence)")
    return -vespo_sequence_weights(log_ratio, mask, adv, variant) * adv * logps
