"""What one optimizer step needs, built once per run, and the step itself.

Three parts, each given exactly what it uses (no shared ``self`` with the loop):
:class:`RunData` is the prepared data cut into deterministic windows and the fixed validation
set; :class:`ModelParts` is the model with its AdamW and warmup-cosine schedule; :class:`Step`
runs one optimizer step on them - gradient accumulation, DDP gradient sync on the last
micro-batch, clipping, a non-finite loss stopped before it reaches the weights, an
out-of-memory error answered by halving the micro-batch (in the :class:`TrainState` it is
handed), a failed auto-compile answered by going eager - and evaluation. The loop that drives
it, with checkpoints, the run lifecycle and metrics, is :class:`shoestring.train.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shoestring.data.prepared import PreparedData, load_prepared
from shoestring.distributed import DistInfo, all_mean, rank_slice
from shoestring.errors import UserError
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.run_config import RunConfig
from shoestring.runtime import Runtime
from shoestring.train.autocompile import CompilePolicy
from shoestring.train.batches import WindowStream, step_micro_batches, validation_batches
from shoestring.train.optimizer import build_optimizer
from shoestring.train.state import TrainState, halve_micro_batch
from shoestring.util.memory import is_oom_error
from shoestring.util.schedule import lr_multiplier

__all__ = ["ModelParts", "NonFiniteLossError", "RunData", "Step"]

Batch = tuple[torch.Tensor, torch.Tensor]


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; the run stops with the last good checkpoint intact."""


@dataclass
class RunData:
    """The prepared data of one run: training windows and the fixed validation batches."""

    data: PreparedData
    stream: WindowStream
    val: list[Batch]  # every rank's validation batches (for the data summary)
    val_mine: list[Batch]  # this rank's share, which it evaluates

    @classmethod
    def load(cls, cfg: RunConfig, info: DistInfo, log: Callable[[str], None]) -> RunData:
        """Load ``cfg.data.path``; ``cfg.model.vocab_size`` is set from the data (and logged)."""
        if not cfg.data.path:
            raise UserError("no prepared data: pass --data DIR (made by `shoestring prepare`)")
        data = load_prepared(cfg.data.path)
        vocab = int(data.meta["vocab_size"])
        if cfg.model.vocab_size != vocab:
            log(
                f"model.vocab_size set to {vocab} from the prepared data "
                f"(config said {cfg.model.vocab_size})"
            )
            cfg.model.vocab_size = vocab
        t = cfg.train
        stream = WindowStream(data.train, t.seq_len, t.seed)
        # built for the whole world, then sliced per rank: the same set at any world size
        val = validation_batches(
            data.val, t.seq_len, t.batch_size * info.world_size, t.eval_batches
        )
        return cls(data, stream, val, rank_slice(val, info))


@dataclass
class ModelParts:
    """The model, its optimizer and learning-rate schedule (the weights a checkpoint holds)."""

    model: ShoestringGPTForCausalLM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    n_params: int

    @classmethod
    def build(cls, cfg: RunConfig, rt: Runtime) -> ModelParts:
        """A freshly initialised model (seeded by ``train.seed``) on ``rt``'s device."""
        t = cfg.train
        torch.manual_seed(t.seed)
        model = ShoestringGPTForCausalLM(ShoestringGPTConfig.from_model_config(cfg.model))
        model = model.to(rt.torch_device)
        optimizer = build_optimizer(model, cfg, rt.torch_device, rt.dtype)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_multiplier(s, t.max_steps, t.warmup_steps, "cosine", t.min_lr_ratio),
        )
        n_params = sum(p.numel() for p in model.parameters())
        return cls(model, optimizer, scheduler, n_params)


class Step:
    """One optimizer step and evaluation over a run's data and model parts.

    ``train_model`` is what the step runs forward and backward through: the model itself, its
    ``torch.compile`` wrapper, or (under DDP) the ``DistributedDataParallel`` wrapper of either.
    ``log`` and ``metric`` record the out-of-memory back-offs and compile fall-backs it makes.
    """

    def __init__(
        self,
        parts: ModelParts,
        data: RunData,
        rt: Runtime,
        info: DistInfo,
        compile_policy: CompilePolicy,
        grad_clip: float,
        log: Callable[[str], None],
        metric: Callable[[dict[str, Any]], None],
    ) -> None:
        self.parts, self.data, self.rt, self.info = parts, data, rt, info
        self.compile = compile_policy
        self.grad_clip = grad_clip
        self.log, self.metric = log, metric
        self.device = rt.torch_device
        self.train_model: torch.nn.Module = parts.model
        if compile_policy.compile_from_start():
            self.train_model = torch.compile(parts.model)
        if info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None  # CPU: None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)

    def compile_now(self) -> None:
        """Switch to the compiled model from the next step on (``compile=auto``'s decision)."""
        self.train_model = torch.compile(self.parts.model)

    def forward_loss(
        self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)  # [micro, seq_len]; y is x shifted by one
        y = y.to(self.device, non_blocking=True)
        with self.rt.autocast():
            # return_logits=False: chunked head + loss, the [B, T, V] logits never exist
            return model(input_ids=x, targets=y, return_logits=False).loss

    def __call__(self, step: int, ts: TrainState, global_batch: int) -> tuple[float, float]:
        """One optimizer step -> (mean loss, grad norm); on OOM retry with half the micro-batch
        (``ts`` records it, so a checkpoint keeps the smaller split)."""
        optimizer = self.parts.optimizer
        while True:
            try:
                return self._try_step(step, ts, global_batch)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if self.compile.fall_back(exc):
                    optimizer.zero_grad(set_to_none=True)  # the failed try's partial grads
                    self.train_model = self.parts.model
                    failed = self.compile.info["failed"]
                    self.log(
                        f"torch.compile failed at step {step} ({failed}); continuing without it"
                    )
                    continue
                if not is_oom_error(exc):
                    raise
                optimizer.zero_grad(set_to_none=True)
                gc.collect()  # the failed try's activations, before the smaller retry
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                event = halve_micro_batch(ts, step, exc, self.info.enabled)
                self.log(
                    f"out of memory at step {step}: micro-batch {event['micro_batch_from']} -> "
                    f"{event['micro_batch_to']}, accumulation -> {event['grad_accum']} "
                    "(tokens per step unchanged)"
                )
                self.metric({"step": step, "event": "oom_backoff", **event})

    def _try_step(self, step: int, ts: TrainState, global_batch: int) -> tuple[float, float]:
        info, parts = self.info, self.parts
        micro = list(  # this rank's share of the step's global batch, in micro-batches
            step_micro_batches(
                self.data.stream, step, global_batch, info.rank, info.world_size, ts.micro_batch
            )
        )
        # summed on the device: a float() per micro-batch would sync the host every time
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        n = len(micro)
        for i, (x, y) in enumerate(micro):
            # DDP all-reduces gradients on the last micro-batch only
            sync = i == n - 1 or not info.enabled
            ctx = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with ctx:
                loss = self.forward_loss(x, y, self.train_model)
                (loss / n).backward()  # / n: the accumulated gradient is the step's mean
            total += loss.detach().float() / n
        loss_value = all_mean(float(total), info, self.device)  # the same on every rank
        if not math.isfinite(loss_value):  # every rank sees it: all stop at the same step
            parts.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss became {loss_value} at step {step}")
        params = parts.model.parameters()
        if self.grad_clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            grads = [p.grad for p in params if p.grad is not None]
            gnorm = float(torch.nn.utils.get_total_norm(grads))
        if not math.isfinite(gnorm):
            parts.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm became {gnorm} at step {step}")
        parts.optimizer.step()
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        return loss_value, gnorm

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation set (all ranks' shares, all-reduced)."""
        model = self.parts.model
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [loss sum, rows]
        for x, y in self.data.val_mine:
            loss = self.forward_loss(x, y, model)
            total[0] += float(loss) * x.shape[0]  # weighted by rows: batches may differ
            total[1] += x.shape[0]
        if self.info.enabled:
            dist.all_reduce(total)
        model.train()
        return float(total[0] / total[1])
