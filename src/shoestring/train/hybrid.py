"""``train --trainer hybrid``: the plain trainer with each step routed through the controller.

The phases, the confidence score and the rollback rule are
:class:`~shoestring.train.hybrid_controller.HybridController`'s (read its module docstring
first, then docs/hybrid.md); this module only connects it to
:class:`~shoestring.train.trainer.Trainer`: a real step is the plain trainer's step, a
monitored predicted step is a forward pass on that step's batch, and the controller's state
travels in the checkpoint and its statistics in summary.json.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from shoestring.distributed import refuse_distributed
from shoestring.errors import UserError
from shoestring.train.batches import step_micro_batches
from shoestring.train.config import TrainJobConfig
from shoestring.train.hybrid_controller import HybridController, StepOutcome
from shoestring.train.trainer import Trainer

__all__ = ["HybridTrainer"]


class HybridTrainer(Trainer):
    """The plain trainer with each step routed through a ``HybridController``.

    Same run directory, evaluation, checkpoints, OOM back-off and resume as ``Trainer``; what
    changes is what one step does, how many tokens it trains on (none when predicted), that
    every step is logged with its phase, and the extra checkpoint and summary state.
    """

    def __init__(self, cfg: TrainJobConfig, run_path: Path, **kwargs: Any) -> None:
        super().__init__(cfg, run_path, **kwargs)
        refuse_distributed("train.trainer=hybrid")  # its controller is one process's
        self._outcome: StepOutcome | None = None
        self._wall_before = 0.0
        self._t0 = time.perf_counter()

    def run(self) -> Path:
        self._t0 = time.perf_counter()
        return super().run()

    def _after_build(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.hybrid = HybridController(
            self.cfg.hybrid,
            params,
            self.optimizer,
            self.scheduler,
            emit=self.metric,
            log=self.log,
            batch_loss=self._monitor_loss,
        )
        mem = self.hybrid.memory_report()
        self.log(
            f"hybrid trainer, predictor {self.hybrid.predictor.name}: extra memory "
            f"{mem['predictor_bytes'] / 2**20:.1f} MiB predictor + "
            f"{mem['anchor_bytes'] / 2**20:.1f} MiB rollback copy + "
            f"{mem['scratch_bytes'] / 2**20:.1f} MiB scratch"
        )

    @torch.no_grad()
    def _monitor_loss(self, step: int) -> float:
        """Loss of step ``step``'s batch at the current weights (forward only)."""
        ts = self.state
        total, n = 0.0, 0
        stream = self.data.stream
        for x, y in step_micro_batches(stream, step, self.global_batch, 0, 1, ts.micro_batch):
            total += float(self.step_fn.forward_loss(x, y, self.model)) * x.shape[0]
            n += x.shape[0]
        return total / max(n, 1)

    def _train_step(self, step: int) -> tuple[float, float]:
        plain_step = super()._train_step  # forward, backward, optimizer step, OOM back-off
        out = self.hybrid.step(
            step,
            lambda: plain_step(step),
            lambda: self._monitor_loss(step),
        )
        self._outcome = out
        last = self.state.last_train_loss
        loss = out.loss if out.loss is not None else (last if last is not None else math.nan)
        return loss, out.grad_norm if out.grad_norm is not None else math.nan

    def _step_tokens(self, tokens_per_step: int) -> int:
        out = self._outcome
        return 0 if out is not None and out.phase == "predict" else tokens_per_step

    def _after_step(self, step: int, seconds: float) -> dict[str, Any]:
        out = self._outcome
        if out is None:
            return {}
        self.hybrid.add_seconds(out.phase, seconds)
        extra = {"phase": out.phase, **out.fields}
        if out.phase == "predict":
            extra["loss"] = out.loss
            extra["grad_norm"] = None
        return extra

    def _log_step_due(self, step: int) -> bool:
        return True  # every step, so phases and time-to-loss can be read from metrics.jsonl

    def _extra_state(self) -> dict[str, Any]:
        wall = self._wall_before + time.perf_counter() - self._t0
        return {"hybrid": {**self.hybrid.state_dict(), "wall_seconds": wall}}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "hybrid" not in state:
            raise UserError(
                f"{self.run_path} was not trained with the hybrid trainer; resume it with "
                "--set train.trainer=plain"
            )
        self.hybrid.load_state_dict(state["hybrid"])
        self._wall_before = float(state["hybrid"].get("wall_seconds", 0.0))

    def _summary_extra(self) -> dict[str, Any]:
        wall = self._wall_before + time.perf_counter() - self._t0
        return {"hybrid": self.hybrid.summary(wall)}
