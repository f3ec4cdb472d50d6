"""Pretraining loop: single process or DDP, exact resume, OOM back-off, NaN stop.

The loop is deliberately plain (nanoGPT's shape): AdamW with decay on matrices only, linear
warmup then cosine decay, gradient clipping and accumulation, evaluation on a fixed validation
set, and checkpoints that hold everything needed to continue bit-for-bit. What it adds is the
behaviour a long unattended run needs: it records what really ran, it survives an
out-of-memory error by halving the micro-batch (same tokens per step), it stops with a clear
message and an intact checkpoint when the loss goes non-finite, and Ctrl-C saves before exit.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from shoestring.config import RunConfig, to_dict
from shoestring.errors import UserError
from shoestring.runs.monitor import SystemMonitor
from shoestring.runs.rundir import RunDir, unique_run_dir
from shoestring.runtime import Runtime, physical_cores, setup_runtime
from shoestring.train.batches import WindowStream, step_micro_batches, validation_batches
from shoestring.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; the run stops with the last good checkpoint intact."""


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by an ``on_eval`` callback to end a run early (a pruned search trial).

    The run ends with status ``pruned``, keeps its checkpoint and metrics, and ``train()``
    re-raises this exception so the caller knows the run did not finish.
    """


def is_oom_error(exc: BaseException) -> bool:
    """True for CUDA and CPU allocator failures (torch raises several kinds)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text
        or "can't allocate memory" in text
        or "not enough memory" in text
        or isinstance(exc, MemoryError)
    )


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning-rate multiplier: linear warmup to 1, cosine decay to ``min_lr_ratio``."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    span = max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    model: torch.nn.Module, cfg: RunConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2) only; fused kernels where available."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return adamw(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))


def adamw(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW as one fused kernel for all parameters (CPU and CUDA); the per-tensor loop where
    this torch or device has no fused kernel."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(world, rank, local)


@dataclass
class TrainState:
    """Everything besides weights that a checkpoint must hold for an exact resume."""

    step: int = 0
    micro_batch: int = 0
    grad_accum: int = 0
    best_val_loss: float = float("inf")
    best_step: int = -1
    initial_val_loss: float | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    tokens_seen: int = 0
    oom_events: list[dict[str, Any]] = field(default_factory=list)


def _state_dict(
    ts: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    global_batch: int,
) -> dict[str, Any]:
    return {
        "train_state": {k: v for k, v in ts.__dict__.items()},
        "data_position": ts.step * global_batch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }


class Trainer:
    """One training run; ``run()`` returns the run directory (on every rank)."""

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
        device = t.device
        if self.dist.enabled and (
            device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        ):
            device = f"cuda:{self.dist.local_rank}"
        threads = t.threads or max(1, physical_cores() // self.dist.world_size)
        self.rt: Runtime = setup_runtime(
            device, t.dtype, threads, t.flush_denormal, t.deterministic
        )
        self.device = self.rt.torch_device
        self.run_path = run_path
        self.rundir = RunDir(run_path, "train", echo=echo) if self.dist.is_main else None
        self.progress = progress and self.dist.is_main
        self.tb = None

    # ------------------------------------------------------------------ subclass hooks
    # A trainer that changes what one step does (train/hybrid.py) overrides ``_train_step`` and
    # these hooks; the defaults keep the plain loop's behaviour exactly.
    def _step_tokens(self, tokens_per_step: int) -> int:
        """Tokens the step just taken trained on (a skipped backward trains on none)."""
        return tokens_per_step

    def _after_step(self, step: int, seconds: float) -> dict[str, Any]:
        """Called after every step with its measured time; returns extra metrics fields."""
        return {}

    def _log_step_due(self, step: int) -> bool:
        """Whether the step that just finished (``step`` = steps done) gets a metrics record."""
        t = self.cfg.train
        return step % t.log_every == 0 or step == t.max_steps

    def _extra_state(self) -> dict[str, Any]:
        """Extra checkpoint state (tensors and plain Python values only)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (called on resume with the whole state dict)."""

    def _summary_extra(self) -> dict[str, Any]:
        """Extra summary.json fields written when the run ends."""
        return {}

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

    def _all_mean(self, value: float) -> float:
        if not self.dist.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.dist.world_size

    # ------------------------------------------------------------------ setup
    def _load_data(self) -> None:
        from shoestring.data.text import load_prepared

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
        # the validation set is defined by the global batch, so a DDP run and a single process
        # at equal global batch evaluate exactly the same sequences; each rank takes a slice
        world, rank = self.dist.world_size, self.dist.rank
        self.val = validation_batches(
            self.data.val, t.seq_len, t.batch_size * world, t.eval_batches
        )
        self.val_mine = []
        for x, y in self.val:
            per = -(-x.shape[0] // world)
            lo, hi = rank * per, (rank + 1) * per
            if x[lo:hi].shape[0]:
                self.val_mine.append((x[lo:hi], y[lo:hi]))

    def _build_model(self) -> None:
        from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM

        torch.manual_seed(self.cfg.train.seed)
        hf_cfg = ShoestringGPTConfig.from_model_config(self.cfg.model)
        self.model = ShoestringGPTForCausalLM(hf_cfg).to(self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = build_optimizer(self.model, self.cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_at(s, self.cfg)
        )
        self.train_model: torch.nn.Module = self.model
        self.compile_info: dict[str, Any] = {"mode": self.cfg.train.compile, "used": False}
        if self.cfg.train.compile == "on":
            self.train_model = torch.compile(self.model)
            self.compile_info.update(used=True, from_step=0, reason="train.compile=on")
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.train_model, device_ids=ids)

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
        ts = self.state
        while True:
            try:
                return self._try_step(step)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if self._compile_failed(step, exc):
                    continue
                if not is_oom_error(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.dist.enabled or ts.micro_batch <= 1:
                    raise UserError(
                        f"out of memory at step {step} with micro-batch {ts.micro_batch}"
                        + (
                            " under DDP (back-off needs a single process)"
                            if self.dist.enabled
                            else "; nothing smaller to try"
                        )
                        + "; lower train.batch_size or model size"
                    ) from exc
                old = ts.micro_batch
                ts.micro_batch //= 2
                ts.grad_accum *= 2
                event = {
                    "step": step,
                    "micro_batch_from": old,
                    "micro_batch_to": ts.micro_batch,
                    "grad_accum": ts.grad_accum,
                    "error": str(exc).splitlines()[0][:200],
                }
                ts.oom_events.append(event)
                self.log(
                    f"out of memory at step {step}: micro-batch {old} -> {ts.micro_batch}, "
                    f"accumulation -> {ts.grad_accum} (tokens per step unchanged)"
                )
                self.metric({"step": step, "event": "oom_backoff", **event})

    # ------------------------------------------------------------------ torch.compile
    AUTO_COMPILE_MIN_SECONDS = 600.0  # eager time left above which compiling pays off

    def _maybe_auto_compile(self, step_times: list[float]) -> None:
        """``compile=auto``: measure a few eager steps, compile only if enough time is left.

        torch.compile costs 10-60 s up front and saved 11% (2M params) to 33% (13M params) of a
        CPU step in our measurements, so it pays only for long runs; the decision uses the
        measured step time, not a guess. DDP runs stay eager (the ranks must agree).
        """
        t = self.cfg.train
        info = self.compile_info
        if t.compile != "auto" or info["used"] or "decided" in info or self.dist.enabled:
            return
        if len(step_times) < 3:
            return
        step_time = sorted(step_times[-3:])[1]
        left = step_time * (t.max_steps - self.state.step)
        info["decided"] = True
        info["eager_step_seconds"] = round(step_time, 4)
        info["eager_seconds_left"] = round(left, 1)
        if left < self.AUTO_COMPILE_MIN_SECONDS:
            info["reason"] = (
                f"auto: {left:.0f} s of eager training left < "
                f"{self.AUTO_COMPILE_MIN_SECONDS:.0f} s, compiling would not pay off"
            )
            return
        self.train_model = torch.compile(self.model)
        info.update(
            used=True,
            from_step=self.state.step,
            reason=f"auto: {left:.0f} s of eager training left",
        )
        self.log(f"torch.compile on from step {self.state.step} ({info['reason']})")

    def _compile_failed(self, step: int, exc: BaseException) -> bool:
        """With compile=auto, a compile error falls back to eager (logged and recorded)."""
        info = self.compile_info
        if not info["used"] or self.cfg.train.compile != "auto" or is_oom_error(exc):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        self.train_model = self.model
        info.update(
            used=False,
            failed=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            reason="auto: torch.compile failed, continuing eager",
        )
        self.log(f"torch.compile failed at step {step} ({info['failed']}); continuing without it")
        return True

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
            sync = i == n - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with ctx:
                loss = self._forward_loss(x, y, self.train_model)
                (loss / n).backward()
            total += loss.detach().float() / n
        loss_value = self._all_mean(float(total))
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss became {loss_value} at step {step}")
        if self.cfg.train.grad_clip > 0:
            gnorm = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            )
        else:
            gnorm = float(
                torch.nn.utils.get_total_norm(
                    [p.grad for p in self.model.parameters() if p.grad is not None]
                )
            )
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

    # ------------------------------------------------------------------ checkpoints
    def _save(self, tag: str | None = None) -> None:
        if not self.dist.is_main or self.rundir is None:
            return
        state = _state_dict(self.state, self.optimizer, self.scheduler, self.global_batch)
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
        ckpt = latest_checkpoint(self.run_path / "checkpoints")
        if ckpt is None:
            raise UserError(f"{self.run_path} has no complete checkpoint to resume from")
        state = load_checkpoint(ckpt, self.model, map_location=self.device)
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
        """model/ = final weights as an HF directory with the tokenizer, written then renamed."""
        if not self.dist.is_main or self.rundir is None:
            return
        final = self.rundir.model_dir
        tmp = final.parent / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(tmp, safe_serialization=True)
        tok_dir = self.data.tokenizer_dir
        if tok_dir is not None and tok_dir.is_dir():
            for f in tok_dir.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    # ------------------------------------------------------------------ main
    def run(self) -> Path:
        cfg, t = self.cfg, self.cfg.train
        self._load_data()
        self._build_model()
        self.global_batch = t.batch_size * t.grad_accum * self.dist.world_size
        self.state = TrainState(micro_batch=t.batch_size, grad_accum=t.grad_accum)
        if self.resume:
            self._restore()
        tokens_per_step = self.global_batch * t.seq_len
        monitor = SystemMonitor().start() if self.dist.is_main else None
        if self.rundir is not None:
            self.rundir.start(
                to_dict(cfg),
                run_name=self.run_path.name,
                trainer=t.trainer,
                runtime=self.rt.to_dict(),
                world_size=self.dist.world_size,
                n_params=self.n_params,
                data=self._data_summary(),
                tokens_per_step=tokens_per_step,
            )
            if t.report_to == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_path / "tensorboard"))
            self.log(
                f"{'resuming' if self.resume else 'training'} {self.n_params / 1e6:.2f}M "
                f"params on {self.rt.device} ({self.rt.dtype}, {self.rt.threads} threads, "
                f"world {self.dist.world_size}); {tokens_per_step} tokens/step, "
                f"{t.max_steps} steps -> {self.run_path}"
            )
        prev_handler = signal.getsignal(signal.SIGTERM)
        if self.dist.is_main and prev_handler in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        status, error = "finished", None
        wall0 = time.perf_counter()
        bar = tqdm(
            total=t.max_steps,
            initial=self.state.step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
        try:
            ts = self.state
            if ts.initial_val_loss is None:
                t0 = time.perf_counter()
                ts.initial_val_loss = ts.last_val_loss = self.evaluate()
                ts.eval_seconds += time.perf_counter() - t0
                self.metric(
                    {
                        "step": 0,
                        "val_loss": ts.initial_val_loss,
                        "val_ppl": math.exp(min(ts.initial_val_loss, 50)),
                    }
                )
                self.log(
                    f"step 0: val loss {ts.initial_val_loss:.4f} (ln vocab = "
                    f"{math.log(cfg.model.vocab_size):.4f})"
                )
            window_tokens, window_time = 0, 0.0
            step_times: list[float] = []
            while ts.step < t.max_steps:
                step = ts.step
                t0 = time.perf_counter()
                loss, gnorm = self._train_step(step)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                ts.step = step + 1
                ts.train_seconds += dt
                step_tokens = self._step_tokens(tokens_per_step)
                ts.tokens_seen += step_tokens
                ts.last_train_loss = loss
                step_times.append(dt)
                self._maybe_auto_compile(step_times)
                extra = self._after_step(step, dt)
                window_tokens += step_tokens
                window_time += dt
                bar.update(1)
                if self._log_step_due(ts.step):
                    tps = window_tokens / max(window_time, 1e-9)
                    self.metric(
                        {
                            "step": ts.step,
                            "loss": loss,
                            "lr": self.scheduler.get_last_lr()[0],
                            "grad_norm": gnorm,
                            "tokens_per_second": tps,
                            "tokens": ts.tokens_seen,
                            "train_seconds": ts.train_seconds,
                            "micro_batch": ts.micro_batch,
                            "grad_accum": ts.grad_accum,
                            **extra,
                        }
                    )
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                    window_tokens, window_time = 0, 0.0
                if ts.step % t.eval_every == 0 or ts.step == t.max_steps:
                    t0 = time.perf_counter()
                    val = self.evaluate()
                    ts.eval_seconds += time.perf_counter() - t0
                    ts.last_val_loss = val
                    self.metric(
                        {
                            "step": ts.step,
                            "val_loss": val,
                            "val_ppl": math.exp(min(val, 50)),
                            "train_seconds": ts.train_seconds,
                        }
                    )
                    self.log(f"step {ts.step}: train loss {loss:.4f}, val loss {val:.4f}")
                    if val < ts.best_val_loss:
                        ts.best_val_loss, ts.best_step = val, ts.step
                        self._save_best(val)
                    if self.on_eval is not None:
                        self.on_eval(ts.step, val)
                if ts.step % t.save_every == 0 or ts.step == t.max_steps:
                    self._save()
        except StopTraining as exc:
            status, error = "pruned", str(exc) or "stopped early by the on_eval callback"
            self.log(f"stopped at step {self.state.step}: {error}")
            self._save()
        except KeyboardInterrupt:
            status = "interrupted"
            self.log(f"interrupted at step {self.state.step}; saving a checkpoint")
            self._save()
        except NonFiniteLossError as exc:
            status, error = "failed", str(exc)
            last = latest_checkpoint(self.run_path / "checkpoints")
            error += (
                f"; the last good checkpoint is {last}"
                if last
                else "; no checkpoint was written before it"
            ) + "; lower train.lr, raise train.warmup_steps or keep train.grad_clip > 0"
            self.log(f"stopped: {error}")
        except BaseException as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            self.log(f"failed: {error}")
            raise
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, prev_handler)
            if status == "finished":
                self._write_model()
            self._finish(status, error, monitor, time.perf_counter() - wall0)
        if status == "pruned":
            raise StopTraining(error)
        if status == "failed":
            raise NonFiniteLossError(error or "training failed")
        if status == "interrupted":
            raise KeyboardInterrupt
        return self.run_path

    def _data_summary(self) -> dict[str, Any]:
        m = self.data.meta
        return {
            "path": str(Path(self.cfg.data.path).resolve()),
            "train_tokens": m.get("train_tokens"),
            "val_tokens": m.get("val_tokens"),
            "vocab_size": m.get("vocab_size"),
            "tokenizer_sha256": m.get("tokenizer_sha256"),
            "val_sequences": sum(x.shape[0] for x, _ in self.val),
            "split": m.get("split", "document"),
        }

    def _finish(
        self, status: str, error: str | None, monitor: SystemMonitor | None, wall: float
    ) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.rundir is None:
            return
        ts, t = self.state, self.cfg.train
        system = monitor.stop() if monitor else {}
        summary = {
            "steps": ts.step,
            "max_steps": t.max_steps,
            "tokens": ts.tokens_seen,
            "train_seconds": round(ts.train_seconds, 3),
            "eval_seconds": round(ts.eval_seconds, 3),
            "session_wall_seconds": round(wall, 3),
            "tokens_per_second": (ts.tokens_seen / ts.train_seconds) if ts.train_seconds else None,
            "samples_per_second": (
                ts.tokens_seen / t.seq_len / ts.train_seconds if ts.train_seconds else None
            ),
            "throughput_note": "training-step time only; evaluation and checkpointing excluded",
            "initial_val_loss": ts.initial_val_loss,
            "final_val_loss": ts.last_val_loss,
            "final_train_loss": ts.last_train_loss,
            "best_val_loss": ts.best_val_loss if math.isfinite(ts.best_val_loss) else None,
            "best_step": ts.best_step,
            "micro_batch": ts.micro_batch,
            "grad_accum": ts.grad_accum,
            "oom_events": ts.oom_events,
            "compile": {k: v for k, v in self.compile_info.items() if k != "decided"},
            "system": system,
            "error": error,
            **self._summary_extra(),
        }
        self.rundir.finish(status, **summary)
        self.log(
            f"{status}: {ts.step} steps, val loss {ts.initial_val_loss} -> "
            f"{ts.last_val_loss}; run directory {self.run_path}"
        )
        self.rundir.close()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def train(
    cfg: RunConfig,
    out: str | Path = "runs",
    name: str | None = None,
    resume_dir: str | Path | None = None,
    echo: bool = True,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> Path:
    """Train (or resume) a run and return its directory.

    ``on_eval(step, val_loss)`` is called after every evaluation; raising ``StopTraining`` from
    it ends the run with status ``pruned`` (used by ``search --prune``).
    """
    if resume_dir is not None:
        path = Path(resume_dir)
    else:
        default = cfg.preset + (f"-{cfg.variant}" if cfg.variant else "") if cfg.preset else "run"
        base = name or default
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            path = Path(out) / base  # every rank must agree on the path
        else:
            path = unique_run_dir(out, base)
    trainer_cls: type[Trainer] = Trainer
    if cfg.train.trainer == "hybrid":
        from shoestring.train.hybrid import HybridTrainer

        trainer_cls = HybridTrainer
    trainer = trainer_cls(
        cfg, path, resume=resume_dir is not None, echo=echo, progress=progress, on_eval=on_eval
    )
    try:
        path = trainer.run()
        if trainer.dist.enabled and dist.is_initialized():
            # leave together: a rank that tears gloo down while rank 0 is still writing model/
            # can abort ("terminate called without an active exception", exit -6)
            dist.barrier()
        return path
    finally:
        if trainer.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()
