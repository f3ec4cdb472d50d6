"""The GRPO trainer: one run from model and prompts to a trained model, resumable at any step.

This module is one idea: the GRPO training run (setup, step loop, checkpoints, final summary).

What happens in one optimizer step (TRL's algorithm, shoestring's engine):

1. every ``num_iterations`` steps, ``prompts_per_step`` prompts are sampled ``num_generations``
   times each with the batched KV-cache engine (:mod:`shoestring.rl.rollout`);
2. rewards are scored per function under the run's scoring protocol, weighted and summed;
   advantages are the reward minus its group mean, divided by the group/batch std
   (:func:`shoestring.rl.loss.compute_advantages`);
3. the per-token policy loss of ``loss_type`` (clipped surrogate, CISPO, SAPO or VESPO; per
   token or per sequence) plus ``beta`` * KL to the reference (k3 estimator) is
   aggregated over tokens as ``loss_type`` says and back-propagated per micro-batch
   (:mod:`shoestring.rl.update`).

The reference model costs nothing when ``beta == 0`` (no pass at all); with LoRA it is the
same model with its adapters disabled, so no second copy is held; only a full fine-tune with
``beta > 0`` keeps a frozen copy, and the log says so with its size (:mod:`shoestring.rl.policy`).
The run directory's lifecycle (status, monitor, SIGTERM) is :class:`RunLifecycle`'s.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from shoestring.data.input_report import report_capped, skipped_fields
from shoestring.distributed import DistInfo, broadcast_from_main, rank_device, rank_threads
from shoestring.errors import UserError
from shoestring.models.context import context_limit
from shoestring.report.finalize import command_finalizers
from shoestring.rl.config import GRPOConfig
from shoestring.rl.data import PromptSet, data_source, load_task
from shoestring.rl.diagnostics import cannot_learn_reasons
from shoestring.rl.grpo_checkpoint import load_grpo_checkpoint, save_grpo_checkpoint
from shoestring.rl.heldout import HeldOutEval
from shoestring.rl.policy import Policy
from shoestring.rl.reward_contract import RewardContext, contract_rewards
from shoestring.rl.rewards import reward_label, reward_weights
from shoestring.rl.rollout import Rollout, RolloutGenerator
from shoestring.rl.run_checks import announce_settings
from shoestring.rl.update import backward_rollout
from shoestring.rundir.directory import RunDir
from shoestring.rundir.follower import RunDirFollower
from shoestring.rundir.lifecycle import RunLifecycle, StepBoundaryInterrupts
from shoestring.rundir.trackers import Trackers
from shoestring.runtime import setup_runtime
from shoestring.scoring.protocols import resolve_protocol
from shoestring.train.optimizer import adamw
from shoestring.util.progress import progress_bar
from shoestring.util.schedule import lr_multiplier

__all__ = ["GRPOTrainer"]


class GRPOTrainer:
    """One GRPO run: model, data, optimizer, run directory. Use :func:`shoestring.rl.grpo.run`;
    the tests drive it directly to look inside."""

    def __init__(
        self,
        cfg: GRPOConfig,
        run_path: Path,
        *,
        resume: bool = False,
        echo: bool = True,
        progress: bool = True,
        ranks: DistInfo | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_path = run_path
        self.resume = resume
        # under torchrun: every rank runs the same loop on its share; rank 0 alone writes
        self.ranks = ranks or DistInfo()
        self.progress = progress and self.ranks.is_main
        self.rundir: RunDir | RunDirFollower = (
            RunDir(run_path, "grpo", echo=echo)
            if self.ranks.is_main
            else RunDirFollower(run_path, "grpo")
        )
        self.step = 0
        self.train_seconds = 0.0
        self.rollout: Rollout | None = None
        self.policy: Policy | None = None
        self.heldout: HeldOutEval | None = None
        self.warnings: list[str] = []
        self._first_steps: list[dict[str, Any]] = []
        self._last_gen_stats: dict[str, Any] = {}
        self._last_reward: float | None = None
        self.time_split = {"generation": 0.0, "scoring": 0.0, "backward": 0.0}
        self.trackers = Trackers([], run_path, {}, self.log)  # none until run() opens them

    def log(self, msg: str) -> None:
        self.rundir.log(msg)

    @property
    def reference_passes(self) -> int:
        """Forward passes of the reference policy so far (0 for a ``beta == 0`` run)."""
        return 0 if self.policy is None else self.policy.reference_passes

    @property
    def frozen_ref(self) -> torch.nn.Module | None:
        """The frozen reference copy (only a full fine-tune with ``beta > 0`` has one)."""
        return None if self.policy is None else self.policy.frozen_ref

    # -- setup
    def setup(self) -> None:
        """Host, model, protocol, optimizer, rewards and prompts, in the order the seed needs
        (LoRA initialisation draws from the seeded generator)."""
        cfg = self.cfg
        if not cfg.model_name_or_path:
            raise UserError("model_name_or_path is empty; pass the model to train (--model)")
        # this rank's GPU under torchrun on CUDA; ranks on one host split its cores
        self.runtime = setup_runtime(
            rank_device(cfg.device, self.ranks), cfg.dtype, rank_threads(cfg.threads, self.ranks)
        )
        self.warnings += announce_settings(cfg, self.runtime, self.log)  # never a silent drop
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.policy = policy = Policy.load(cfg, self.runtime, self.log)
        self.model, self.tokenizer = policy.model, policy.tokenizer
        # auto = chat-cot with a chat template, else qa (the synthetic corpus's own layout)
        self.protocol = resolve_protocol(cfg.protocol, self.tokenizer, fallback="qa")
        self.params = policy.params
        self.n_trainable = sum(p.numel() for p in self.params)
        self.n_params = policy.n_params
        self.optimizer = adamw(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        self.reward_names = list(cfg.rewards)
        skipped: list[str] = []
        rows = load_task(
            cfg.dataset,
            "train",
            cfg.dataset_slice,
            cfg.seed,
            cfg.dataset_size or None,
            on_warning=skipped.append,
        )
        # the absolute file the prompts came from (never data: null), then any skipped lines
        self.rundir.update_summary(data={**data_source(cfg.dataset), "n_problems": len(rows)})
        self._record_skipped(skipped, cfg.dataset, "data")
        # the context policy: prompts fit the model's real limit next to the completions
        self.prompts = PromptSet.encode(
            rows,
            self.tokenizer,
            self.protocol,
            cfg.max_prompt_length,
            context_limit(self.model, self.tokenizer),
            cfg.max_completion_length,
        )
        self.rundir.update_summary(prompts=self.prompts.summary())
        for msg in self.prompts.cut_warnings(cfg.max_prompt_length):
            self.log(f"WARNING: {msg}")
            self.warnings.append(msg)
        if cfg.prompts_per_step < 1:
            raise UserError(
                f"per_device_train_batch_size*gradient_accumulation_steps={cfg.completions_per_step}"
                f" is smaller than num_generations={cfg.num_generations}"
            )
        self.total_steps = cfg.total_steps(len(rows))
        # every reward is called with TRL's contract (trainer_state, log_extra, conversational)
        self.reward_context = RewardContext.for_run(cfg, self.total_steps, self.prompts)
        self.generator = RolloutGenerator(
            cfg,
            policy,
            self.prompts,
            self.protocol,
            self.reward_names,
            contract_rewards(self.reward_names, self.protocol, self.reward_context),
            [reward_label(n) for n in self.reward_names],
            torch.tensor(reward_weights(self.reward_names, cfg.reward_weights)),
            self.ranks,
        )

    # -- one optimizer step
    def train_step(self) -> dict[str, Any]:
        """One optimizer step (a new rollout every ``num_iterations`` steps); its metrics."""
        cfg = self.cfg
        assert self.policy is not None
        step = self.step
        stats: dict[str, Any] = {}
        # a new rollout every num_iterations steps (TRL's mu); a restored run without its
        # buffer generates one too
        if step % cfg.num_iterations == 0 or self.rollout is None:
            # rewards see the generation batch's index, as TRL's trainer_state does
            self.reward_context.begin_step(step, step // cfg.num_iterations)
            self.rollout, stats = self.generator.generate(step // cfg.num_iterations)
            # what rewards logged (log_metric/log_extra), every rank's
            self.reward_context.drain_into(stats, self.ranks)
            self._last_gen_stats = stats
        else:  # reuse the batch: its generation and scoring cost nothing this step
            stats = dict(self._last_gen_stats)
            stats["time_generation"] = 0.0
            stats["time_scoring"] = 0.0
        r = self.rollout
        self.model.train()  # the loss runs in train mode (rollouts and evaluation use eval)
        t0 = time.perf_counter()
        # the schedule's multiplier of this step (warmup, then linear/cosine/constant decay)
        lr = cfg.learning_rate * lr_multiplier(
            step, self.total_steps, cfg.warmup_for(self.total_steps), decay=cfg.lr_scheduler_type
        )
        for group in self.optimizer.param_groups:  # set directly: no scheduler to checkpoint
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        # forward + backward per micro-batch; gradients accumulate over the whole rollout
        # (under torchrun: this rank's micro-batches, then the gradients summed over ranks)
        losses = backward_rollout(self.policy, r, cfg, self.ranks)
        grad_norm = None
        if cfg.max_grad_norm > 0:  # the norm before clipping, as TRL logs it
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        self.optimizer.step()
        stats.update(
            loss=losses["loss"],
            lr=lr,
            kl=losses["kl"],
            entropy=losses["entropy"],
            clip_fraction=losses["clip_fraction"],
            grad_norm=grad_norm,
            retention=losses["retention"],
            time_backward=time.perf_counter() - t0,
        )
        tot_loss = losses["loss"]
        if not math.isfinite(tot_loss):
            raise UserError(
                f"GRPO loss became {tot_loss} at step {step}; lower learning_rate or check rewards"
            )
        return stats

    # -- checkpoints and the final model
    def save(self) -> Path | None:
        """A resumable checkpoint: trained weights, optimizer, RNG, the rollout buffer (rank
        0's to write: every rank holds the same state); None on the other ranks."""
        if not self.ranks.is_main:
            return None
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "time_split": dict(self.time_split),
            "train_seconds": self.train_seconds,
        }
        if self.rollout is not None:
            state["rollout"] = {k: v.cpu() for k, v in self.rollout.tensors().items()}
            state["last_gen_stats"] = {
                k: v for k, v in self._last_gen_stats.items() if isinstance(v, (int, float))
            }
        return save_grpo_checkpoint(
            self.rundir.checkpoints_dir, self.step, self.model, state, self.cfg.save_total_limit
        )

    def restore(self) -> None:
        """Continue from the newest checkpoint (metrics after its step are dropped)."""
        assert self.policy is not None
        device = self.policy.device
        ckpt, state = load_grpo_checkpoint(self.rundir, self.model, device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.time_split = dict(state.get("time_split", self.time_split))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if "rollout" in state:
            self.rollout = Rollout.from_tensors(
                {k: v.to(device) for k, v in state["rollout"].items()}
            )
            self._last_gen_stats = dict(state.get("last_gen_stats", {}))
        self.rundir.truncate_metrics_after(self.step)
        self.log(f"resumed from {ckpt} at step {self.step}")

    def write_model(self) -> Path:
        assert self.policy is not None
        if not self.ranks.is_main:  # every rank holds the same weights; rank 0 writes them
            return self.rundir.model_dir
        return self.policy.write_model(self.rundir.model_dir, self.cfg.merge_lora)

    # -- evaluation (greedy, held-out, through the one scoring path)
    def _heldout(self) -> HeldOutEval | None:
        """The held-out set (built once: the same problems before and after), or None."""
        if self.cfg.eval_problems <= 0:
            return None
        if self.heldout is None:
            assert self.policy is not None
            train_q = {r["question"] for r in self.prompts.rows}
            self.heldout = HeldOutEval(self.cfg, self.protocol, train_q, self.policy.gen_dtype)
            self.rundir.update_summary(eval_data=data_source(self.heldout.spec, "test"))
            self._record_skipped(self.heldout.skipped, self.heldout.spec, "eval_data")
        return self.heldout

    def _record_skipped(self, skipped: list[str], spec: str, key: str) -> None:
        """Malformed dataset lines that were skipped, in the run directory (log, warnings and
        ``summary.json[key]``), not only on stderr; the first few named, then a count."""
        if not skipped:
            return
        report_capped(skipped, lambda msg: self.log(f"{key}: skipped {msg}"))
        self.warnings.append(f"{len(skipped)} malformed line(s) of {spec} skipped")
        known = self.rundir.summary.get(key) or {}  # the data source recorded before
        self.rundir.update_summary(**{key: {**known, **skipped_fields(skipped)}})

    def evaluate(self, tag: str) -> dict[str, Any] | None:
        """Held-out accuracy now (``eval_<tag>.jsonl`` per problem), or None when off."""
        heldout = self._heldout()
        if heldout is None:
            return None
        self.model.eval()
        return heldout.run(
            self.model, self.tokenizer, tag, self.run_path, self.progress, self.log, self.ranks
        )

    def _evaluate_before(self) -> None:
        """The 'before' accuracy, or on resume the verdicts the interrupted run recorded."""
        heldout = self._heldout()
        if heldout is None:
            return
        # rank 0 reads what the interrupted run recorded; every rank follows its decision
        reloaded = broadcast_from_main(
            self.resume
            and self.ranks.is_main
            and "eval_before" in self.rundir.summary
            and heldout.reload("before", self.run_path),
            self.ranks,
        )
        if reloaded:
            return
        self.rundir.update_summary(eval_before=self.evaluate("before"))

    def _evaluate_after(self) -> dict[str, Any]:
        """The 'after' accuracy and McNemar's test against 'before' (summary fields)."""
        ev_after = self.evaluate("after")
        if ev_after is None:
            return {}
        extra: dict[str, Any] = {"eval_after": ev_after}
        assert self.heldout is not None
        mcnemar = self.heldout.mcnemar()
        if mcnemar is not None:
            extra["eval_mcnemar"] = mcnemar
            self.log(f"McNemar exact, before vs after: {mcnemar['statement']}")
        return extra

    # -- the startup warning, measured
    def _check_can_learn(self, rec: dict[str, Any]) -> None:
        self._first_steps.append(rec)
        if len(self._first_steps) != min(self.cfg.warn_steps, self.total_steps):
            return
        for msg in cannot_learn_reasons(self.cfg, self._first_steps):
            self.warnings.append(msg)
            self.log(f"WARNING: this configuration cannot learn well: {msg}")
            self.rundir.metric({"step": self.step, "event": "warning", "reason": msg})

    # -- main loop
    def _end_fields(self) -> dict[str, Any]:
        """Fields of the final summary, whatever the status (the lifecycle calls it at exit)."""
        return {
            "steps": self.step,
            "train_seconds": self.train_seconds,
            "seconds_per_step": self.train_seconds / max(1, self.step),
            "time_split": self.time_split,
        }

    def run(self) -> Path:
        """Train to ``total_steps`` (or resume), write the model, evaluate; the run directory."""
        cfg = self.cfg
        config = None if self.resume else cfg.run_dict()  # a resumed run keeps its config.json
        # report.md always; the model card only quotes a finished run (it skips any other)
        finalizers = command_finalizers(model_card=True)
        with (
            RunLifecycle(
                self.rundir if isinstance(self.rundir, RunDir) else None,  # rank 0's to own
                config=config,
                start_fields={"world_size": self.ranks.world_size},
                summary=self._end_fields,
                finalizers=finalizers,
            ),
            contextlib.ExitStack() as stack,
        ):
            # the first line names the directory config.json and summary.json are in
            self.log(f"{'resuming' if self.resume else 'GRPO'} run directory: {self.run_path}")
            self.setup()
            # report_to: every metrics record also goes to TensorBoard / W&B (closed on exit)
            self.trackers = stack.enter_context(self._open_trackers())
            assert self.policy is not None
            self.rundir.update_summary(
                runtime=self.runtime.to_dict(),
                max_steps=self.total_steps,
                model={
                    "path": cfg.model_name_or_path,
                    **{k: v for k, v in self.policy.info.items() if k != "load_seconds"},
                },
                n_trainable=self.n_trainable,
                protocol=self.protocol.to_dict(),
                protocol_key=self.protocol.key(),
            )
            if self.resume:
                self.restore()
            self.log(
                f"{'resuming' if self.resume else 'GRPO on'} {self.policy.info['model_type']} "
                f"({self.n_params / 1e6:.2f}M params, {self.n_trainable / 1e6:.3f}M trained"
                f"{', LoRA r=' + str(cfg.lora_rank) if cfg.lora_rank else ', full fine-tune'}) on "
                f"{self.runtime.device} ({self.runtime.dtype}, {self.runtime.threads} threads"
                f"{f' per rank, {self.ranks.world_size} ranks' if self.ranks.enabled else ''}): "
                f"{len(self.prompts.rows)} prompts of {cfg.dataset}, {cfg.prompts_per_step} "
                f"prompts x {cfg.num_generations} generations per step, {self.total_steps} steps, "
                f"loss {cfg.loss_type}, beta {cfg.beta} -> {self.run_path}"
            )
            self._evaluate_before()
            self._train_loop()
            self.save()
            self.write_model()
            extra = self._evaluate_after()
            self.rundir.update_summary(
                **self._end_fields(),
                final_reward_mean=self._last_reward,
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

    @contextlib.contextmanager
    def _open_trackers(self) -> Iterator[Trackers]:
        """The run's ``report_to`` trackers, closed however the run ends."""
        report_to = self.cfg.report_to if self.ranks.is_main else []  # rank 0 reports
        trackers = Trackers(report_to, self.run_path, self.cfg.run_dict(), self.log)
        try:
            yield trackers
        finally:
            trackers.close()

    def _train_loop(self) -> None:
        """Optimizer steps up to ``total_steps``; Ctrl-C/SIGTERM saves a checkpoint first."""
        bar = progress_bar(
            total=self.total_steps,
            initial=self.step,
            desc="grpo",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        # Ctrl-C/SIGTERM take effect between steps, never inside backward or a rollout
        interrupts = StepBoundaryInterrupts()
        try:
            with interrupts:
                self._steps(bar, interrupts)
        except KeyboardInterrupt:
            bar.close()
            RunLifecycle.responded()  # the save below may outlast the stop watchdog's grace
            if self.step > 0:
                self.save()
            self.log(f"interrupted at step {self.step}; resume with --resume {self.run_path}")
            raise
        finally:
            bar.close()

    def _steps(self, bar: Any, interrupts: StepBoundaryInterrupts) -> None:
        """The step loop of :meth:`_train_loop`."""
        cfg = self.cfg
        while self.step < self.total_steps:
            interrupts.check()  # a stop asked for during the last step ends here
            # one optimizer step (generating a new rollout when this step starts a batch)
            t0 = time.perf_counter()
            stats = self.train_step()
            dt = time.perf_counter() - t0
            RunLifecycle.work_took(dt)  # a stop signal's watchdog waits for steps this long
            # time accounting: total and per phase (generation, scoring, backward)
            self.train_seconds += dt
            for k in self.time_split:
                self.time_split[k] += stats.get(f"time_{k}", 0.0)
            self.step += 1
            # the metrics record; ``_``-keys stay in memory (samples, answer presence)
            rec = {"step": self.step, **{k: v for k, v in stats.items() if k[0] != "_"}}
            rec["step_seconds"] = dt
            rec["_answer_present"] = stats.get("_answer_present", 1.0)
            if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
                logged = {k: v for k, v in rec.items() if k[0] != "_"}
                self.rundir.metric(logged)
                self.trackers.log(logged, self.step)  # the same numbers, TRL's names
            # the first warn_steps records decide the "cannot learn" warning
            if len(self._first_steps) < cfg.warn_steps:
                self._check_can_learn(rec)
            # sample completions, on step 1 and every log_completions_steps
            if (
                cfg.log_completions_steps
                and "_samples" in stats
                and (self.step == 1 or self.step % cfg.log_completions_steps == 0)
            ):
                self.rundir.metric(
                    {"step": self.step, "event": "samples", "samples": stats["_samples"]}
                )
            self._last_reward = stats["reward_mean"]
            acc = stats.get("accuracy")
            bar.update(1)
            bar.set_postfix(
                reward=f"{stats['reward_mean']:.3f}",
                acc=f"{acc:.2f}" if acc is not None else "-",
                s_step=f"{dt:.1f}",
            )
            # a resumable checkpoint every save_steps (the last one is saved by run())
            if self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                self.save()
