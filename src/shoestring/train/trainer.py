"""The pretraining loop: one ``Trainer`` per run, single process or one rank of a DDP run.

This module is one idea: the loop of one training run and the state it owns between steps
(the run directory, the counters, checkpoints, the records); what one step does is
:mod:`shoestring.train.step`'s, composed in, not inherited. The loop is deliberately plain
(nanoGPT's shape): AdamW with decay on matrices only, linear warmup then cosine decay, gradient
clipping and accumulation, evaluation on a fixed validation set, and checkpoints that hold
everything needed to continue bit-for-bit. What the loop adds is the behaviour a long
unattended run needs: it records what really ran, it stops with a clear message and an intact
checkpoint when the loss goes non-finite, and Ctrl-C (or SIGTERM) saves before exit. The run
directory's status, monitor thread and signal handling are
:class:`~shoestring.rundir.lifecycle.RunLifecycle`'s, which also writes ``report.md`` and the
model card at the end; :func:`shoestring.train.run.run` picks this class or the hybrid subclass
and runs it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shoestring.distributed import init_distributed, rank_device, rank_threads
from shoestring.report.finalize import command_finalizers
from shoestring.rundir.directory import RunDir
from shoestring.rundir.lifecycle import RunLifecycle, StepBoundaryInterrupts
from shoestring.rundir.trackers import Trackers, check_trackers, tracker_names
from shoestring.runtime import Runtime, setup_runtime
from shoestring.train.autocompile import CompilePolicy
from shoestring.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_newest_intact,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
    write_model_dir,
)
from shoestring.train.config import TrainJobConfig
from shoestring.train.sizes import check_batch_fits_data, check_batch_fits_memory
from shoestring.train.state import TrainState, checkpoint_state, summary_fields
from shoestring.train.step import ModelParts, NonFiniteLossError, RunData, Step
from shoestring.util.progress import progress_bar

__all__ = ["StopTraining", "Trainer"]


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by an ``on_eval`` callback to end a run early (a pruned search trial).

    The run ends with status ``pruned``, keeps its checkpoint and metrics, and ``train()``
    re-raises this exception so the caller knows the run did not finish.
    """


class Trainer:
    """One training run; ``run()`` returns the run directory (on every rank).

    It owns the run (process group, runtime, run directory, state, checkpoints, the loop) and
    composes what a step needs: :class:`~shoestring.train.step.RunData`,
    :class:`~shoestring.train.step.ModelParts` and the :class:`~shoestring.train.step.Step`
    over them, built by ``run()``.
    """

    AUTO_COMPILE_MIN_SECONDS = 600.0  # eager time left above which compiling pays off

    def __init__(
        self,
        cfg: TrainJobConfig,
        run_path: Path,
        *,
        resume: bool = False,
        on_eval: Callable[[int, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_eval = on_eval
        self.resume = resume
        self.dist = init_distributed(cfg.train.device)
        t = cfg.train
        threads = rank_threads(t.threads, self.dist)  # ranks on one host split its cores
        self.rt: Runtime = setup_runtime(
            rank_device(t.device, self.dist), t.dtype, threads, t.flush_denormal, t.deterministic
        )
        self.device = self.rt.torch_device
        self.run_path = run_path
        quiet = cfg.output.quiet
        # only rank 0 writes the run directory; the other ranks' lifecycle handles signals only
        self.rundir = RunDir(run_path, "train", echo=not quiet) if self.dist.is_main else None
        self.progress = not quiet and self.dist.is_main
        self.trackers: Trackers | None = None
        self.compile = CompilePolicy(t.compile, self.dist.enabled)
        self.state = TrainState()  # replaced by run() (fresh or restored from a checkpoint)
        self.global_batch = 0  # sequences per optimizer step across ranks, set by run()
        self.last_val_step: int | None = None  # step of the last evaluation in this process

    # ------------------------------------------------------------------ subclass hooks
    # A trainer that changes what one step does (train/hybrid.py) overrides ``_train_step`` and
    # these hooks; the defaults keep the plain loop's behaviour exactly.
    def _after_build(self) -> None:
        """Called once the data, model and step exist (before a resume restores state)."""

    def _train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step -> (mean loss, grad norm)."""
        return self.step_fn(step, self.state, self.global_batch)

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

    def _summary_extra(self) -> dict[str, Any]:
        """Extra summary.json fields written when the run ends."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """Extra checkpoint state (tensors and plain Python values only)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (called on resume with the whole state dict)."""

    def _maybe_auto_compile(self, step_times: list[float]) -> None:
        """``compile=auto``: after a few measured eager steps, compile if enough time is left."""
        steps_left = self.cfg.train.max_steps - self.state.step
        if self.compile.decide(
            step_times, steps_left, self.state.step, self.AUTO_COMPILE_MIN_SECONDS
        ):
            self.step_fn.compile_now()
            self.log(
                f"torch.compile on from step {self.state.step} ({self.compile.info['reason']})"
            )

    # ------------------------------------------------------------------ records
    def log(self, msg: str) -> None:
        if self.rundir is not None:
            self.rundir.log(msg)

    def metric(self, rec: dict[str, Any]) -> None:
        if self.rundir is not None:
            self.rundir.metric(rec)
        if self.trackers is not None:  # report_to: the same numbers, under train/
            self.trackers.log(rec, rec["step"])

    def _build(self) -> None:
        """Data first (it sets the vocabulary size), then the sizes it allows (a batch larger
        than the data or than the memory is refused before the model exists), then the model,
        then the step over both."""
        self.data = RunData.load(self.cfg, self.dist, self.log)
        check_batch_fits_data(
            self.cfg, self.data.stream.n_windows, self.dist.world_size, self.cfg.data.path
        )
        check_batch_fits_memory(self.cfg, self.rt.dtype, self.device)
        self.parts = ModelParts.build(self.cfg, self.rt)
        self.model, self.optimizer, self.scheduler = (
            self.parts.model,
            self.parts.optimizer,
            self.parts.scheduler,
        )
        self.step_fn = Step(
            self.parts,
            self.data,
            self.rt,
            self.dist,
            self.compile,
            self.cfg.train.grad_clip,
            self.log,
            self.metric,
        )
        self._after_build()

    # ------------------------------------------------------------------ evaluation, checkpoints
    def _timed_evaluate(self) -> float:
        """Evaluate, with its time added to ``eval_seconds`` (kept out of throughput)."""
        t0 = time.perf_counter()
        val = self.step_fn.evaluate()
        RunLifecycle.work_took(time.perf_counter() - t0)  # bounds the first step's time too
        self.state.eval_seconds += time.perf_counter() - t0
        self.state.last_val_loss = val
        self.last_val_step = self.state.step
        return val

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
            # steps logged after this checkpoint are redone: their old records would repeat
            self.rundir.truncate_metrics_after(ts.step)

    def _write_model(self) -> None:
        if self.dist.is_main and self.rundir is not None:
            write_model_dir(self.model, self.rundir.model_dir, self.data.data.tokenizer_dir)

    # ------------------------------------------------------------------ main
    def run(self) -> Path:
        """Train to ``max_steps`` (or resume to it); re-raises how a run that did not finish
        ended: ``StopTraining`` (pruned), ``KeyboardInterrupt`` (Ctrl-C or SIGTERM, after a
        checkpoint), ``NonFiniteLossError`` or the original error (failed)."""
        cfg, t = self.cfg, self.cfg.train
        try:
            check_trackers(t.report_to)  # a missing tracker library: one line, before the model
            self._build()
            self.global_batch = t.batch_size * t.grad_accum * self.dist.world_size
            self.state = TrainState(micro_batch=t.batch_size, grad_accum=t.grad_accum)
            if self.resume:
                self._restore()
        except BaseException as exc:
            # failed before the lifecycle started: still a complete directory, lock released
            if self.rundir is not None:
                self.rundir.abandon(exc, config=None if self.resume else cfg.run_dict())
            raise
        tokens_per_step = self.global_batch * t.seq_len
        life = RunLifecycle(
            self.rundir,
            config=cfg.run_dict(),
            start_fields={
                "run_name": self.run_path.name,
                "trainer": t.trainer,
                "runtime": self.rt.to_dict(),
                "world_size": self.dist.world_size,
                "n_params": self.parts.n_params,
                "data": self._data_summary(),
                "tokens_per_step": tokens_per_step,
            },
            summary=self._summary,
            monitor_interval=0.5,
            close=False,  # the closing log line comes after the final summary
            # report.md (and the model card where model/ was saved) from the final summary
            finalizers=command_finalizers(model_card=True),
        )
        try:
            with life:
                self._open_trackers()
                self.log(
                    f"{'resuming' if self.resume else 'training'} {self.parts.n_params / 1e6:.2f}M "
                    f"params on {self.rt.device} ({self.rt.dtype}, {self.rt.threads} threads, "
                    f"world {self.dist.world_size}); {tokens_per_step} tokens/step, "
                    f"{t.max_steps} steps -> {self.run_path}"
                )
                self._run_handled(life, tokens_per_step)
                self._write_model()  # reached only when every step ran
        finally:
            self._close(life.status or "finished")
        return self.run_path

    def _run_handled(self, life: RunLifecycle, tokens_per_step: int) -> None:
        """The step loop, with each way of ending early recorded and re-raised."""
        try:
            # Ctrl-C/SIGTERM take effect between steps, never inside backward (see the class)
            with StepBoundaryInterrupts() as self.interrupts:
                self._loop(tokens_per_step)
        except StopTraining as exc:
            error = str(exc) or "stopped early by the on_eval callback"
            life.set_status("pruned", error)
            self.log(f"stopped at step {self.state.step}: {error}")
            self._save()
            raise StopTraining(error) from None
        except KeyboardInterrupt:
            life.responded()  # the checkpoint below may take longer than the stop watchdog's grace
            self.log(f"interrupted at step {self.state.step}; saving a checkpoint")
            self._save()
            raise  # the lifecycle records "interrupted"
        except NonFiniteLossError as exc:
            last = latest_checkpoint(self.run_path / "checkpoints")
            error = (
                str(exc)
                + (
                    f"; the last good checkpoint is {last}"
                    if last
                    else "; no checkpoint was written before it"
                )
                + "; lower train.lr, raise train.warmup_steps or keep train.grad_clip > 0"
            )
            life.set_status("failed", error)
            self.log(f"stopped: {error}")
            raise NonFiniteLossError(error) from None
        except BaseException as exc:
            self.log(f"failed: {type(exc).__name__}: {exc}")
            raise  # the lifecycle records "failed" with this message

    def _loop(self, tokens_per_step: int) -> None:
        """Evaluate at step 0 (if not resumed past it), then step, log, evaluate and save."""
        t, ts = self.cfg.train, self.state
        bar = progress_bar(
            total=t.max_steps,
            initial=ts.step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
        try:
            # the untrained model's loss is the baseline every curve starts from
            if ts.initial_val_loss is None:
                ts.initial_val_loss = val = self._timed_evaluate()
                # min(.., 50): a diverged loss must not overflow exp() into an error
                self.metric({"step": 0, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
                self.log(
                    f"step 0: val loss {val:.4f} (ln vocab = "
                    f"{math.log(self.cfg.model.vocab_size):.4f})"
                )
            window_tokens, window_time = 0, 0.0  # throughput since the last metrics record
            step_times: list[float] = []
            while ts.step < t.max_steps:
                self.interrupts.check()  # a stop asked for during the last step ends here
                # 1. one optimizer step, timed to the device's completion
                step = ts.step
                t0 = time.perf_counter()
                loss, gnorm = self._train_step(step)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()  # kernels run async: time the work, not the launch
                dt = time.perf_counter() - t0
                RunLifecycle.work_took(dt)  # a stop signal waits for a step this long
                # 2. count it: steps, training time, tokens (a predicted step trains on none)
                ts.step = step + 1
                ts.train_seconds += dt
                step_tokens = self._step_tokens(tokens_per_step)
                ts.tokens_seen += step_tokens
                ts.last_train_loss = loss
                step_times.append(dt)
                # 3. compile=auto decides from the measured eager steps; hooks add fields
                self._maybe_auto_compile(step_times)
                extra = self._after_step(step, dt)
                window_tokens += step_tokens
                window_time += dt
                bar.update(1)
                # 4. a metrics record every log_every steps, throughput over the window
                if self._log_step_due(ts.step):
                    tps = window_tokens / max(window_time, 1e-9)  # eval time is not counted
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
                # 5. evaluate every eval_every steps: best checkpoint, on_eval may prune
                if ts.step % t.eval_every == 0 or ts.step == t.max_steps:
                    self._eval_step(loss)
                # 6. a resumable checkpoint every save_every steps and at the end
                if ts.step % t.save_every == 0 or ts.step == t.max_steps:
                    self._save()
        finally:
            bar.close()

    def _eval_step(self, train_loss: float) -> None:
        """Evaluate, record, keep the best weights, and give ``on_eval`` its say."""
        ts = self.state
        val = self._timed_evaluate()
        self.metric(
            {
                "step": ts.step,
                "val_loss": val,
                "val_ppl": math.exp(min(val, 50)),
                "train_seconds": ts.train_seconds,
            }
        )
        self.log(f"step {ts.step}: train loss {train_loss:.4f}, val loss {val:.4f}")
        if val < ts.best_val_loss:
            ts.best_val_loss, ts.best_step = val, ts.step
            self._save_best(val)
        if self.on_eval is not None:
            self.on_eval(ts.step, val)

    def _open_trackers(self) -> None:
        """The ``report_to`` trackers (rank 0 only: one run directory, one dashboard)."""
        names = tracker_names(self.cfg.train.report_to)
        if self.rundir is not None and names:
            self.trackers = Trackers(names, self.run_path, self.cfg.run_dict(), self.log)

    def _data_summary(self) -> dict[str, Any]:
        m = self.data.data.meta
        return {
            "path": str(Path(self.cfg.data.path).resolve()),
            "train_tokens": m.get("train_tokens"),
            "val_tokens": m.get("val_tokens"),
            "vocab_size": m.get("vocab_size"),
            "tokenizer_sha256": m.get("tokenizer_sha256"),
            "val_sequences": sum(x.shape[0] for x, _ in self.data.val),
            "split": m.get("split", "document"),
        }

    def _summary(self) -> dict[str, Any]:
        """summary.json's end-of-run fields (the lifecycle adds status, wall time, system and
        error)."""
        fields = summary_fields(self.state, self.cfg.train, self.compile.info)
        return {**fields, **self._summary_extra()}

    def _close(self, status: str) -> None:
        if self.trackers is not None:
            self.trackers.close()
        if self.rundir is None:
            return
        ts = self.state

        def loss(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        # an interrupted run's last evaluation may be many steps back: say which step it was
        at = ""
        if self.last_val_step is not None and self.last_val_step != ts.step:
            at = f" (evaluated at step {self.last_val_step})"
        self.log(
            f"{status}: {ts.step:,} steps, val loss {loss(ts.initial_val_loss)} -> "
            f"{loss(ts.last_val_loss)}{at}; run directory {self.run_path}"
        )
        self.rundir.close()
