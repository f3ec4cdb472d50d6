"""The dynamic backend: one batch through prefill and then one forward pass per token for all
rows, each row finishing on its own (EOS, stop string, length) and leaving the batch as it
finishes, queued prompts taking the freed places (continuous batching).

Why the engine owns this loop instead of calling ``model.generate``: it is what lets a row stop
on a stop string found in incrementally decoded text, lets finished rows stop costing compute,
and lets a prompt's samples share one prefill (GRPO). On a CPU, where the arithmetic dominates,
checking every row on the host after every token costs little; the static backend
(:mod:`.static_decode`) is the GPU's loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
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
from shoestring.engine.config import EngineOptions, GenerationResult
from shoestring.engine.cpu_attention import cpu_fp32_attention
from shoestring.engine.kept_decoder import KeptDecoder
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.lora_view import merged_lora
from shoestring.engine.model_io import (
    compute_dtype,
    forward_last_logits,
    forward_params,
    model_device,
)
from shoestring.engine.packed_linear import BF16_COPIES_MAX_ROWS
from shoestring.engine.prefill import pad_token_id, prefill_prompts
from shoestring.engine.rows import Rows
from shoestring.engine.sampling import choose_next_tokens, row_keys, stream_uniforms
from shoestring.errors import UserError

__all__ = ["REFILL_MIN_FRACTION", "LogitsProcessor", "decode_dynamic"]

# (output index per batch row, tokens generated so far per row, logits [rows, vocab]) -> None;
# edits the logits in place before the next token is chosen.
LogitsProcessor = Callable[[list[int], list[int], torch.Tensor], None]


def decode_dynamic(
    model: Any,
    options: EngineOptions,
    ids_list: list[list[int]],
    rows: Rows,
    keys: torch.Tensor | None,
    max_rows: int | None = None,
    logits_processor: LogitsProcessor | None = None,
    kept: KeptDecoder | None = None,
) -> list[GenerationResult]:
    """Decode every prompt of ``ids_list`` (token ids) into ``rows``; results in output order.

    ``keys`` [len(rows)] int64 are the rows' sampling stream keys (:func:`~.sampling.row_keys`;
    ``None``: prompt ``i`` of ``ids_list`` is stream ``i``): row ``o`` draws its ``t``-th token
    at ``stream_uniforms(seed, keys[o], t)``, wherever it sits in the batch.

    Sets up inference mode and precision (``options.dtype``, fp32 attention for a bf16 model
    on a CPU) around :func:`_decode`. With ``options.merge_lora``, peft LoRA layers run as
    plain linear layers with merged weights (:mod:`.lora_view`), as on the static backend: one
    product per layer instead of three, which the lean step fuses and prepacks like any plain
    layer (a CPU rollout of the LoRA recipe). With ``max_rows``, at most that many rows decode
    together and the other prompts join (in the given order) as rows finish. ``kept`` (the
    engine's, with ``options.keep_packed``) reuses the previous call's lean forward when the
    weights have not changed.
    """
    store_dtype = None
    merging = merged_lora(model) if options.merge_lora else contextlib.nullcontext(0)
    try:
        with (
            merging,  # first: its merged weights are made outside inference mode, kept for reuse
            torch.inference_mode(),
            compute_dtype(model, options.dtype),
            cpu_fp32_attention(model, options.cpu_fp32_attention) as store_dtype,
        ):
            return _decode(
                model, options, ids_list, rows, keys, store_dtype, max_rows, logits_processor, kept
            )
    except RuntimeError as exc:
        # A model that reaches the registry but also runs attention its own way may refuse
        # the fp32 cache (dtype mismatch) in its first forward pass, before any output exists:
        # remember that and run it with its own dtype.
        if store_dtype is None or "dtype" not in str(exc).lower():
            raise
        with contextlib.suppress(AttributeError, TypeError):
            model._shoestring_no_fp32_attention = True
        rows.restart()  # the failed attempt may have appended a token to every row
        return decode_dynamic(
            model, options, ids_list, rows, keys, max_rows, logits_processor, kept
        )


def _decode(
    model: Any,
    options: EngineOptions,
    ids_list: list[list[int]],
    rows: Rows,
    keys: torch.Tensor | None,
    store_dtype: torch.dtype | None,
    max_rows: int | None,
    logits_processor: LogitsProcessor | None,
    kept: KeptDecoder | None,
) -> list[GenerationResult]:
    """Prefill and decode until every row has finished.

    ``store_dtype`` is the KV cache's dtype (``None`` = the model's own). ``max_rows`` bounds
    the rows decoded together: the prompts beyond it wait in a queue (in the given order) and
    are prefilled into the running batch as rows finish (continuous batching, :func:`_refill`),
    or, where the cache cannot take rows, once the batch is empty.
    """
    sampling = rows.sampling
    device = model_device(model)
    params = forward_params(model)
    n = sampling.num_return_sequences
    pad = pad_token_id(rows.tokenizer, model, rows.eos)
    eos_list = sorted(rows.eos)
    eos_tensor = torch.tensor(eos_list, device=device, dtype=torch.long) if eos_list else None
    lengths = [len(x) for x in ids_list]
    per_batch = max(1, (max_rows or len(rows)) // n)  # prompts decoded together at most
    queue = list(range(len(ids_list)))  # prompts not yet prefilled, in order
    if keys is None:
        keys = row_keys(range(len(ids_list)), n)
    keys = keys.to(device)  # output index -> the row's stream key

    # The lean forward (fused, on a CPU prepacked weights: built once per call) for the decode
    # steps and, with lean_prefill, the prompts' prefills and refills too
    lean = None
    if options.lean_decode:
        kernel = options.fp32_kernel
        # bf16 copies of bf16-valued fp32 weights where the steps are bound by reading them:
        # few rows at once - batches that small, or (for a decoder built for this call alone)
        # so few prompts; a kept decoder goes by its batch size, not rebuilt for each call's
        halves_rows = per_batch if kept is not None else min(per_batch, len(ids_list))
        halves = halves_rows * n <= BF16_COPIES_MAX_ROWS
        lean = (
            kept.get(model, kernel, halves)
            if kept is not None
            else LeanDecoder.build(model, kernel=kernel, bf16_copies=halves)
        )
    prefill_lean = lean if options.lean_prefill else None

    def prefill(count: int) -> _Batch:
        """Prefill the next ``count`` queued prompts (their samples share it)."""
        take, queue[:] = queue[:count], queue[count:]
        active = [i * n + k for i in take for k in range(n)]  # output index of sample k of i
        rows.start(active)
        logits, cache, mask = prefill_prompts(
            model,
            params,
            [ids_list[i] for i in take],
            options,
            sampling.max_new_tokens,
            pad,
            device,
            store_dtype,
            prefill_lean,
        )
        # next position per row = its unpadded prompt length (left padding is not counted)
        pos = torch.tensor([lengths[i] for i in take], dtype=torch.long, device=device)
        row_key = keys[torch.tensor(active, dtype=torch.long, device=device)]
        made = torch.zeros(len(active), dtype=torch.long, device=device)  # tokens per row so far
        if n > 1:  # samples of one prompt share its prefill: repeat the cache rows
            repeated = repeat_cache_rows(cache, n)
            if repeated is None:
                raise UserError(
                    f"num_return_sequences>1 needs a cache that can be repeated "
                    f"({type(cache)}); repeat the prompts instead"
                )
            cache = repeated
            # interleave (p0 p0 p1 p1 ...) to match the output order i * n + k
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            pos = pos.repeat_interleave(n, dim=0)
        return _Batch(logits, cache, mask, pos, active, row_key, made)

    batch = prefill(per_batch)
    if not is_dynamic_cache(batch.cache):
        lean = None  # a cache the lean step cannot update: the model's own forward throughout
    alive = [True] * len(batch.active)  # per batch row; False = finished but still in the batch
    compact = options.compact
    min_new = sampling.min_new_tokens if eos_tensor is not None else 0
    while True:
        # 1. Choose the next token of every row (EOS masked out until min_new_tokens).
        logits = batch.logits
        if min_new > 0:
            young = [len(rows.rows[o].tokens) < min_new for o in batch.active]
            if any(young):
                index = torch.tensor(young, device=device).nonzero().squeeze(1)
                # [young rows, 1] x [1, n_eos] broadcast: every EOS id of every young row
                logits[index[:, None], eos_tensor[None, :]] = float("-inf")
        if logits_processor is not None:
            generated = [len(rows.rows[o].tokens) for o in batch.active]
            logits_processor(batch.active, generated, logits)
        # each row's own random number: its stream key and how many tokens it has so far
        u = None if sampling.greedy else stream_uniforms(sampling.seed, batch.keys, batch.made)
        next_tokens = choose_next_tokens(logits, sampling, u)  # [rows], on device

        # 2. Append it to each live row (one host sync for the whole batch); a row that ends
        #    delivers its result.
        finished = [
            b
            for b, tok in enumerate(next_tokens.tolist())
            if alive[b] and rows.append(batch.active[b], tok)
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
                batch.keys = batch.keys.index_select(0, index)
                batch.made = batch.made.index_select(0, index)
                batch.active = [batch.active[b] for b in keep]
                alive = [True] * len(batch.active)
                # Columns that are padding in every remaining row cost attention for nothing.
                # argmax of the column-wise "any real token" finds the first such column.
                lead = int(batch.mask.any(dim=0).to(torch.int8).argmax())
                if lead > 0 and trim_cache_left(batch.cache, lead):
                    batch.mask = batch.mask[:, lead:]

        # 4. One forward pass for the new tokens (the lean step where the model allows it)
        #    gives the next step's logits and extends the cache by one column.
        # the new token is real in every row: the mask grows by one column of ones
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], 1)
        if lean is not None:
            batch.logits = lean.step(next_tokens, batch.mask, batch.pos, batch.cache)
        else:
            batch.logits, batch.cache = forward_last_logits(
                model, params, next_tokens[:, None], batch.mask, batch.pos[:, None], batch.cache
            )
        batch.pos = batch.pos + 1
        batch.made = batch.made + 1

        # 5. Refill: prompts from the queue take the places of finished rows, once enough
        #    places are free for the prefill to pay (REFILL_MIN_FRACTION).
        free = (max_rows or 0) - len(batch.active)  # 0 without max_rows: never refills
        if (
            queue
            and compact
            and options.refill
            and free >= max(n, REFILL_MIN_FRACTION * per_batch)
            and can_append_rows(batch.cache)
        ):
            _refill(batch, prefill(free // n))  # whole prompts only: n rows each
            alive = [True] * len(batch.active)

    return rows.results()


# Continuous batching refills once at least this fraction of a full batch's rows is free:
# each refill is a prefill forward pass and a copy of the cache, so one per finished row buys
# fewer decode steps with more, smaller prefills (benchmarks/refill_threshold.py weighs the two).
REFILL_MIN_FRACTION = 0.25


@dataclass
class _Batch:
    """The rows decoding together: next-token logits, KV cache, attention mask, next
    positions, each row's output index, and (for sampling) each row's stream key and the
    tokens it has generated - per-row state that moves with the row when the batch is
    compacted or refilled."""

    logits: torch.Tensor
    cache: Any
    mask: torch.Tensor
    pos: torch.Tensor
    active: list[int]
    keys: torch.Tensor
    made: torch.Tensor


def _refill(batch: _Batch, new: _Batch) -> None:
    """Append ``new``'s rows (a fresh prefill) to the running ``batch``: cache rows and masks
    right-aligned to the wider of the two, logits and positions concatenated."""
    if not append_cache_rows(batch.cache, new.cache):  # pragma: no cover - checked before
        raise RuntimeError("the prefill's cache cannot be appended to the running batch")
    # left padding keeps every row's newest token in the last column, so aligning the right
    # edges aligns the tokens; the narrower side gets zero (padding) columns on the left
    width = max(batch.mask.shape[1], new.mask.shape[1])
    batch.mask = torch.cat([_pad_mask_left(batch.mask, width), _pad_mask_left(new.mask, width)])
    batch.logits = torch.cat([batch.logits, new.logits.to(batch.logits.dtype)])
    batch.pos = torch.cat([batch.pos, new.pos])
    batch.keys = torch.cat([batch.keys, new.keys])
    batch.made = torch.cat([batch.made, new.made])
    batch.active = batch.active + new.active


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - mask.shape[1]
    return mask if extra <= 0 else torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], 1)
