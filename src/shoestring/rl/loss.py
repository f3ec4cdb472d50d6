"""GRPO's loss maths: group-relative advantages, the per-token loss, aggregation.

Why pure functions on tensors: the numbers that decide what GRPO learns are checked by the tests
against hand-computed values and against TRL's own loss code on the same tensors
(``tests/test_trl_losses.py``), independent of models, sampling and the trainer. Meanings follow
TRL 1.16 (``scale_rewards``, ``epsilon``/``epsilon_high``, ``beta`` with the k3 KL estimator,
every ``loss_type`` and ``importance_sampling_level``), so a TRL configuration means the same
thing here. The per-token losses other than PPO's surrogate live in ``loss_variants.py``.
"""

from __future__ import annotations

import torch

from shoestring.rl.loss_variants import (
    LossVariant,
    cispo_token_loss,
    importance_log_weights,
    sapo_token_loss,
    vespo_token_loss,
)

__all__ = [
    "SOFT_LOSS_TYPES",
    "SURROGATE_LOSS_TYPES",
    "aggregate_loss",
    "clip_counts",
    "compute_advantages",
    "nanstd",
    "per_token_loss",
]

#: the loss types whose per-token loss is PPO's clipped surrogate (they differ in aggregation);
#: the others (``cispo``, ``sapo``, ``vespo``) are in ``loss_variants.py``
SURROGATE_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
#: the loss types with no hard clip (a soft gate or weight): they report no clip fraction
SOFT_LOSS_TYPES = ("sapo", "vespo")


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample std (Bessel-corrected, as TRL's ``nanstd``) ignoring NaNs."""
    if dim is None:
        x = x.flatten()
        dim = 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    valid = (~torch.isnan(x)).sum(dim=dim)  # the count of non-NaN entries per reduction
    # n - 1 (Bessel); clamp: a single valid value gives std 0, not a division by zero
    var = torch.nansum((x - mean) ** 2, dim=dim) / (valid - 1).clamp(min=1)
    return var.sqrt()


def compute_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(advantages, rewards, is_std_zero)`` for ``rewards_per_func`` of shape [N, F].

    As TRL (``multi_objective_aggregation='sum_then_normalize'``): weighted sum over functions
    (NaN = not scored by that function); completions no function scored get advantage 0;
    advantage = reward - group mean, divided by (std + 1e-4) of the group (``group``) or of the
    whole batch (``batch``), or not divided (``none``). ``is_std_zero`` is per completion
    whether its group's std is zero (for the 'groups without signal' metric).
    """
    unscorable = torch.isnan(rewards_per_func).all(dim=1)  # [N]: no function scored it
    # [N, F] * [1, F] -> sum over functions -> [N]; NaN (not scored) counts as 0
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = float("nan")  # nansum gave 0; NaN keeps it out of the group stats
    # [N] -> [prompts, G]: a prompt's completions are adjacent rows
    grouped = rewards.view(-1, num_generations)
    # per-group stats back to one value per completion: [prompts] -> [N]
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if num_generations > 1:
        group_std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    else:
        group_std = torch.zeros_like(rewards)
    if scale_rewards == "batch":
        std = (
            nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        )
    elif scale_rewards in ("group", "none"):
        std = group_std
    else:
        raise ValueError(f"scale_rewards={scale_rewards!r}")
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)  # + 1e-4 (TRL's): a group of equal rewards gives 0, not NaN
    adv = torch.nan_to_num(adv, nan=0.0)  # unscorable completions teach nothing
    is_std_zero = torch.isclose(group_std, torch.zeros_like(group_std))
    return adv, rewards, is_std_zero


def per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    variant: LossVariant | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The per-token loss of ``variant`` (+ ``beta`` * k3 KL), shapes [B, T] (or [B, 1] for a
    sequence-level loss without KL, broadcast by :func:`aggregate_loss`); returns ``(loss,
    clipped, kl)``. ``clipped`` marks where the loss's hard clip is active (PPO's bounds; CISPO's
    cap), None for the soft losses (SAPO, VESPO) that have none. ``variant`` None is the clipped
    surrogate at token level; ``mask`` is needed by sequence-level weights and VESPO."""
    v = variant or LossVariant()
    # [B] -> [B, 1]: a sequence's advantage applies to each of its tokens
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = logps - old_logps
    ratio = torch.exp(importance_log_weights(log_ratio, mask, v.importance_sampling_level))
    clipped: torch.Tensor | None = None
    if v.loss_type == "cispo":
        loss, clipped = cispo_token_loss(logps, ratio, adv, epsilon_high)
    elif v.loss_type == "sapo":
        loss = sapo_token_loss(ratio, adv, v.sapo_temperature_pos, v.sapo_temperature_neg)
    elif v.loss_type == "vespo":
        loss = vespo_token_loss(logps, log_ratio, mask, adv, v)
    elif v.loss_type in SURROGATE_LOSS_TYPES:
        clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
        # PPO's pessimistic bound: the smaller objective, negated into a loss
        loss = -torch.min(ratio * adv, clipped_ratio * adv)
        # the clip is active only where it lowers the objective: below for adv < 0, above for > 0
        clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    else:
        raise ValueError(f"loss_type={v.loss_type!r}")
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs reference log-probs")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1  # k3 estimator: unbiased, always >= 0
        loss = loss + beta * kl
    return loss, clipped, kl


def aggregate_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    max_completion_length: int,
    accumulation_steps: int,
    step_tokens: float,
) -> torch.Tensor:
    """One micro-batch's contribution to the step loss (gradients of all micro-batches add up).

    ``grpo``, ``sapo``: mean over sequences of each sequence's token mean; ``bnpo``: token mean
    over the micro-batch; ``dr_grpo``: token sum / (sequences * max_completion_length);
    ``luspo``: mean over sequences of each sequence's token sum (a sequence-level loss scaled by
    its length); these are divided by ``accumulation_steps``. ``dapo``, ``cispo``, ``vespo``:
    token sum / tokens of the whole step (``step_tokens``, every micro-batch), so no further
    division. Same as TRL with one process. A [B, 1] ``token_loss`` (sequence level) broadcasts
    over the mask: each completion token carries its sequence's loss.
    """
    mask = mask.to(token_loss.dtype)  # [B, T]: 1 on completion tokens, 0 on padding
    masked = token_loss * mask  # [B, T] also for a [B, 1] sequence-level loss
    if loss_type in ("grpo", "sapo"):
        # each sequence weighs the same, whatever its length (clamp: an empty completion)
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / accumulation_steps
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) / accumulation_steps
    if loss_type == "dr_grpo":
        # a constant denominator: no length bias toward short or long completions
        loss = masked.sum() / (token_loss.size(0) * max_completion_length)
        return loss / accumulation_steps
    if loss_type == "luspo":
        return masked.sum(-1).mean() / accumulation_steps
    if loss_type in ("dapo", "cispo", "vespo"):
        return masked.sum() / max(step_tokens, 1.0)
    raise ValueError(f"loss_type={loss_type!r}")


def clip_counts(clipped: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """``(clipped, counted)`` for the clip fraction, as TRL counts it: completion tokens for a
    token-level ``clipped`` [B, T], every sequence for a sequence-level one [B, 1] (TRL tells
    them apart by that width alone)."""
    if clipped.size(1) == 1:
        return float(clipped.float().sum()), float(clipped.size(0))
    m = mask.to(torch.float32)
    return float((clipped.float() * m).sum()), float(m.sum())
