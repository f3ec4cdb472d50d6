"""GRPO (group relative policy optimisation) for any HF causal LM or shoestring model.

What happens in one optimizer step (TRL's algorithm, shoestring's engine):

1. every ``num_iterations`` steps, ``prompts_per_step`` prompts are sampled
   ``num_generations`` times each with the batched KV-cache engine
   (:mod:`shoestring.eval.generation`: one prefill per prompt shared by its samples, finished
   rows dropped from the batch) - this is where TRL's ``model.generate`` spends most of a CPU
   step;
2. rewards are scored per function, weighted and summed; advantages are the reward minus its
   group mean, divided by the group/batch std (``scale_rewards``);
3. the clipped surrogate loss (plus ``beta`` * KL to the reference, k3 estimator) is
   aggregated over tokens as ``loss_type`` says and back-propagated per micro-batch.

The reference model costs nothing when ``beta == 0`` (no pass at all); with LoRA it is the
same model with its adapters disabled, so no second copy is held; only a full fine-tune with
``beta > 0`` keeps a frozen copy, and the log says so with its size.

The loss maths lives in small pure functions (:func:`compute_advantages`,
:func:`per_token_loss`, :func:`aggregate_loss`) so the tests check them against hand-computed
values, independent of models and sampling.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig, config_from_dict
from shoestring.runs.rundir import RunDir, read_json, unique_run_dir
from shoestring.train.loop import adamw

# ----------------------------------------------------------------------------- loss maths


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample std (Bessel-corrected, as TRL's ``nanstd``) ignoring NaNs."""
    if dim is None:
        x = x.flatten()
        dim = 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    valid = (~torch.isnan(x)).sum(dim=dim)
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
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = float("nan")
    grouped = rewards.view(-1, num_generations)
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
        adv = adv / (std + 1e-4)
    adv = torch.nan_to_num(adv, nan=0.0)
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
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs reference log-probs")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
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
    mask = mask.to(token_loss.dtype)
    if loss_type == "grpo":
        loss = ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / accumulation_steps
    if loss_type == "bnpo":
        return (token_loss * mask).sum() / mask.sum().clamp(min=1.0) / accumulation_steps
    if loss_type == "dr_grpo":
        loss = (token_loss * mask).sum() / (token_loss.size(0) * max_completion_length)
        return loss / accumulation_steps
    if loss_type == "dapo":
        return (token_loss * mask).sum() / max(step_tokens, 1.0)
    raise ValueError(f"loss_type={loss_type!r}")


def selective_logps_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    want_entropy: bool = True,
    chunk: int = 4,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token and the distribution's entropy, [B, T] each, in fp32,
    a few rows at a time so a large vocabulary never needs a full fp32 copy of the logits.

    ``temperature`` divides the logits first, so the log-probs are those of the distribution
    the completions were sampled from (as TRL does)."""
    logps, ents = [], []
    for i in range(0, logits.size(0), chunk):
        lg = logits[i : i + chunk].float()
        if temperature != 1.0:
            lg = lg / temperature
        lse = torch.logsumexp(lg, dim=-1)
        logps.append(lg.gather(-1, targets[i : i + chunk].unsqueeze(-1)).squeeze(-1) - lse)
        if want_entropy:
            with torch.no_grad():
                p = torch.softmax(lg, dim=-1)
                ents.append(lse - (p * lg).sum(-1))
    return torch.cat(logps), (torch.cat(ents) if want_entropy else None)


# ----------------------------------------------------------------------------- model helpers


def _forward_params(model: Any) -> set[str]:
    from shoestring.eval.generation import _forward_params as fp

    return fp(model)


def completion_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    want_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion tokens under ``model`` ([B, C]).

    Prompts are left-padded, completions right-padded, position ids count real tokens only
    (as the generation engine does), and only the last ``C + 1`` positions go through the
    vocabulary head where the model supports ``logits_to_keep``.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    params = _forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if "position_ids" in params:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    c = completion_ids.size(1)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = c + 1
    out = model(**kwargs)
    logits = out.logits[:, -(c + 1) : -1, :]
    return selective_logps_and_entropy(
        logits, completion_ids, want_entropy, temperature=temperature
    )


def grouped_completion_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    num_generations: int,
    want_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same result as :func:`completion_logps`, with each prompt run once per group.

    The ``num_generations`` completions of a prompt share it, so the prompt goes through the
    model once and its key/value cache is repeated for the group (``repeat_interleave`` keeps
    it differentiable: the gradient of every completion still reaches the prompt positions).
    ``prompt_ids``/``prompt_mask`` hold one row per prompt, ``completion_*`` one row per
    completion, grouped. With prompts as long as completions this halves the tokens of the
    training forward and backward.
    """
    from transformers.cache_utils import DynamicCache

    params = _forward_params(model)
    g = num_generations
    kwargs: dict[str, Any] = {
        "input_ids": prompt_ids,
        "attention_mask": prompt_mask,
        "past_key_values": DynamicCache(),
        "use_cache": True,
    }
    if "position_ids" in params:
        kwargs["position_ids"] = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    first = out.logits[:, -1:, :].repeat_interleave(g, dim=0)
    c = completion_ids.size(1)
    if c == 1:
        return selective_logps_and_entropy(
            first, completion_ids, want_entropy, temperature=temperature
        )
    cache = out.past_key_values
    cache.batch_repeat_interleave(g)
    pmask = prompt_mask.repeat_interleave(g, dim=0)
    mask = torch.cat([pmask, completion_mask[:, :-1]], dim=1)
    kwargs = {
        "input_ids": completion_ids[:, :-1],
        "attention_mask": mask,
        "past_key_values": cache,
        "use_cache": True,
    }
    if "position_ids" in params:
        start = pmask.sum(-1, keepdim=True)
        kwargs["position_ids"] = start + torch.arange(c - 1, device=mask.device)[None]
    rest = model(**kwargs).logits
    logits = torch.cat([first, rest], dim=1)
    return selective_logps_and_entropy(
        logits, completion_ids, want_entropy, temperature=temperature
    )


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ----------------------------------------------------------------------------- rollout buffer


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


def _pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask


# ----------------------------------------------------------------------------- the trainer


def lr_multiplier(step: int, total: int, warmup: int, kind: str) -> float:
    """Linear warmup, then linear (TRL's default) or cosine decay to 0, or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress


class GRPOTrainer:
    """One GRPO run: model, data, optimizer, run directory. Use :func:`train_grpo`."""

    def __init__(
        self,
        cfg: GRPOConfig,
        run_path: Path,
        *,
        resume: bool = False,
        echo: bool = True,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_path = run_path
        self.resume = resume
        self.progress = progress
        self.rundir = RunDir(run_path, "grpo", echo=echo)
        self.step = 0
        self.rollout: Rollout | None = None
        self.reference_passes = 0  # counted so tests can prove beta == 0 runs none
        self.frozen_ref: torch.nn.Module | None = None
        self.warnings: list[str] = []
        self._first_steps: list[dict[str, Any]] = []
        self.time_split = {"generation": 0.0, "scoring": 0.0, "backward": 0.0}

    # -- setup
    def log(self, msg: str) -> None:
        self.rundir.log(msg)

    def setup(self) -> None:
        from shoestring.models.loading import load_model_and_tokenizer
        from shoestring.rl import rewards as R
        from shoestring.rl.data import build_prompt, load_task, uses_chat
        from shoestring.runtime import setup_runtime

        cfg = self.cfg
        if not cfg.model_name_or_path:
            raise UserError("model_name_or_path is empty; pass the model to train (--model)")
        self.runtime = setup_runtime(cfg.device, cfg.dtype, cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        # Frozen base weights of a LoRA run are stored in bf16 where bf16 is fast (half the
        # memory, no per-step re-cast of every weight); trained weights stay fp32 (peft keeps
        # adapters in fp32), as do all weights of a full fine-tune.
        load_dtype = "bf16" if self.runtime.dtype == "bf16" and cfg.lora_rank > 0 else "fp32"
        model, tok, info = load_model_and_tokenizer(
            cfg.model_name_or_path,
            device=self.runtime.device,
            dtype=load_dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        self.model_info = info
        self.tokenizer = tok
        if cfg.disable_dropout:
            _disable_dropout(model)
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.peft_model = None
        if cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            targets: Any = list(cfg.lora_target_modules)
            if targets == ["all-linear"]:
                targets = "all-linear"
            lcfg = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                bias="none",
                task_type="CAUSAL_LM",
            )
            self.peft_model = get_peft_model(model, lcfg)
            # the injected LoRA layers live inside the HF model: calling it directly runs the
            # adapters and keeps the forward signature the generation engine inspects
            self.model = self.peft_model.get_base_model()
        else:
            self.model = model
        self.device = torch.device(self.runtime.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in self.params)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        if cfg.beta > 0 and self.peft_model is None:
            self.frozen_ref = copy.deepcopy(self.model).eval()
            for p in self.frozen_ref.parameters():
                p.requires_grad_(False)
            mb = sum(p.numel() * p.element_size() for p in self.frozen_ref.parameters()) / 2**20
            self.log(
                f"beta={cfg.beta} with full fine-tuning keeps a frozen copy of the model as the "
                f"reference ({mb:,.1f} MB more memory); use lora_rank>0 to avoid the copy"
            )
        self._setup_retention()
        self.optimizer = adamw(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        # rewards
        self.reward_names = list(cfg.rewards)
        self.reward_fns = [R.load_reward(n) for n in self.reward_names]
        self.reward_labels = [R.reward_label(n) for n in self.reward_names]
        self.weights = torch.tensor(R.reward_weights(self.reward_names, cfg.reward_weights))
        # data
        rows = load_task(
            cfg.dataset, "train", cfg.dataset_slice, cfg.seed, cfg.dataset_size or None
        )
        self.rows = rows
        self.chat = uses_chat(tok, cfg.prompt_format)
        self.prompt_texts = [build_prompt(r["question"], tok, cfg.prompt_format) for r in rows]
        enc = tok(self.prompt_texts, add_special_tokens=not self.chat)["input_ids"]
        limit = cfg.max_prompt_length
        self.prompt_ids = [list(x)[-limit:] if limit else list(x) for x in enc]
        cut = sum(1 for x in enc if limit and len(x) > limit)
        if cut:
            msg = (
                f"{cut} of {len(enc)} prompts are longer than max_prompt_length={limit} and keep "
                f"only their last {limit} tokens (the start of the question is lost)"
            )
            self.log(f"WARNING: {msg}")
            self.warnings.append(msg)
        self.columns = sorted({k for r in rows for k in r if k not in ("ops",)})
        from shoestring.eval.generation import SamplingConfig, _pad_id, resolve_eos_ids

        self.eos_ids = resolve_eos_ids(self.model, tok, SamplingConfig())
        self.pad_id = _pad_id(tok, self.model, self.eos_ids)
        p = cfg.prompts_per_step
        if p < 1:
            raise UserError(
                f"per_device_train_batch_size*gradient_accumulation_steps={cfg.completions_per_step}"
                f" is smaller than num_generations={cfg.num_generations}"
            )
        gens_per_epoch = len(rows) / p
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = max(1, math.ceil(cfg.num_train_epochs * gens_per_epoch)) * (
                cfg.num_iterations
            )
        # Sampling on a CPU runs in the weights' dtype (bf16 for LoRA's frozen base, fp32 for a
        # full fine-tune): bf16 autocast would re-cast every fp32 weight at every decode step,
        # which measured 1.5x slower than plain fp32 decoding on a 2-core Xeon with AMX (16
        # rows, benchmarks/decode_step.py). Training still runs under autocast.
        cpu = self.device.type == "cpu"
        self.gen_dtype = "bf16" if self.runtime.dtype == "bf16" and not cpu else "auto"

    def _setup_retention(self) -> None:
        """theta_ref for the retention penalty (only what the penalty compares is kept)."""
        cfg = self.cfg
        self.retention_pairs: list[tuple[Any, torch.Tensor]] = []
        if cfg.retention_penalty <= 0:
            return
        ref_state: dict[str, torch.Tensor] | None = None
        if cfg.retention_reference:
            from shoestring.models.loading import load_model_and_tokenizer

            ref_model, _, _ = load_model_and_tokenizer(cfg.retention_reference, "cpu", "fp32")
            ref_state = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
            del ref_model
        if self.peft_model is not None:
            from peft.tuners.lora import LoraLayer

            for name, mod in self.model.named_modules():
                if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
                    base_w = mod.get_base_layer().weight
                    key = name + ".weight"
                    ref = ref_state.get(key) if ref_state else None
                    offset = None if ref is None else (base_w.detach() - ref.to(base_w.device))
                    self.retention_pairs.append((mod, offset))
            kind = "adapted weights (base + LoRA delta)"
        else:
            names = dict(self.model.named_parameters())
            for name, p in names.items():
                if not p.requires_grad:
                    continue
                ref = ref_state.get(name) if ref_state else None
                if ref_state is not None and ref is None:
                    raise UserError(
                        f"retention_reference {cfg.retention_reference} has no tensor {name}; "
                        "it must be the same architecture as the model being trained"
                    )
                ref_t = (p.detach().clone() if ref is None else ref.to(p.device)).requires_grad_(
                    False
                )
                self.retention_pairs.append((p, ref_t))
            kind = "all trained parameters"
        src = cfg.retention_reference or "the starting weights"
        self.log(
            f"retention penalty {cfg.retention_penalty:g} * ||theta - theta_ref||^2 over "
            f"{kind}; ref = {src}"
        )

    def retention_term(self) -> torch.Tensor | None:
        """lambda * ||theta - theta_ref||^2 (a differentiable scalar), or None when off."""
        if not self.retention_pairs:
            return None
        total = torch.zeros((), device=self.device)
        if self.peft_model is not None:
            for mod, offset in self.retention_pairs:
                a = mod.lora_A["default"].weight
                b = mod.lora_B["default"].weight
                delta = (b @ a) * mod.scaling["default"]
                if getattr(mod, "fan_in_fan_out", False):
                    delta = delta.T
                if offset is not None:
                    delta = delta + offset
                total = total + (delta.float() ** 2).sum()
        else:
            for p, ref in self.retention_pairs:
                total = total + ((p.float() - ref.float()) ** 2).sum()
        return self.cfg.retention_penalty * total

    # -- data order
    def _prompt_indices(self, gen_index: int) -> list[int]:
        """The prompts of generation batch ``gen_index``: consecutive slices of per-epoch
        shuffles (seeded by the epoch), so the order is a function of the index alone."""
        n, p = len(self.rows), self.cfg.prompts_per_step
        out = []
        pos = gen_index * p
        while len(out) < p:
            epoch, offset = divmod(pos, n)
            perm = list(range(n))
            random.Random(self.cfg.seed * 1000 + epoch).shuffle(perm)
            take = min(p - len(out), n - offset)
            out.extend(perm[offset : offset + take])
            pos += take
        return out

    # -- one generation batch
    def _autocast(self) -> Any:
        return self.runtime.autocast()

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """The reference policy: frozen copy (full fine-tune) or adapters disabled (LoRA)."""
        self.reference_passes += 1
        if self.frozen_ref is not None:
            yield self.frozen_ref
        elif self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.model
        else:  # no LoRA, no copy: the starting weights are not available
            raise RuntimeError("reference pass requested without a reference model")

    def _micro_slices(self, n: int) -> list[slice]:
        bs = self.cfg.per_device_train_batch_size
        return [slice(i, min(i + bs, n)) for i in range(0, n, bs)]

    def _logps(
        self, model: Any, r: Rollout, s: slice, want_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the completions in slice ``s`` (prompt shared per group when the
        slice holds whole groups)."""
        g = self.cfg.num_generations
        grouped = (
            self.cfg.share_prompt_prefix
            and g > 1
            and not self.cfg.gradient_checkpointing
            and s.start % g == 0
            and (s.stop - s.start) % g == 0
        )
        temp = self.cfg.temperature if self.cfg.temperature > 0 else 1.0
        with self._autocast():
            if grouped:
                lp, ent = grouped_completion_logps(
                    model,
                    r.prompt_ids[s][::g],
                    r.prompt_mask[s][::g],
                    r.completion_ids[s],
                    r.gen_mask[s],
                    g,
                    want_entropy,
                    temperature=temp,
                )
            else:
                lp, ent = completion_logps(
                    model,
                    r.prompt_ids[s],
                    r.prompt_mask[s],
                    r.completion_ids[s],
                    r.gen_mask[s],
                    want_entropy,
                    temperature=temp,
                )
        return lp.float(), ent

    @torch.no_grad()
    def _logps_no_grad(self, model: Any, r: Rollout) -> torch.Tensor:
        return torch.cat(
            [self._logps(model, r, s)[0] for s in self._micro_slices(r.prompt_ids.size(0))]
        )

    def generate_rollout(self, gen_index: int) -> tuple[Rollout, dict[str, Any]]:
        from shoestring.eval.generation import SamplingConfig, generate_all
        from shoestring.rl.rewards import extract_final, score

        cfg = self.cfg
        g = cfg.num_generations
        idx = self._prompt_indices(gen_index)
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        scfg = SamplingConfig(
            max_new_tokens=cfg.max_completion_length,
            do_sample=cfg.temperature > 0,
            temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=(cfg.seed * 1_000_003 + gen_index) % (2**62),
            stop_strings=list(cfg.stop_strings),
            num_return_sequences=g,
            dtype=self.gen_dtype,
            add_special_tokens=False,
        )
        results = generate_all(
            self.model, self.tokenizer, [self.prompt_ids[i] for i in idx], scfg, progress=False
        )
        t1 = time.perf_counter()
        completions = [r.text for r in results]
        comp_ids = [list(r.token_ids) for r in results]
        truncated = torch.tensor([r.finish_reason == "length" for r in results])
        prompts_rep = [self.prompt_texts[i] for i in idx for _ in range(g)]
        columns = {c: [self.rows[i].get(c) for i in idx for _ in range(g)] for c in self.columns}
        per_func = torch.tensor(
            score(self.reward_fns, prompts_rep, completions, comp_ids, columns)
        ).T  # [N, F]
        adv, rewards, std_zero = compute_advantages(per_func, self.weights, g, cfg.scale_rewards)
        prompt_ids, prompt_mask = _pad_left(
            [self.prompt_ids[i] for i in idx for _ in range(g)], self.pad_id
        )
        completion_ids, gen_mask = _pad_right(comp_ids, self.pad_id)
        loss_mask = gen_mask.clone()
        if cfg.mask_truncated_completions:
            loss_mask[truncated] = 0
        dev = self.device
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
        if cfg.num_iterations > 1:
            r.old_logps = self._logps_no_grad(self.model, r)
        if cfg.beta > 0:
            with self._reference() as ref:
                r.ref_logps = self._logps_no_grad(ref, r)
        if was_training:
            self.model.train()
        t2 = time.perf_counter()
        # accuracy = share of completions whose correctness reward is 1 (if scored)
        acc = None
        if "correctness" in self.reward_names:
            col = per_func[:, self.reward_names.index("correctness")]
            valid = ~torch.isnan(col)
            acc = float(col[valid].mean()) if valid.any() else None
        lengths = torch.tensor([len(c) for c in comp_ids], dtype=torch.float)
        stats = {
            "reward_mean": float(torch.nanmean(rewards)),
            "reward_std": float(nanstd(rewards)) if rewards.numel() > 1 else 0.0,
            "rewards": {
                lab: {
                    "mean": float(torch.nanmean(per_func[:, k])),
                    "std": float(nanstd(per_func[:, k])) if rewards.numel() > 1 else 0.0,
                }
                for k, lab in enumerate(self.reward_labels)
            },
            "frac_zero_std": float(std_zero.view(-1, g)[:, 0].float().mean()),
            "completion_length_mean": float(lengths.mean()),
            "completion_length_max": int(lengths.max()),
            "clipped_ratio": float(truncated.float().mean()),
            "accuracy": acc,
            "time_generation": t1 - t0,
            "time_scoring": t2 - t1,
            "_samples": [
                {
                    "prompt": self.rows[idx[k // g]]["question"],
                    "completion": completions[k],
                    "reward": float(rewards[k]),
                    "advantage": float(adv[k]),
                    "finish_reason": results[k].finish_reason,
                }
                for k in range(min(len(completions), cfg.num_completions_to_print))
            ],
            "_answer_present": sum(extract_final(c) is not None for c in completions)
            / max(1, len(completions)),
        }
        return r, stats

    # -- one optimizer step
    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        step = self.step
        stats: dict[str, Any] = {}
        if step % cfg.num_iterations == 0 or self.rollout is None:
            self.rollout, stats = self.generate_rollout(step // cfg.num_iterations)
            self._last_gen_stats = stats
        else:
            stats = dict(self._last_gen_stats)
            stats["time_generation"] = 0.0
            stats["time_scoring"] = 0.0
        r = self.rollout
        self.model.train()
        t0 = time.perf_counter()
        lr = cfg.learning_rate * lr_multiplier(
            step, self.total_steps, cfg.warmup_steps, cfg.lr_scheduler_type
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        step_tokens = float(r.completion_mask.sum())
        ga = len(self._micro_slices(r.prompt_ids.size(0)))
        tot_loss = 0.0
        kl_sum = ent_sum = clip_sum = 0.0
        n_tok = 0.0
        n_gen = 0.0
        for s in self._micro_slices(r.prompt_ids.size(0)):
            mask = r.completion_mask[s]
            logps, ent = self._logps(self.model, r, s, want_entropy=True)
            old = logps.detach() if r.old_logps is None else r.old_logps[s]
            ref = None if r.ref_logps is None else r.ref_logps[s]
            tl, clipped, kl = per_token_loss(
                logps, old, r.advantages[s], cfg.epsilon_low, cfg.upper_epsilon, cfg.beta, ref
            )
            loss = aggregate_loss(
                tl,
                mask,
                cfg.loss_type,
                max_completion_length=cfg.max_completion_length,
                accumulation_steps=ga,
                step_tokens=step_tokens,
            )
            loss.backward()
            tot_loss += float(loss.detach())
            m = mask.float()
            n_tok += float(m.sum())
            clip_sum += float((clipped.float() * m).sum())
            if ent is not None:  # over every generated token, masked from the loss or not
                gm = r.gen_mask[s].float()
                ent_sum += float((ent * gm).sum())
                n_gen += float(gm.sum())
            if kl is not None:
                kl_sum += float((kl.detach() * m).sum())
        ret = self.retention_term()
        retention = None
        if ret is not None:
            ret.backward()
            retention = float(ret.detach())
            tot_loss += retention
        if cfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        else:
            grad_norm = None
        self.optimizer.step()
        t1 = time.perf_counter()
        stats.update(
            {
                "loss": tot_loss,
                "lr": lr,
                "kl": (kl_sum / max(n_tok, 1.0)) if cfg.beta > 0 else None,
                "entropy": ent_sum / max(n_gen, 1.0),
                "clip_fraction": clip_sum / max(n_tok, 1.0),
                "grad_norm": grad_norm,
                "retention": retention,
                "time_backward": t1 - t0,
            }
        )
        if not math.isfinite(tot_loss):
            raise UserError(
                f"GRPO loss became {tot_loss} at step {step}; lower learning_rate or check rewards"
            )
        return stats

    # -- checkpoints
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            n: p.detach().contiguous().cpu()
            for n, p in self.model.named_parameters()
            if p.requires_grad
        }

    def save(self) -> Path:
        """A resumable checkpoint: trained weights, optimizer, RNG, the rollout buffer."""
        import os
        import shutil

        from safetensors.torch import save_file

        from shoestring.train.checkpoint import prune_checkpoints, rng_state

        ckpt = self.rundir.checkpoints_dir / f"step_{self.step}"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.parent / f".tmp_{ckpt.name}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(self._trainable_state(), str(tmp / "model.safetensors"))
        state: dict[str, Any] = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "time_split": dict(self.time_split),
            "train_seconds": self.train_seconds,
        }
        if self.rollout is not None:
            state["rollout"] = {k: v.cpu() for k, v in self.rollout.tensors().items()}
            state["last_gen_stats"] = {
                k: v for k, v in self._last_gen_stats.items() if isinstance(v, (int, float))
            }
        torch.save(state, tmp / "state.pt")
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(tmp, ckpt)
        prune_checkpoints(self.rundir.checkpoints_dir, self.cfg.save_total_limit)
        return ckpt

    def restore(self) -> None:
        from safetensors.torch import load_file

        from shoestring.train.checkpoint import latest_checkpoint, set_rng_state

        ckpt = latest_checkpoint(self.rundir.checkpoints_dir)
        if ckpt is None:
            raise UserError(f"{self.run_path} has no complete checkpoint to resume from")
        tensors = load_file(str(ckpt / "model.safetensors"), device=str(self.device))
        named = dict(self.model.named_parameters())
        for k, v in tensors.items():
            if k not in named:
                raise UserError(f"checkpoint {ckpt} does not match the model (no parameter {k})")
            with torch.no_grad():
                named[k].copy_(v)
        state = torch.load(ckpt / "state.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.time_split = dict(state.get("time_split", self.time_split))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if "rollout" in state:
            self.rollout = Rollout.from_tensors(
                {k: v.to(self.device) for k, v in state["rollout"].items()}
            )
            self._last_gen_stats = dict(state.get("last_gen_stats", {}))
        self.rundir.truncate_metrics_after(self.step)
        self.log(f"resumed from {ckpt} at step {self.step}")

    # -- final model
    def write_model(self) -> Path:
        from shoestring.models.loading import quiet_hf_progress

        out = self.rundir.model_dir
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf_progress():
            if self.peft_model is not None and self.cfg.merge_lora:
                merged = copy.deepcopy(self.peft_model).merge_and_unload()
                merged.save_pretrained(out)
                del merged
            elif self.peft_model is not None:
                self.peft_model.save_pretrained(out)
            else:
                self.model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
        return out

    # -- evaluation (greedy, held-out)
    def evaluate(self, tag: str) -> dict[str, Any] | None:
        from shoestring.eval.answers import is_correct, parse_gold
        from shoestring.eval.generation import SamplingConfig, generate_all
        from shoestring.eval.stats import wilson_interval
        from shoestring.rl.data import build_prompt, load_task
        from shoestring.rl.rewards import extract_final
        from shoestring.runs.rundir import atomic_write_text

        cfg = self.cfg
        if cfg.eval_problems <= 0:
            return None
        spec = cfg.eval_dataset or cfg.dataset
        train_q = {r["question"] for r in self.rows}
        if cfg.eval_exclude_file:
            train_q |= _questions_in(cfg.eval_exclude_file)
        probs = load_task(spec, "test", seed=cfg.seed, n=cfg.eval_problems, exclude=train_q)
        prompts = [build_prompt(p["question"], self.tokenizer, cfg.prompt_format) for p in probs]
        ids = self.tokenizer(prompts, add_special_tokens=not self.chat)["input_ids"]
        self.model.eval()
        t0 = time.perf_counter()
        res = generate_all(
            self.model,
            self.tokenizer,
            [list(x) for x in ids],
            SamplingConfig(
                max_new_tokens=cfg.max_completion_length,
                stop_strings=list(cfg.stop_strings),
                dtype=self.gen_dtype,
                add_special_tokens=False,
            ),
            progress=self.progress,
            desc=f"eval {tag}",
        )
        correct = [
            is_correct(extract_final(r.text), parse_gold(p["answer"]))
            for p, r in zip(probs, res, strict=True)
        ]
        import json

        atomic_write_text(
            self.run_path / f"eval_{tag}.jsonl",
            "".join(
                json.dumps(
                    {
                        "question": p["question"],
                        "gold": parse_gold(p["answer"]),
                        "response": r.text,
                        "correct": c,
                    }
                )
                + "\n"
                for p, r, c in zip(probs, res, correct, strict=True)
            ),
        )
        k, n = sum(correct), len(correct)
        lo, hi = wilson_interval(k, n)
        out = {"correct": k, "n": n, "accuracy": k / n, "ci_low": lo, "ci_high": hi}
        self.log(
            f"eval {tag}: {k}/{n} = {100 * k / n:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}) "
            f"greedy on held-out {spec} test problems ({time.perf_counter() - t0:.0f} s)"
        )
        self._eval_correct = getattr(self, "_eval_correct", {})
        self._eval_correct[tag] = correct
        return out

    # -- the startup warning, measured
    def _check_can_learn(self, rec: dict[str, Any]) -> None:
        cfg = self.cfg
        self._first_steps.append(rec)
        if len(self._first_steps) != min(cfg.warn_steps, self.total_steps):
            return
        fs = self._first_steps
        zero = sum(r["frac_zero_std"] for r in fs) / len(fs)
        clipped = sum(r["clipped_ratio"] for r in fs) / len(fs)
        answer = sum(r.get("_answer_present", 1.0) for r in fs) / len(fs)
        problems = []
        if cfg.num_generations < 2:
            problems.append(
                "num_generations < 2: every group has one completion, so every advantage is 0 "
                "and nothing is learned; use num_generations >= 4"
            )
        if clipped >= 0.5:
            problems.append(
                f"{100 * clipped:.0f}% of completions hit max_completion_length="
                f"{cfg.max_completion_length} in the first {len(fs)} steps; they are too short "
                "to hold a worked answer - raise max_completion_length"
            )
        if answer < 0.1:
            problems.append(
                f"only {100 * answer:.0f}% of completions state a final answer; the correctness "
                "reward can hardly be earned"
            )
        if zero >= 0.8 and cfg.num_generations >= 2:
            why = (
                f" (temperature={cfg.temperature} is so low that the samples of a prompt are "
                "nearly identical - raise it to ~0.7-1.0)"
                if cfg.temperature < 0.5
                else " (the task is too hard or too easy for the model at this point)"
            )
            problems.append(
                f"{100 * zero:.0f}% of groups had zero reward std in the first {len(fs)} steps, "
                f"so they carry no learning signal{why}"
            )
        for msg in problems:
            self.warnings.append(msg)
            self.log(f"WARNING: this configuration cannot learn well: {msg}")
            self.rundir.metric({"step": self.step, "event": "warning", "reason": msg})

    # -- main loop
    def run(self) -> Path:
        from tqdm import tqdm

        from shoestring.config import to_dict
        from shoestring.runs.monitor import SystemMonitor

        cfg = self.cfg
        self.train_seconds = 0.0
        if not self.resume:
            self.rundir.start(to_dict(cfg))
        else:
            self.rundir.update_summary(status="running")
        monitor = SystemMonitor().start()
        status = "failed"
        error = None
        try:
            self.setup()
            self.rundir.update_summary(
                runtime=self.runtime.to_dict(),
                max_steps=self.total_steps,
                model={
                    "path": cfg.model_name_or_path,
                    **{k: v for k, v in self.model_info.items() if k != "load_seconds"},
                },
                n_trainable=self.n_trainable,
            )
            if self.resume:
                self.restore()
            self.log(
                f"{'resuming' if self.resume else 'GRPO on'} {self.model_info['model_type']} "
                f"({self.n_params / 1e6:.2f}M params, {self.n_trainable / 1e6:.3f}M trained"
                f"{', LoRA r=' + str(cfg.lora_rank) if cfg.lora_rank else ', full fine-tune'}) on "
                f"{self.runtime.device} ({self.runtime.dtype}, {self.runtime.threads} threads): "
                f"{len(self.rows)} prompts of {cfg.dataset}, {cfg.prompts_per_step} prompts x "
                f"{cfg.num_generations} generations per step, {self.total_steps} steps, "
                f"loss {cfg.loss_type}, beta {cfg.beta} -> {self.run_path}"
            )
            before_file = self.run_path / "eval_before.jsonl"
            if self.resume and "eval_before" in self.rundir.summary and before_file.is_file():
                import json

                lines = before_file.read_text(encoding="utf-8").splitlines()
                self._eval_correct = {"before": [json.loads(x)["correct"] for x in lines]}
            else:
                ev = self.evaluate("before")
                if ev is not None:
                    self.rundir.update_summary(eval_before=ev)
            prev = signal.getsignal(signal.SIGTERM)
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
            bar = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc="grpo",
                unit="step",
                disable=not self.progress,
                dynamic_ncols=True,
            )
            try:
                while self.step < self.total_steps:
                    t0 = time.perf_counter()
                    stats = self.train_step()
                    dt = time.perf_counter() - t0
                    self.train_seconds += dt
                    for k in self.time_split:
                        self.time_split[k] += stats.get(f"time_{k}", 0.0)
                    self.step += 1
                    rec = {
                        "step": self.step,
                        **{k: v for k, v in stats.items() if not k.startswith("_")},
                    }
                    rec["step_seconds"] = dt
                    rec["_answer_present"] = stats.get("_answer_present", 1.0)
                    if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
                        self.rundir.metric({k: v for k, v in rec.items() if not k.startswith("_")})
                    if len(self._first_steps) < cfg.warn_steps:
                        self._check_can_learn(rec)
                    if (
                        cfg.log_completions_steps
                        and "_samples" in stats
                        and (self.step == 1 or self.step % cfg.log_completions_steps == 0)
                    ):
                        self.rundir.metric(
                            {"step": self.step, "event": "samples", "samples": stats["_samples"]}
                        )
                    self._last_reward = stats["reward_mean"]
                    bar.update(1)
                    bar.set_postfix(
                        reward=f"{stats['reward_mean']:.3f}",
                        acc=f"{stats['accuracy']:.2f}"
                        if stats.get("accuracy") is not None
                        else "-",
                        s_step=f"{dt:.1f}",
                    )
                    if self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                        self.save()
            except KeyboardInterrupt:
                bar.close()
                if self.step > 0:
                    self.save()
                status = "interrupted"
                self.log(f"interrupted at step {self.step}; resume with --resume {self.run_path}")
                raise
            finally:
                bar.close()
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, prev)
            self.save()
            self.write_model()
            ev_after = self.evaluate("after")
            extra: dict[str, Any] = {}
            if ev_after is not None:
                extra["eval_after"] = ev_after
                before = getattr(self, "_eval_correct", {}).get("before")
                if before is not None:
                    from shoestring.eval.stats import mcnemar_exact

                    after = self._eval_correct["after"]
                    res = mcnemar_exact(before, after, a_name="before", b_name="after")
                    extra["eval_mcnemar"] = {
                        "gained": res.b01,
                        "lost": res.b10,
                        "p_value": res.p_value,
                        "statement": res.statement,
                    }
                    self.log(f"McNemar exact, before vs after: {res.statement}")
            status = "finished"
            self.rundir.update_summary(
                steps=self.step,
                train_seconds=self.train_seconds,
                seconds_per_step=self.train_seconds / max(1, self.step),
                time_split=self.time_split,
                final_reward_mean=getattr(self, "_last_reward", None),
                model_dir=str(self.rundir.model_dir),
                warnings=self.warnings,
                **extra,
            )
            self.log(
                f"done: {self.step} steps in {self.train_seconds:.0f} s "
                f"({self.train_seconds / max(1, self.step):.2f} s/step; generation "
                f"{self.time_split['generation']:.0f} s, "
                f"scoring {self.time_split['scoring']:.0f} s, "
                f"backward {self.time_split['backward']:.0f} s); model -> {self.rundir.model_dir}"
            )
            return self.run_path
        except BaseException as exc:
            if status != "interrupted":
                error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            system = monitor.stop()
            self.rundir.finish(
                status,
                error=error,
                system=system,
                steps=self.step,
                train_seconds=self.train_seconds,
                seconds_per_step=self.train_seconds / max(1, self.step),
                time_split=self.time_split,
            )
            self.rundir.close()


def _questions_in(path: str) -> set[str]:
    """The ``question`` of every JSON line of ``path`` (bad lines are an error, with the line)."""
    import json

    out = set()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"eval_exclude_file {p} does not exist")
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.add(json.loads(line)["question"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{p}:{i}: not a JSON object with a 'question'") from None
    return out


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def train_grpo(
    cfg: GRPOConfig | None,
    out: str | Path = "runs",
    name: str | None = None,
    resume_dir: str | Path | None = None,
    echo: bool = True,
    progress: bool = True,
) -> Path:
    """Run GRPO (or resume an interrupted run) and return its run directory.

    ``run_dir/"model"`` is a loadable HF directory with the tokenizer (LoRA merged unless
    ``merge_lora`` is off). Ctrl-C / SIGTERM saves a checkpoint, marks the run interrupted and
    re-raises ``KeyboardInterrupt``; ``resume_dir`` continues it with the same result as an
    uninterrupted run (the stored config is used when ``cfg`` is None; pass one to change,
    e.g., ``max_steps``).
    """
    if resume_dir is not None:
        path = Path(resume_dir)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a GRPO run directory (no config.json)")
        if cfg is None:
            cfg = config_from_dict(read_json(path / "config.json"))
        trainer = GRPOTrainer(cfg, path, resume=True, echo=echo, progress=progress)
        return trainer.run()
    if cfg is None:
        raise UserError("train_grpo needs a config (or resume_dir)")
    cfg = cfg.resolved()
    if name is None:
        name = f"grpo-{time.strftime('%Y%m%d-%H%M%S')}"
    path = unique_run_dir(out, name)
    return GRPOTrainer(cfg, path, echo=echo, progress=progress).run()


__all__ = [
    "GRPOTrainer",
    "Rollout",
    "aggregate_loss",
    "completion_logps",
    "compute_advantages",
    "nanstd",
    "per_token_loss",
    "train_grpo",
]
