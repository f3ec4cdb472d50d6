"""A trainer's parts below the loop: data, model and optimizer, one step, evaluation, checkpoints.

:class:`StepTrainer` is what one optimizer step needs and what it leaves behind: the prepared
data cut into deterministic windows, the model with its AdamW and warmup-cosine schedule, the
step itself (gradient accumulation, DDP gradient sync on the last micro-batch, clipping, a
non-finite loss stopped before it reaches the weights, an out-of-memory error answered by
halving the micro-batch, a failed auto-compile answered by going eager), evaluation on the
fixed validation set, and checkpoints for an exact resume. The loop that drives it, with the
run lifecycle and metrics, is :class:`shoestring.train.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shoestring.data.prepared import load_prepared
from shoestring.errors import UserError
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.run_config import RunConfig
from shoestring.rundir.directory import RunDir
from shoestring.runtime import Runtime, physical_cores, setup_runtime
from shoestring.train.autocompile import CompilePolicy
from shoestring.train.batches import WindowStream, step_micro_batches, validation_batches
from shoestring.train.checkpoint import (
    load_checkpoint,
    load_newest_intact,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
    write_model_dir,
)
from shoestring.train.distributed import all_mean, init_distributed, rank_device, rank_slice
from shoestring.train.optimizer import build_optimizer
from shoestring.train.state import TrainState, checkpoint_state, halve_micro_batch
from shoestring.util.memory import is_oom_error
from shoestring.util.schedule import lr_multiplier

__all__ = ["NonFiniteLossError", "StepTrainer"]


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; the run stops with the last good checkpoint intact."""


class StepTrainer:
    """Data, model, optimizer, one optimizer step, evaluation and checkpoints of one run.

    Subclassed by :class:`~shoestring.train.trainer.Trainer`, which adds the loop; the state it
    steps (``self.state``, ``self.global_batch``) is set up by the loop's ``run()``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_path: Path,
        *,
        resume: bool = False,
        echo: bool = True,
        progress: bool = True,
        on_eval: Callable[[int, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_eval = on_eval
        self.resume = resume
        self.dist = init_distributed(cfg.train.device)
        t = cfg.train
        threads = t.threads or max(1, physical_cores() // self.dist.world_size)
        self.rt: Runtime = setup_runtime(
            rank_device(t.device, self.dist), t.dtype, threads, t.flush_denormal, t.deterministic
        )
        self.device = self.rt.torch_device
        self.run_path = run_path
        # only rank 0 writes the run directory; the other ranks' lifecycle handles signals only
        self.rundir = RunDir(run_path, "train", echo=echo) if self.dist.is_main else None
        self.progress = progress and self.dist.is_main
        self.tb: Any = None
        self.compile = CompilePolicy(t.compile, self.dist.enabled)
        self.state = TrainState()  # replaced by run() (fresh or restored from a checkpoint)
        self.global_batch = 0  # sequences per optimizer step across ranks, set by run()

    # ------------------------------------------------------------------ checkpoint hooks
    # A trainer that keeps more state (train/hybrid.py) saves and restores it through these.
    def _extra_state(self) -> dict[str, Any]:
        """Extra checkpoint state (tensors and plain Python values only)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (called on resume with the whole state dict)."""

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self.rundir is not None:
            self.rundir.log(msg)

    def metric(self, rec: dict[str, Any]) -> None:
        if self.rundir is not None:
            self.rundir.metric(rec)
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, rec["step"])

    # ------------------------------------------------------------------ setup
    def _load_data(self) -> None:
        if not self.cfg.data.path:
            raise UserError("no prepared data: pass --data DIR (made by `shoestring prepare`)")
        self.data = load_prepared(self.cfg.data.path)
        vocab = int(self.data.meta["vocab_size"])
        if self.cfg.model.vocab_size != vocab:
            self.log(
                f"model.vocab_size set to {vocab} from the prepared data "
                f"(config said {self.cfg.model.vocab_size})"
            )
            self.cfg.model.vocab_size = vocab
        t = self.cfg.train
        self.stream = WindowStream(self.data.train, t.seq_len, t.seed)
        world = self.dist.world_size
        self.val = validation_batches(
            self.data.val, t.seq_len, t.batch_size * world, t.eval_batches
        )
        self.val_mine = rank_slice(self.val, self.dist)

    def _build_model(self) -> None:
        t = self.cfg.train
        torch.manual_seed(t.seed)
        hf_cfg = ShoestringGPTConfig.from_model_config(self.cfg.model)
        self.model = ShoestringGPTForCausalLM(hf_cfg).to(self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = build_optimizer(self.model, self.cfg, self.device, self.rt.dtype)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(s, t.max_steps, t.warmup_steps, "cosine", t.min_lr_ratio),
        )
        self.train_model: torch.nn.Module = self.model
        if self.compile.compile_from_start():
            self.train_model = torch.compile(self.model)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)

    # ------------------------------------------------------------------ steps
    def _forward_loss(
        self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        with self.rt.autocast():
            return model(input_ids=x, targets=y, return_logits=False).loss

    def _train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step -> (mean loss, grad norm); on OOM retry with half the micro-batch."""
        while True:
            try:
                return self._try_step(step)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if self.compile.fall_back(exc):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.train_model = self.model
                    failed = self.compile.info["failed"]
                    self.log(
                        f"torch.compile failed at step {step} ({failed}); continuing without it"
                    )
                    continue
                if not is_oom_error(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                event = halve_micro_batch(self.state, step, exc, self.dist.enabled)
                self.log(
                    f"out of memory at step {step}: micro-batch {event['micro_batch_from']} -> "
                    f"{event['micro_batch_to']}, accumulation -> {event['grad_accum']} "
                    "(tokens per step unchanged)"
                )
                self.metric({"step": step, "event": "oom_backoff", **event})

    def _try_step(self, step: int) -> tuple[float, float]:
        ts = self.state
        micro = list(
            step_micro_batches(
                self.stream,
                step,
                self.global_batch,
                self.dist.rank,
                self.dist.world_size,
                ts.micro_batch,
            )
        )
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        n = len(micro)
        for i, (x, y) in enumerate(micro):
            # DDP all-reduces gradients on the last micro-batch only
            sync = i == n - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with ctx:
                loss = self._forward_loss(x, y, self.train_model)
                (loss / n).backward()
            total += loss.detach().float() / n
        loss_value = all_mean(float(total), self.dist, self.device)
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss became {loss_value} at step {step}")
        params = self.model.parameters()
        if self.cfg.train.grad_clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip))
        else:
            grads = [p.grad for p in params if p.grad is not None]
            gnorm = float(torch.nn.utils.get_total_norm(grads))
        if not math.isfinite(gnorm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm became {gnorm} at step {step}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, gnorm

    @torch.no_grad()
    def evaluate(self) -> float:
        model = self.model
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x, y in self.val_mine:
            loss = self._forward_loss(x, y, model)
            total[0] += float(loss) * x.shape[0]
            total[1] += x.shape[0]
        if self.dist.enabled:
            dist.all_reduce(total)
        model.train()
        return float(total[0] / total[1])

    def _timed_evaluate(self) -> float:
        """``evaluate()`` with its time added to ``eval_seconds`` (kept out of throughput)."""
        t0 = time.perf_counter()
        val = self.evaluate()
        self.state.eval_seconds += time.perf_counter() - t0
        self.state.last_val_loss = val
        return val

    # ------------------------------------------------------------------ checkpoints
    def _save(self, tag: str | None = None) -> None:
        if not self.dist.is_main or self.rundir is None:
            return
        state = checkpoint_state(self.state, self.optimizer, self.scheduler, self.global_batch)
        state.update(self._extra_state())
        name = tag or f"step_{self.state.step}"
        save_checkpoint(self.rundir.checkpoints_dir / name, self.model, state)
        if tag is None:
            prune_checkpoints(self.rundir.checkpoints_dir, self.cfg.train.keep_checkpoints)

    def _save_best(self, val_loss: float) -> None:
        if not self.dist.is_main or self.rundir is None:
            return
        save_checkpoint(
            self.rundir.checkpoints_dir / "best",
            self.model,
            {"step": self.state.step, "val_loss": val_loss},
        )

    def _restore(self) -> None:
        assert self.rundir is not None or not self.dist.is_main
        ckpt, state = load_newest_intact(
            self.run_path / "checkpoints",
            lambda path: load_checkpoint(path, self.model, map_location=self.device),
            self.log,
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        ts = TrainState(**state["train_state"])
        self.state = ts
        self._load_extra_state(state)
        self.log(
            f"resumed from {ckpt} at step {ts.step} "
            f"(data position {state['data_position']} sequences)"
        )
        if self.rundir is not None:
            self.rundir.truncate_metrics_after(ts.step)

    def _write_model(self) -> None:
        if self.dist.is_main and self.rundir is not None:
            write_model_dir(self.model, self.rundir.model_dir, self.data.tokenizer_dir)
