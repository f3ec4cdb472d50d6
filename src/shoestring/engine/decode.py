"""One batch of prompts through the decode loop: :func:`generate_batch` sets up precision and
the sampling generator, :func:`decode_batch` runs prefill and then one forward pass per token
for all rows, finishing each row on its own (EOS, stop string, length) and compacting the
batch as rows finish.

Why the engine owns this loop instead of calling ``model.generate``: it is what lets a row stop
on a stop string found in incrementally decoded text, lets finished rows stop costing compute,
and lets a prompt's samples share one prefill (GRPO).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from shoestring.engine.cache import (
    append_cache_rows,
    can_append_rows,
    is_dynamic_cache,
    repeat_cache_rows,
    select_cache_rows,
    trim_cache_left,
)
from shoestring.engine.config import (
    FinishReason,
    GenerationResult,
    Prompt,
    SamplingConfig,
)
from shoestring.engine.cpu_attention import cpu_fp32_attention
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.model_io import (
    compute_dtype,
    forward_last_logits,
    forward_params,
)
from shoestring.engine.prefill import (
    pad_token_id,
    prefill_prompts,
    start_request,
)
from shoestring.engine.sampling import choose_next_tokens
from shoestring.engine.stops import (
    IncrementalText,
    find_stop,
    finished_result,
)
from shoestring.errors import UserError

__all__ = ["LogitsProcessor", "decode_batch", "generate_batch"]

# (output index per batch row, tokens generated so far per row, logits [rows, vocab]) -> None;
# edits the logits in place before the next token is chosen.
LogitsProcessor = Callable[[list[int], list[int], torch.Tensor], None]


@dataclass
class _Row:
    """Book-keeping of one output sequence while its batch runs."""

    prompt_index: int
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: IncrementalText | None = None
    emitted: int = 0  # characters already streamed to on_text
    stop: tuple[int, str] | None = None
    t0: float = 0.0  # when the row's prefill started (its latency counts from there)


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    cfg: SamplingConfig | None = None,
    *,
    on_text: Callable[[int, str], None] | None = None,
    on_result: Callable[[int, GenerationResult], None] | None = None,
    generator: torch.Generator | None = None,
    max_rows: int | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> list[GenerationResult]:
    """Generate for all ``prompts`` in one batch (one forward pass per step for all rows).

    With ``max_rows``, at most that many rows decode together and the other prompts join
    (in the given order) as rows finish: continuous batching (``cfg.refill``).
    ``logits_processor(outputs, generated, logits)`` may edit the next-token logits in place
    before each choice: ``outputs[b]`` is batch row ``b``'s output index, ``generated[b]`` the
    tokens it has so far (a per-row rule, like a ``transformers`` ``LogitsProcessor``).
    ``prompts`` are strings or token-id lists. Returns ``len(prompts) * num_return_sequences``
    results, sample ``k`` of prompt ``i`` at ``i * n + k``. ``on_text(i, delta)`` streams new
    text of output ``i`` (text that could still turn into a stop string is held back until it is
    certain); ``on_result(i, result)`` fires the moment output ``i`` finishes. ``generator``
    overrides the per-call generator seeded from ``cfg.seed``.
    """
    cfg = (cfg or SamplingConfig()).check()
    if not prompts:
        return []
    device, ids_list, eos, generator = start_request(model, tokenizer, prompts, cfg, generator)
    store_dtype = None
    try:
        with (
            torch.inference_mode(),
            compute_dtype(model, cfg.dtype),
            cpu_fp32_attention(model, cfg.cpu_fp32_attention) as store_dtype,
        ):
            return decode_batch(
                model,
                tokenizer,
                ids_list,
                cfg,
                eos,
                device,
                generator,
                on_text,
                on_result,
                store_dtype,
                max_rows,
                logits_processor,
            )
    except RuntimeError as exc:
        # A model that reaches the registry but also runs attention its own way may refuse
        # the fp32 cache (dtype mismatch) in its first forward pass, before any output exists:
        # remember that and run it with its own dtype.
        if store_dtype is None or "dtype" not in str(exc).lower():
            raise
        with contextlib.suppress(AttributeError, TypeError):
            model._shoestring_no_fp32_attention = True
        return generate_batch(
            model,
            tokenizer,
            prompts,
            cfg,
            on_text=on_text,
            on_result=on_result,
            generator=generator,
            max_rows=max_rows,
            logits_processor=logits_processor,
        )


def decode_batch(
    model: Any,
    tokenizer: Any,
    ids_list: list[list[int]],
    cfg: SamplingConfig,
    eos: set[int],
    device: torch.device,
    generator: torch.Generator | None,
    on_text: Callable[[int, str], None] | None,
    on_result: Callable[[int, GenerationResult], None] | None,
    store_dtype: torch.dtype | None = None,
    max_rows: int | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> list[GenerationResult]:
    """Prefill ``ids_list`` and decode until every row has finished; results in output order.

    Runs inside :func:`generate_batch`'s inference-mode and precision contexts; ``eos`` is the
    set of ids that end a row (empty when EOS is ignored) and ``store_dtype`` the KV cache's
    dtype (``None`` = the model's own). ``max_rows`` bounds the rows decoded together: the
    prompts beyond it wait in a queue (in the given order) and are prefilled into the running
    batch as rows finish (continuous batching, :func:`_refill`), or, where the cache cannot
    take rows, once the batch is empty.
    """
    params = forward_params(model)
    n = cfg.num_return_sequences
    pad = pad_token_id(tokenizer, model, eos)
    stops = list(cfg.stop_strings)
    hold = max((len(s) for s in stops), default=1) - 1  # chars that may still start a stop
    track_text = bool(stops) or on_text is not None
    if track_text and tokenizer is None:
        raise ValueError("stop strings and streaming need a tokenizer")
    eos_list = sorted(eos)
    eos_tensor = torch.tensor(eos_list, device=device, dtype=torch.long) if eos_list else None

    lengths = [len(x) for x in ids_list]
    rows = [
        _Row(prompt_index=i // n, prompt_tokens=lengths[i // n]) for i in range(len(ids_list) * n)
    ]
    if track_text:
        for r in rows:
            r.text = IncrementalText(tokenizer, cfg.skip_special_tokens)
    results: list[GenerationResult | None] = [None] * len(rows)
    per_batch = max(1, (max_rows or len(rows)) // n)  # prompts decoded together at most
    queue = list(range(len(ids_list)))  # prompts not yet prefilled, in order

    def prefill(count: int) -> _Batch:
        """Prefill the next ``count`` queued prompts (their samples share it)."""
        take, queue[:] = queue[:count], queue[count:]
        t = time.perf_counter()
        logits, cache, mask = prefill_prompts(
            model, params, [ids_list[i] for i in take], cfg, pad, device, store_dtype
        )
        pos = torch.tensor([lengths[i] for i in take], dtype=torch.long, device=device)
        if n > 1:  # samples of one prompt share its prefill: repeat the cache rows
            repeated = repeat_cache_rows(cache, n)
            if repeated is None:
                raise UserError(
                    f"num_return_sequences>1 needs a cache that can be repeated "
                    f"({type(cache)}); repeat the prompts instead"
                )
            cache = repeated
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            pos = pos.repeat_interleave(n, dim=0)
        active = [i * n + k for i in take for k in range(n)]
        for out_idx in active:
            rows[out_idx].t0 = t
        return _Batch(logits, cache, mask, pos, active)

    def finish(out_idx: int, reason: FinishReason) -> None:
        """Decode the row's full text once, cut it at its stop string, flush what streaming
        held back, and deliver the result."""
        seconds = time.perf_counter() - rows[out_idx].t0
        res = finished_result(
            rows[out_idx], out_idx, reason, seconds, tokenizer, stops, cfg, on_text
        )
        results[out_idx] = res
        if on_result is not None:
            on_result(out_idx, res)

    def append_token(out_idx: int, tok: int) -> bool:
        """Append ``tok`` to a row and decide whether the row ends here: EOS, a stop string
        in the newly decoded tail, or the length limit. Streamed text holds back the last
        ``hold`` characters, which could still begin a stop string. True = finished."""
        row = rows[out_idx]
        row.tokens.append(tok)
        reason: FinishReason | None = None
        if tok in eos and not cfg.ignore_eos:
            reason = "eos"
        elif row.text is not None:
            old_len = len(row.text.text)
            row.text.update(row.tokens)
            if stops:
                hit = find_stop(row.text.text, stops, max(0, old_len - hold))
                if hit is not None:
                    row.stop = hit
                    reason = "stop"
            if reason is None and on_text is not None:
                safe = len(row.text.text) - hold if stops else len(row.text.text)
                if safe > row.emitted:
                    on_text(out_idx, row.text.text[row.emitted : safe])
                    row.emitted = safe
        if reason is None and len(row.tokens) >= cfg.max_new_tokens:
            reason = "length"
        if reason is not None:
            finish(out_idx, reason)
        return reason is not None

    batch = prefill(per_batch)
    lean = LeanDecoder.build(model) if cfg.lean_decode and is_dynamic_cache(batch.cache) else None
    alive = [True] * len(batch.active)  # per batch row; False = finished but still in the batch
    compact = cfg.compact
    while True:
        # 1. Choose the next token of every row (EOS masked out until min_new_tokens).
        logits = batch.logits
        if eos_tensor is not None and cfg.min_new_tokens > 0:
            young = [len(rows[o].tokens) < cfg.min_new_tokens for o in batch.active]
            if any(young):
                index = torch.tensor(young, device=device).nonzero().squeeze(1)
                logits[index[:, None], eos_tensor[None, :]] = float("-inf")
        if logits_processor is not None:
            logits_processor(batch.active, [len(rows[o].tokens) for o in batch.active], logits)
        next_tokens = choose_next_tokens(logits, cfg, generator)

        # 2. Append it to each live row; finished rows deliver their result.
        finished = [
            b
            for b, tok in enumerate(next_tokens.tolist())
            if alive[b] and append_token(batch.active[b], tok)
        ]
        for b in finished:
            alive[b] = False
        if not any(alive):
            if not queue:
                break
            batch = prefill(per_batch)  # an empty batch starts afresh from the queue
            alive = [True] * len(batch.active)
            continue

        # 3. Compact: drop finished rows from the tokens, mask, positions and every cache
        #    layer, so they stop costing compute (a cache that cannot be sliced keeps them).
        if finished and compact:
            keep = [b for b in range(len(batch.active)) if alive[b]]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            selected = select_cache_rows(batch.cache, index)
            if selected is None:
                compact = False  # this cache type cannot be sliced: keep rows, ignore them
            else:
                batch.cache = selected
                next_tokens = next_tokens.index_select(0, index)
                batch.mask = batch.mask.index_select(0, index)
                batch.pos = batch.pos.index_select(0, index)
                batch.active = [batch.active[b] for b in keep]
                alive = [True] * len(batch.active)
                # Columns that are padding in every remaining row cost attention for nothing.
                lead = int(batch.mask.any(dim=0).to(torch.int8).argmax())
                if lead > 0 and trim_cache_left(batch.cache, lead):
                    batch.mask = batch.mask[:, lead:]

        # 4. One forward pass for the new tokens (the lean step where the model allows it)
        #    gives the next step's logits and extends the cache by one column.
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], 1)
        if lean is not None:
            batch.logits = lean.step(next_tokens, batch.mask, batch.pos, batch.cache)
        else:
            batch.logits, batch.cache = forward_last_logits(
                model, params, next_tokens[:, None], batch.mask, batch.pos[:, None], batch.cache
            )
        batch.pos = batch.pos + 1

        # 5. Refill: prompts from the queue take the places of finished rows.
        free = (max_rows or 0) - len(batch.active)
        if (
            queue
            and compact
            and cfg.refill
            and free >= max(n, REFILL_MIN_FRACTION * per_batch)
            and can_append_rows(batch.cache)
        ):
            _refill(batch, prefill(free // n))
            alive = [True] * len(batch.active)

    return [r for r in results if r is not None]


# Continuous batching refills once at least this fraction of a full batch's rows is free:
# each refill is a prefill forward pass and a copy of the cache, so one per finished row buys
# fewer decode steps with more, smaller prefills (benchmarks/refill_threshold.py weighs the two).
REFILL_MIN_FRACTION = 0.25


@dataclass
class _Batch:
    """The rows decoding together: next-token logits, KV cache, attention mask, next
    positions and each row's output index."""

    logits: torch.Tensor
    cache: Any
    mask: torch.Tensor
    pos: torch.Tensor
    active: list[int]


def _refill(batch: _Batch, new: _Batch) -> None:
    """Append ``new``'s rows (a fresh prefill) to the running ``batch``: cache rows and masks
    right-aligned to the wider of the two, logits and positions concatenated."""
    if not append_cache_rows(batch.cache, new.cache):  # pragma: no cover - checked before
        raise RuntimeError("the prefill's cache cannot be appended to the running batch")
    width = max(batch.mask.shape[1], new.mask.shape[1])
    batch.mask = torch.cat([_pad_mask_left(batch.mask, width), _pad_mask_left(new.mask, width)])
    batch.logits = torch.cat([batch.logits, new.logits.to(batch.logits.dtype)])
    batch.pos = torch.cat([batch.pos, new.pos])
    batch.active = batch.active + new.active


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - mask.shape[1]
    return mask if extra <= 0 else torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], 1)
