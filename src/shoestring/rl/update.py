"""The gradient of one GRPO optimizer step: the policy loss over a rollout, micro-batch by
micro-batch, plus the retention penalty.

Why apart from the trainer: this is the part of a step that must match TRL number for number
(how micro-batches add up under each ``loss_type``, which tokens the entropy, KL and clip
statistics count), while the trainer around it only schedules, times and records steps.

Under ``torchrun`` every rank holds the whole rollout and takes a contiguous share of its
micro-batches; each micro-batch's loss is scaled by the whole step's denominators (the global
number of micro-batches, the step's token count), so the sum of the ranks' gradients is the
one-process gradient, micro-batch for micro-batch. The gradients and the loss statistics are
then summed across ranks, and every rank steps its optimizer on the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from shoestring.distributed import DistInfo, all_sum, all_sum_grads, shard_positions
from shoestring.rl.config import GRPOConfig
from shoestring.rl.loss import SOFT_LOSS_TYPES, aggregate_loss, clip_counts, per_token_loss
from shoestring.rl.loss_variants import LossVariant
from shoestring.rl.packed_products import packed_products
from shoestring.rl.policy import Policy
from shoestring.rl.rollout import Rollout, micro_slices

__all__ = ["backward_rollout", "loss_variant"]


def loss_variant(cfg: GRPOConfig) -> LossVariant:
    """The per-token loss ``cfg`` asks for, with the parameters only that loss reads."""
    return LossVariant(
        loss_type=cfg.loss_type,
        importance_sampling_level=cfg.importance_sampling_level,
        sapo_temperature_pos=cfg.sapo_temperature_pos,
        sapo_temperature_neg=cfg.sapo_temperature_neg,
        vespo_k_pos=cfg.vespo_k_pos,
        vespo_lambda_pos=cfg.vespo_lambda_pos,
        vespo_k_neg=cfg.vespo_k_neg,
        vespo_lambda_neg=cfg.vespo_lambda_neg,
    )


def backward_rollout(
    policy: Policy, r: Rollout, cfg: GRPOConfig, ranks: DistInfo | None = None
) -> dict[str, Any]:
    """Accumulate the step's gradients in ``policy``'s trained parameters (the caller zeroes
    them before and steps the optimizer after) and return the step's loss statistics:
    ``loss`` (retention included), ``kl``, ``entropy``, ``clip_fraction`` (None for the soft
    losses, which clip nothing), ``retention``. Under torchrun (``ranks``) each rank runs its
    share of the micro-batches and the gradients and statistics come back summed over ranks."""
    ranks = ranks or DistInfo()
    model = policy.model
    variant = loss_variant(cfg)
    step_tokens = float(r.completion_mask.sum())  # dapo divides by the whole step's tokens
    slices = micro_slices(r.size, cfg.per_device_train_batch_size)
    mine = [slices[j] for j in shard_positions(len(slices), ranks)]  # this rank's share
    tot_loss = kl_sum = ent_sum = clip_sum = clip_n = n_tok = n_gen = 0.0
    with packed_products(model):  # fp32 weights on an avx2 host: the packed kernel's products
        for s in mine:
            mask = r.completion_mask[s]
            logps, ent = r.logps(model, s, cfg, policy.autocast(), want_entropy=True)
            # on-policy (num_iterations == 1) the old log-probs are the current ones, detached
            old = logps.detach() if r.old_logps is None else r.old_logps[s]
            ref = None if r.ref_logps is None else r.ref_logps[s]
            tl, clipped, kl = per_token_loss(
                logps,
                old,
                r.advantages[s],
                cfg.epsilon_low,
                cfg.upper_epsilon,
                cfg.beta,
                ref,
                mask=mask,
                variant=variant,
            )
            loss = aggregate_loss(
                tl,
                mask,
                cfg.loss_type,
                max_completion_length=cfg.max_completion_length,
                accumulation_steps=len(slices),  # the step's micro-batches, on every rank
                step_tokens=step_tokens,
            )
            loss.backward()  # per micro-batch: its graph is freed before the next forward
            tot_loss += float(loss.detach())  # the pieces are pre-scaled: their sum is the loss
            m = mask.float()  # KL and clip statistics count the tokens the loss counts
            n_tok += float(m.sum())
            if clipped is not None:
                n_clipped, n_counted = clip_counts(clipped, mask)
                clip_sum += n_clipped
                clip_n += n_counted
            if ent is not None:  # over every generated token, masked from the loss or not
                gm = r.gen_mask[s].float()
                ent_sum += float((ent.detach() * gm).sum())
                n_gen += float(gm.sum())
            if kl is not None:
                kl_sum += float((kl.detach() * m).sum())
    hard_clip = variant.loss_type not in SOFT_LOSS_TYPES  # whether the loss clips at all
    ret = policy.retention_term()  # one term per step, not per micro-batch
    retention = None
    if ret is not None:
        retention = float(ret.detach())  # the same weights, so the same value on every rank
        if ranks.is_main:  # one rank adds it, so the sums over ranks count it once
            ret.backward()
            tot_loss += retention
    if ranks.enabled:
        all_sum_grads(policy.params, ranks)  # DDP's all-reduce: the one-process gradient
        # the statistics' sums and counts over the whole step (float64: exact enough)
        sums = torch.tensor(
            [tot_loss, kl_sum, ent_sum, clip_sum, clip_n, n_tok, n_gen], dtype=torch.float64
        )
        tot_loss, kl_sum, ent_sum, clip_sum, clip_n, n_tok, n_gen = all_sum(
            sums.to(policy.device), ranks
        ).tolist()
    return {
        "loss": tot_loss,
        "kl": (kl_sum / max(n_tok, 1.0)) if cfg.beta > 0 else None,
        "entropy": ent_sum / max(n_gen, 1.0),
        "clip_fraction": clip_sum / max(clip_n, 1.0) if hard_clip else None,
        "retention": retention,
    }
