"""GRPO's loss maths: group-relative advantages, the clipped per-token surrogate, aggregation.

Why pure functions on tensors: the numbers that decide what GRPO learns are checked by the tests
against hand-computed values, independent of models, sampling and the trainer. Meanings follow
TRL (``scale_rewards``, ``epsilon``/``epsilon_high``, ``beta`` with the k3 KL estimator, the
``loss_type`` aggregations), so a TRL configuration means the same thing here.
"""

from __future__ import annotations

import torch

__all__ = ["aggregate_loss", "compute_advantages", "nanstd", "per_token_loss"]


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Clipped surrogate per token (+ ``beta`` * k3 KL), shapes [B, T]; returns
    ``(loss, clipped, kl)`` where ``clipped`` marks tokens whose ratio hit the active bound."""
    # [B] -> [B, 1]: a sequence's advantage applies to each of its tokens
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)  # pi / pi_old per token, from log-probs
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    # PPO's pessimistic bound: the smaller objective, negated into a loss
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    # the clip is active only where it lowers the objective: below for adv < 0, above for > 0
    clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
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

    ``grpo``: mean over sequences of each sequence's token mean; ``bnpo``: token mean over the
    micro-batch; ``dr_grpo``: token sum / (sequences * max_completion_length); these three are
    divided by ``accumulation_steps``. ``dapo``: token sum / tokens of the whole step
    (``step_tokens``, every micro-batch), so no further division. Same as TRL with one process.
    """
    mask = mask.to(token_loss.dtype)  # [B, T]: 1 on completion tokens, 0 on padding
    if loss_type == "grpo":
        # each sequence weighs the same, whatever its length (clamp: an empty completion)
        loss = ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / accumulation_steps
    if loss_type == "bnpo":
        return (token_loss * mask).sum() / mask.sum().clamp(min=1.0) / accumulation_steps
    if loss_type == "dr_grpo":
        # a constant denominator: no length bias toward short or long completions
        loss = (token_loss * mask).sum() / (token_loss.size(0) * max_completion_length)
        return loss / accumulation_steps
    if loss_type == "dapo":
        return (token_loss * mask).sum() / max(step_tokens, 1.0)
    raise ValueError(f"loss_type={loss_type!r}")
