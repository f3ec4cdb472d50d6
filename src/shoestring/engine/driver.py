"""Any number of prompts through the engine: :func:`generate_all` sorts them by length, cuts
them into batches that fit in memory, halves a batch that runs out of memory, delivers each
output through a callback as it finishes, and returns the results in input order.

Why a driver apart from the decode loop: a benchmark of a thousand prompts needs resumability
(outputs delivered one by one), a progress bar and memory back-off, none of which a single
batch should know about.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from shoestring.engine.config import GenerationResult, Prompt, SamplingConfig
from shoestring.engine.decode import LogitsProcessor
from shoestring.engine.model_io import model_device
from shoestring.engine.prefill import encode_prompts
from shoestring.engine.sizing import auto_batch_size
from shoestring.engine.static_decode import generate_batch_auto
from shoestring.util.memory import is_oom_error
from shoestring.util.progress import progress_bar

__all__ = ["generate_all"]


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    cfg: SamplingConfig | None = None,
    *,
    callback: Callable[[int, GenerationResult], None] | None = None,
    progress: bool = True,
    desc: str = "generate",
    logits_processor: LogitsProcessor | None = None,
) -> list[GenerationResult]:
    """Generate for any number of prompts; results come back in input order.

    Prompts are sorted longest first (little padding per batch, and the batch most likely to
    run out of memory runs first) and decoded ``cfg.batch_size`` rows at a time, or an auto
    size from the model shape and free memory. With ``cfg.refill`` (continuous batching) the
    queued prompts take the places of rows that finish, so the batch stays full while answers
    end at different lengths; otherwise they go in fixed batches. ``callback(i, result)`` fires as
    output ``i`` finishes (``i = prompt * num_return_sequences + sample``), so a benchmark can
    append it to a JSONL file and resume by passing only the prompts still missing.
    ``logits_processor`` is :func:`generate_batch`'s, with output indices in the caller's
    numbering (``prompt * num_return_sequences + sample``). An
    out-of-memory batch is retried at half the size, keeping the outputs already delivered.
    """
    cfg = (cfg or SamplingConfig()).check()
    n = cfg.num_return_sequences
    ids_list = encode_prompts(tokenizer, prompts, cfg.add_special_tokens)
    order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
    results: list[GenerationResult | None] = [None] * (len(ids_list) * n)
    device = model_device(model)
    # One generator for the whole call, so a seed gives the same samples batch after batch.
    generator = None if cfg.greedy else torch.Generator(device=device).manual_seed(cfg.seed)
    sticky_cap: int | None = None  # lowered after an out-of-memory batch
    bar = progress_bar(
        total=len(results),
        desc=desc,
        unit="seq",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )

    # Continuous batching needs rows that can be dropped (compact) and a cache that can take
    # new rows (preallocated); otherwise the prompts go batch after batch.
    refill = cfg.refill and cfg.compact and cfg.preallocate
    start = 0
    while start < len(order):
        # Size this batch from its longest prompt (the first, since prompts are sorted).
        rows_fit = cfg.batch_size or auto_batch_size(model, len(ids_list[order[start]]), cfg)
        prompts_per_batch = max(1, rows_fit // n)  # a prompt brings n rows (its samples)
        if sticky_cap is not None:
            prompts_per_batch = min(prompts_per_batch, sticky_cap)
        if refill:  # one call: finished rows are replaced from the rest of the queue
            chunk, max_rows = order[start:], prompts_per_batch * n
        else:
            chunk, max_rows = order[start : start + prompts_per_batch], None

        def deliver(local: int, res: GenerationResult, chunk: list[int] = chunk) -> None:
            """Map the batch's output index to the caller's and hand the result over once."""
            out = chunk[local // n] * n + local % n
            if results[out] is not None:
                return
            res.index = out
            results[out] = res
            bar.update(1)
            if callback is not None:
                callback(out, res)

        processor = None
        if logits_processor is not None:

            def processor(
                outs: list[int],
                generated: list[int],
                logits: torch.Tensor,
                chunk: list[int] = chunk,
                user: LogitsProcessor = logits_processor,
            ) -> None:
                user([chunk[o // n] * n + o % n for o in outs], generated, logits)

        try:
            generate_batch_auto(  # the static path on CUDA, else the dynamic engine
                model,
                tokenizer,
                [ids_list[i] for i in chunk],
                cfg,
                on_result=deliver,
                generator=generator,
                max_rows=max_rows,
                logits_processor=processor,
            )
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_oom_error(exc) or prompts_per_batch == 1 or len(chunk) == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            sticky_cap = max(1, min(prompts_per_batch, len(chunk)) // 2)
            # Prompts whose every sample already arrived are done; retry the rest.
            pending = [i for i in chunk if any(results[i * n + k] is None for k in range(n))]
            order[start : start + len(chunk)] = pending
            continue
        start += len(chunk)
    bar.close()
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # pragma: no cover - would be an engine bug
        raise RuntimeError(f"generation lost outputs {missing[:10]}")
    return [r for r in results if r is not None]
