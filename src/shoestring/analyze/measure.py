"""Measured training throughput: the step ``shoestring train`` runs, timed on this host.

The step is assembled from the trainer's own pieces - the same model class and init, the
trainer's optimizer (:func:`shoestring.train.optimizer.build_optimizer`, fused AdamW with decay on
matrices), its learning-rate schedule, the runtime's autocast (:func:`setup_runtime`), the
chunked linear + cross-entropy head, gradient accumulation and clipping - so the tokens/s
reported here is the speed ``train`` gets with that config, minus data loading (random token
ids of the right shape; the trainer's loader is a slice of a memory-mapped array) and minus
evaluation. A few warm-up steps run first (allocator, oneDNN kernel selection), then the
median of the timed steps is reported, with every step time kept.

Memory: peak RSS is reset before the model is built (``/proc/self/clear_refs``, Linux) and read
after the last step, so it is the peak of this configuration alone; on CUDA the allocator's
peak is reported as well. The first warm-up step records the bytes autograd saves for backward.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from shoestring.analyze.config import MeasureSettings
from shoestring.analyze.count import build_model, saved_bytes
from shoestring.errors import UserError
from shoestring.run_config import RunConfig
from shoestring.runtime import Runtime, setup_runtime
from shoestring.train.optimizer import build_optimizer
from shoestring.util.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from shoestring.util.schedule import lr_multiplier

__all__ = ["measure_training"]

#: (max - min) / median of the timed steps above which a measurement is flagged as disturbed.
NOISY_SPREAD = 0.25


def _trim_heap() -> None:
    """Give freed heap back to the OS so the next configuration's RSS starts clean."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _runtime_for(cfg: RunConfig) -> Runtime:
    t = cfg.train
    return setup_runtime(t.device, t.dtype, t.threads, t.flush_denormal, t.deterministic)


def measure_training(
    cfg: RunConfig,
    settings: MeasureSettings | None = None,
    on_step: Callable[[str, int, float], None] | None = None,
) -> dict[str, Any]:
    """Time optimizer steps of ``cfg`` on this host; returns tokens/s, step times and memory.

    ``on_step(phase, index, seconds)`` is called after every step ("warmup" or "timed"), for
    progress bars. Raises UserError when the loss is not finite (a broken config).
    """
    settings = settings or MeasureSettings()
    rt = _runtime_for(cfg)
    dev = rt.torch_device
    t = cfg.train
    _trim_heap()
    rss_before = current_rss_bytes()
    peak_reset = reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    model = build_model(cfg, dev)
    model.train()
    optimizer = build_optimizer(model, cfg, dev)
    # the trainer's schedule: linear warm-up, cosine decay to min_lr_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(s, t.max_steps, t.warmup_steps, "cosine", t.min_lr_ratio),
    )
    train_model: torch.nn.Module = model
    compiled = t.compile == "on"
    if compiled:
        train_model = torch.compile(model)  # type: ignore[assignment]

    gen = torch.Generator().manual_seed(t.seed)
    shape = (t.batch_size, t.seq_len)
    micro = [
        (
            torch.randint(0, cfg.model.vocab_size, shape, generator=gen).to(dev),
            torch.randint(0, cfg.model.vocab_size, shape, generator=gen).to(dev),
        )
        for _ in range(t.grad_accum)
    ]
    saved: dict[str, Any] = {}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(record_saved: bool) -> float:
        """One optimizer step, as Trainer._try_step does it (no DDP) -> mean loss."""
        total = torch.zeros((), dtype=torch.float32, device=dev)
        n = len(micro)
        for i, (x, y) in enumerate(micro):
            hook = saved_bytes(model) if record_saved and i == 0 else contextlib.nullcontext()
            with hook as rec, rt.autocast():
                loss = train_model(input_ids=x, targets=y, return_logits=False).loss
            if rec is not None:
                saved.update(rec)
            (loss / n).backward()
            total += loss.detach().float() / n
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total)

    warm_times: list[float] = []
    times: list[float] = []
    losses: list[float] = []
    for i in range(settings.warmup):
        sync()
        t0 = time.perf_counter()
        losses.append(step(record_saved=i == 0))
        sync()
        warm_times.append(time.perf_counter() - t0)
        if on_step:
            on_step("warmup", i, warm_times[-1])
    if settings.warmup == 0:
        # the saved-tensor count needs one forward; do it outside the timed steps
        losses.append(step(record_saved=True))
    timed_total = 0.0
    for i in range(settings.steps):
        sync()
        t0 = time.perf_counter()
        losses.append(step(record_saved=False))
        sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        timed_total += dt
        if on_step:
            on_step("timed", i, dt)
        if len(times) >= settings.min_steps and timed_total >= settings.seconds:
            break
    if not all(math.isfinite(v) for v in losses):
        raise UserError(
            f"the loss became non-finite while measuring {cfg.preset or 'this config'} "
            f"({losses}); check the learning rate and model shape"
        )
    peak = peak_rss_bytes() if peak_reset else None
    cuda_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    # the model and optimizer are freed on return; the next measurement trims the heap first

    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
    med = statistics.median(times)
    return {
        "runtime": rt.to_dict(),
        "compile": "on" if compiled else f"off (train.compile={t.compile}: eager is measured)",
        "tokens_per_step": tokens_per_step,
        "micro_batch": t.batch_size,
        "grad_accum": t.grad_accum,
        "warmup_steps": len(warm_times),
        "warmup_seconds": [round(x, 4) for x in warm_times],
        "timed_steps": len(times),
        "step_seconds": [round(x, 4) for x in times],
        "step_seconds_median": round(med, 4),
        "step_seconds_spread": round((max(times) - min(times)) / med, 3) if med else None,
        "tokens_per_second": tokens_per_step / med,
        # the fastest step is what an undisturbed host does; a large spread means it was not
        "tokens_per_second_best_step": tokens_per_step / min(times),
        "noisy": bool(med and (max(times) - min(times)) / med > NOISY_SPREAD),
        "loss_first": losses[0],
        "saved_activation_bytes": int(saved.get("bytes", 0)) or None,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "peak_rss_over_baseline_bytes": (peak - rss_before) if peak is not None else None,
        "cuda_peak_allocated_bytes": cuda_peak,
        "throughput_note": "median optimizer step on random token ids; no data loading, "
        "no evaluation",
    }
