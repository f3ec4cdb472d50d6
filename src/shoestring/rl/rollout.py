"""A GRPO rollout: sample a group of completions per prompt, score them, keep what training needs.

Why a buffer: with ``num_iterations > 1`` several optimizer steps reuse one generation batch, so
its tensors (prompts, completions, masks, advantages, the old and reference log-probs) are kept
in a :class:`Rollout` - and saved in checkpoints, so a run resumed between those steps goes on
exactly as the uninterrupted one would. :class:`RolloutGenerator` makes one: sampling with the
batched KV-cache engine (one prefill per prompt shared by its samples, finished rows dropped),
then the rewards, judged under the run's scoring protocol.

Under ``torchrun`` each rank samples and scores a contiguous share of the step's prompts (whole
groups), each prompt on its own sampling stream (its position in the step), so its completions
are those one process samples; the shares are then gathered, and every rank builds the same
whole :class:`Rollout` - the advantages (also ``scale_rewards="batch"``), the logged statistics
and a checkpoint's buffer are the one-process ones at any number of ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from shoestring.distributed import DistInfo, all_sum, gather_ordered, shard_positions
from shoestring.engine import Engine, EngineOptions, GenerationResult, Sampling
from shoestring.engine.padding import pad_left, pad_right
from shoestring.rl.config import GRPOConfig
from shoestring.rl.data import PromptSet, prompt_indices
from shoestring.rl.logprobs import completion_logps, grouped_completion_logps
from shoestring.rl.loss import compute_advantages, nanstd
from shoestring.rl.packed_products import rollout_packs
from shoestring.rl.policy import Policy
from shoestring.rl.rewards import RewardFn, score
from shoestring.rl.rollout_weights import RolloutWeights
from shoestring.scoring.protocols import Protocol

__all__ = ["Rollout", "RolloutGenerator", "micro_slices"]


def micro_slices(n: int, batch_size: int) -> list[slice]:
    """Rows ``0..n`` in micro-batches of ``batch_size`` (the last one may be shorter)."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@dataclass
class Rollout:
    """One generation batch: everything the optimizer steps of ``num_iterations`` reuse."""

    prompt_ids: torch.Tensor  # [N, P] left-padded (each prompt repeated num_generations times)
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # loss mask (truncated rows zeroed if asked)
    gen_mask: torch.Tensor  # generated tokens (the forward pass attends to all of them)
    advantages: torch.Tensor  # [N]
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "prompt_ids": self.prompt_ids,
            "prompt_mask": self.prompt_mask,
            "completion_ids": self.completion_ids,
            "completion_mask": self.completion_mask,
            "gen_mask": self.gen_mask,
            "advantages": self.advantages,
        }
        if self.old_logps is not None:
            out["old_logps"] = self.old_logps
        if self.ref_logps is not None:
            out["ref_logps"] = self.ref_logps
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Rollout:
        return cls(
            t["prompt_ids"],
            t["prompt_mask"],
            t["completion_ids"],
            t["completion_mask"],
            t["gen_mask"],
            t["advantages"],
            t.get("old_logps"),
            t.get("ref_logps"),
        )

    @property
    def size(self) -> int:
        """Completions in the batch."""
        return self.prompt_ids.size(0)

    def logps(
        self, model: Any, s: slice, cfg: GRPOConfig, autocast: Any, want_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the completions in slice ``s`` under ``model`` (each prompt run once
        per group when the slice holds whole groups), in fp32; ``autocast`` is the runtime's
        autocast context."""
        g = cfg.num_generations
        grouped = (  # the slice must cut at group boundaries so each prompt's samples share it
            cfg.share_prompt_prefix
            and g > 1
            and not cfg.gradient_checkpointing
            and s.start % g == 0
            and (s.stop - s.start) % g == 0
        )
        # logps of the distribution the samples came from; greedy (0) means no scaling
        temp = cfg.temperature if cfg.temperature > 0 else 1.0
        with autocast:
            if grouped:
                lp, ent = grouped_completion_logps(
                    model,
                    self.prompt_ids[s][::g],  # one row per prompt: rows repeat it g times
                    self.prompt_mask[s][::g],
                    self.completion_ids[s],
                    self.gen_mask[s],  # every generated token is attended (loss mask aside)
                    g,
                    want_entropy,
                    temperature=temp,
                )
            else:
                lp, ent = completion_logps(
                    model,
                    self.prompt_ids[s],
                    self.prompt_mask[s],
                    self.completion_ids[s],
                    self.gen_mask[s],
                    want_entropy,
                    temperature=temp,
                )
        return lp.float(), ent

    @torch.no_grad()
    def all_logps(
        self, model: Any, cfg: GRPOConfig, policy: Policy, ranks: DistInfo | None = None
    ) -> torch.Tensor:
        """Log-probs of every completion, micro-batch by micro-batch, without gradients; under
        torchrun each rank computes its share of the micro-batches and every rank gets all."""
        ranks = ranks or DistInfo()
        slices = micro_slices(self.size, cfg.per_device_train_batch_size)
        if not ranks.enabled:
            return torch.cat([self.logps(model, s, cfg, policy.autocast())[0] for s in slices])
        out = torch.zeros(self.completion_ids.shape, dtype=torch.float32, device=policy.device)
        for j in shard_positions(len(slices), ranks):
            out[slices[j]] = self.logps(model, slices[j], cfg, policy.autocast())[0]
        return all_sum(out, ranks)  # every row is one rank's, zero on the others: exact


class RolloutGenerator:
    """Makes the rollout of generation batch ``gen_index``: a function of the index alone
    (prompt order and sampling seed), so a resumed run regenerates the same batches."""

    def __init__(
        self,
        cfg: GRPOConfig,
        policy: Policy,
        prompts: PromptSet,
        protocol: Protocol,
        reward_names: list[str],
        reward_fns: list[RewardFn],
        reward_labels: list[str],
        weights: torch.Tensor,
        ranks: DistInfo | None = None,
    ) -> None:
        self.cfg = cfg
        self.ranks = ranks or DistInfo()
        self.policy = policy
        self.prompts = prompts
        self.protocol = protocol
        self.reward_names = reward_names
        self.reward_fns = reward_fns
        self.reward_labels = reward_labels
        self.weights = weights
        self.pad_id = policy.pad_id()
        self.rollout_weights = RolloutWeights()  # a bf16 copy to sample with, where it pays
        # an explicit stop_strings overrides the protocol's (e.g. a corpus with its own marker)
        self.stop_strings = list(
            protocol.stop_strings if cfg.stop_strings is None else cfg.stop_strings
        )

    def sampling(self, gen_index: int) -> Sampling:
        """How batch ``gen_index`` samples: the config's temperature/top-p/top-k, a seed of the
        index, ``num_generations`` samples per prompt sharing its prefill."""
        cfg = self.cfg
        return Sampling(
            max_new_tokens=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            # a seed per batch from (run seed, index): a resumed run resamples the same batch
            seed=(cfg.seed * 1_000_003 + gen_index) % (2**62),
            stop_strings=self.stop_strings,
            num_return_sequences=cfg.num_generations,
        )

    def generate(self, gen_index: int) -> tuple[Rollout, dict[str, Any]]:
        """The rollout of batch ``gen_index`` and its statistics (``_``-keys are not logged)."""
        cfg, policy, prompts = self.cfg, self.policy, self.prompts
        g = cfg.num_generations
        model = policy.model
        idx = prompt_indices(gen_index, len(prompts.rows), cfg.prompts_per_step, cfg.seed)
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        sampler = self.rollout_weights.model_for(policy)
        engine = Engine(
            sampler,
            policy.tokenizer,
            EngineOptions(dtype=policy.gen_dtype),
            # the packed copies the training pass keeps (rl/packed_products.py): a full
            # fine-tune's weights packed (in place) here and read by the training pass after;
            # a LoRA run's merged weights repacked into the buffers of the last rollout
            packs=rollout_packs(sampler) if sampler is model else None,
        )
        # this rank's prompts (all of them in one process); a prompt's position in the step
        # is its sampling stream, so its samples do not depend on who else generates what
        mine = shard_positions(len(idx), self.ranks)
        local = engine.generate(
            [prompts.ids[idx[p]] for p in mine], self.sampling(gen_index), streams=mine
        )
        self.rollout_weights.release()  # the bf16 copy goes before the training forward
        t1 = time.perf_counter()
        local_scores = self._score([idx[p] for p in mine], local)  # [len(mine) * g, F]
        # every rank's groups back in step order: (g results, their g reward rows) per prompt
        shares = [
            (local[k * g : (k + 1) * g], local_scores[k * g : (k + 1) * g])
            for k in range(len(mine))
        ]
        groups = gather_ordered(shares, len(idx), self.ranks)
        results: list[GenerationResult] = [res for grp, _ in groups for res in grp]
        per_func = torch.tensor([row for _, rows in groups for row in rows])  # [N, F]
        comp_ids = [list(r.token_ids) for r in results]
        truncated = torch.tensor([r.finish_reason == "length" for r in results])  # [N] bool
        adv, rewards, std_zero = compute_advantages(per_func, self.weights, g, cfg.scale_rewards)
        # prompts left-padded, completions right-padded: concatenated, each row's prompt ends
        # and its completion starts in the same column
        prompt_ids, prompt_mask = pad_left(
            [prompts.ids[i] for i in idx for _ in range(g)], self.pad_id
        )
        completion_ids, gen_mask = pad_right(comp_ids, self.pad_id)
        loss_mask = gen_mask.clone()
        if cfg.mask_truncated_completions:
            loss_mask[truncated] = 0  # a cut-off answer is neither right nor wrong: no loss
        dev = policy.device
        r = Rollout(
            prompt_ids.to(dev),
            prompt_mask.to(dev),
            completion_ids.to(dev),
            loss_mask.to(dev),
            gen_mask.to(dev),
            adv.to(dev),
            None,
            None,
        )
        # the ratio's denominator is only needed when the batch outlives one optimizer step
        if cfg.num_iterations > 1:
            r.old_logps = r.all_logps(model, cfg, policy, self.ranks)
        if cfg.beta > 0:
            with policy.reference() as ref:
                r.ref_logps = r.all_logps(ref, cfg, policy, self.ranks)
        if was_training:
            model.train()
        t2 = time.perf_counter()
        return r, self._stats(idx, results, per_func, rewards, adv, std_zero, truncated, t0, t1, t2)

    def _score(self, idx: list[int], results: list[GenerationResult]) -> list[list[float]]:
        """Every reward function's score of each completion (rows of [completions, F]); each
        function sees the completions with their prompts' dataset columns."""
        g, prompts = self.cfg.num_generations, self.prompts
        prompts_rep = [prompts.texts[i] for i in idx for _ in range(g)]
        columns = {
            c: [prompts.rows[i].get(c) for i in idx for _ in range(g)] for c in prompts.columns
        }
        completions = [r.text for r in results]
        comp_ids = [list(r.token_ids) for r in results]
        if not results:  # a rank with no prompts this step (more ranks than prompts)
            return []
        per_func = score(self.reward_fns, prompts_rep, completions, comp_ids, columns)  # [F][N]
        return [list(row) for row in zip(*per_func, strict=True)] if per_func else []

    def _stats(
        self,
        idx: list[int],
        results: list[Any],
        per_func: torch.Tensor,
        rewards: torch.Tensor,
        adv: torch.Tensor,
        std_zero: torch.Tensor,
        truncated: torch.Tensor,
        t0: float,
        t1: float,
        t2: float,
    ) -> dict[str, Any]:
        """The batch's metrics record (reward, accuracy, lengths, timing, samples)."""
        g = self.cfg.num_generations
        completions = [r.text for r in results]
        # accuracy = share of completions whose correctness reward is 1 (if scored)
        acc = None
        if "correctness" in self.reward_names:
            col = per_func[:, self.reward_names.index("correctness")]
            valid = ~torch.isnan(col)
            acc = float(col[valid].mean()) if valid.any() else None
        lengths = torch.tensor([len(r.token_ids) for r in results], dtype=torch.float)
        return {
            "reward_mean": float(torch.nanmean(rewards)),
            "reward_std": float(nanstd(rewards)) if rewards.numel() > 1 else 0.0,
            "rewards": {
                lab: {
                    "mean": float(torch.nanmean(per_func[:, k])),
                    "std": float(nanstd(per_func[:, k])) if rewards.numel() > 1 else 0.0,
                }
                for k, lab in enumerate(self.reward_labels)
            },
            # [N] -> [prompts, g], first column: one flag per group, not per completion
            "frac_zero_std": float(std_zero.view(-1, g)[:, 0].float().mean()),
            "completion_length_mean": float(lengths.mean()),
            "completion_length_max": int(lengths.max()),
            "clipped_ratio": float(truncated.float().mean()),
            "accuracy": acc,
            "time_generation": t1 - t0,
            "time_scoring": t2 - t1,
            "_samples": [
                {
                    "prompt": self.prompts.rows[idx[k // g]]["question"],
                    "completion": completions[k],
                    "reward": float(rewards[k]),
                    "advantage": float(adv[k]),
                    "finish_reason": results[k].finish_reason,
                }
                for k in range(min(len(completions), self.cfg.num_completions_to_print))
            ],
            # share of completions the protocol's extractor finds an answer in (for warnings)
            "_answer_present": sum(self.protocol.extract(c) is not None for c in completions)
            / max(1, len(completions)),
        }
