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

from shoestring.errors import UserError
from shoestring.eval.generation.cache import (
    is_dynamic_cache,
    repeat_cache_rows,
    select_cache_rows,
    trim_cache_left,
)
from shoestring.eval.generation.config import (
    FinishReason,
    GenerationResult,
    Prompt,
    SamplingConfig,
)
from shoestring.eval.generation.cpu_attention import cpu_fp32_attention
from shoestring.eval.generation.model_io import (
    compute_dtype,
    forward_last_logits,
    forward_params,
    model_device,
)
from shoestring.eval.generation.prefill import encode_prompts, pad_token_id, prefill_prompts
from shoestring.eval.generation.stops import IncrementalText, find_stop, resolve_eos_ids
from shoestring.eval.lean_decode import LeanDecoder
from shoestring.eval.sampling import choose_next_tokens

__all__ = ["decode_batch", "generate_batch"]


@dataclass
class _Row:
    """Book-keeping of one output sequence while its batch runs."""

    prompt_index: int
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: IncrementalText | None = None
    emitted: int = 0  # characters already streamed to on_text
    stop: tuple[int, str] | None = None


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    cfg: SamplingConfig | None = None,
    *,
    on_text: Callable[[int, str], None] | None = None,
    on_result: Callable[[int, GenerationResult], None] | None = None,
    generator: torch.Generator | None = None,
) -> list[GenerationResult]:
    """Generate for all ``prompts`` in one batch (one forward pass per step for all rows).

    ``prompts`` are strings or token-id lists. Returns ``len(prompts) * num_return_sequences``
    results, sample ``k`` of prompt ``i`` at ``i * n + k``. ``on_text(i, delta)`` streams new
    text of output ``i`` (text that could still turn into a stop string is held back until it is
    certain); ``on_result(i, result)`` fires the moment output ``i`` finishes. ``generator``
    overrides the per-call generator seeded from ``cfg.seed``.
    """
    cfg = (cfg or SamplingConfig()).check()
    if not prompts:
        return []
    device = model_device(model)
    ids_list = encode_prompts(tokenizer, prompts, cfg.add_special_tokens)
    eos = (
        set()
        if cfg.ignore_eos and cfg.min_new_tokens == 0
        else resolve_eos_ids(model, tokenizer, cfg)
    )
    if generator is None and not cfg.greedy:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
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
) -> list[GenerationResult]:
    """Prefill ``ids_list`` and decode until every row has finished; results in output order.

    Runs inside :func:`generate_batch`'s inference-mode and precision contexts; ``eos`` is the
    set of ids that end a row (empty when EOS is ignored) and ``store_dtype`` the KV cache's
    dtype (``None`` = the model's own).
    """
    t0 = time.perf_counter()
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
    logits, cache, mask = prefill_prompts(model, params, ids_list, cfg, pad, device, store_dtype)
    lean = LeanDecoder.build(model) if cfg.lean_decode and is_dynamic_cache(cache) else None
    next_pos = torch.tensor(lengths, dtype=torch.long, device=device)

    # Samples of one prompt share its prefill: repeat the cache rows instead of re-reading.
    if n > 1:
        repeated = repeat_cache_rows(cache, n)
        if repeated is None:
            raise UserError(
                f"num_return_sequences>1 needs a cache that can be repeated ({type(cache)}); "
                "repeat the prompts instead"
            )
        cache = repeated
        logits = logits.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        next_pos = next_pos.repeat_interleave(n, dim=0)

    rows = [
        _Row(prompt_index=i // n, prompt_tokens=lengths[i // n]) for i in range(len(ids_list) * n)
    ]
    if track_text:
        for r in rows:
            r.text = IncrementalText(tokenizer, cfg.skip_special_tokens)
    results: list[GenerationResult | None] = [None] * len(rows)
    active = list(range(len(rows)))  # output index of each batch row, in batch order
    alive = [True] * len(rows)  # per batch row; False = finished but still in the batch
    compact = cfg.compact

    def finish(out_idx: int, reason: FinishReason) -> None:
        """Decode the row's full text once, cut it at its stop string, flush what streaming
        held back, and deliver the result."""
        row = rows[out_idx]
        text = (
            tokenizer.decode(row.tokens, skip_special_tokens=cfg.skip_special_tokens)
            if tokenizer is not None
            else ""
        )
        stop_str = None
        if reason == "stop" and row.stop is not None:
            found = find_stop(text, stops) or row.stop
            stop_str = found[1]
            if not cfg.keep_stop_string:
                text = text[: found[0]]
            else:
                text = text[: found[0] + len(found[1])]
        if on_text is not None and len(text) > row.emitted:
            on_text(out_idx, text[row.emitted :])
            row.emitted = len(text)
        res = GenerationResult(
            text=text,
            token_ids=row.tokens,
            n_tokens=len(row.tokens),
            finish_reason=reason,
            seconds=time.perf_counter() - t0,
            prompt_tokens=row.prompt_tokens,
            stop_string=stop_str,
            index=out_idx,
        )
        results[out_idx] = res
        if on_result is not None:
            on_result(out_idx, res)

    step = 0
    while True:
        # 1. Choose the next token of every row (EOS masked out until min_new_tokens).
        if eos_tensor is not None and step < cfg.min_new_tokens:
            logits[:, eos_tensor] = float("-inf")
        next_tokens = choose_next_tokens(logits, cfg, generator)
        step += 1

        # 2. Append it to each live row and decide whether the row ends here: EOS, a stop
        #    string in the newly decoded tail, or the length limit. Streamed text holds back
        #    the last ``hold`` characters, which could still begin a stop string.
        finished: list[int] = []
        for b, tok in enumerate(next_tokens.tolist()):
            if not alive[b]:
                continue
            out_idx = active[b]
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
            if reason is None and step >= cfg.max_new_tokens:
                reason = "length"
            if reason is not None:
                finish(out_idx, reason)
                alive[b] = False
                finished.append(b)
        if not any(alive):
            break

        # 3. Compact: drop finished rows from the tokens, mask, positions and every cache
        #    layer, so they stop costing compute (a cache that cannot be sliced keeps them).
        if finished and compact:
            keep = [b for b in range(len(active)) if alive[b]]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            selected = select_cache_rows(cache, index)
            if selected is None:
                compact = False  # this cache type cannot be sliced: keep rows, ignore them
            else:
                cache = selected
                next_tokens = next_tokens.index_select(0, index)
                mask = mask.index_select(0, index)
                next_pos = next_pos.index_select(0, index)
                active = [active[b] for b in keep]
                alive = [True] * len(active)
                # Columns that are padding in every remaining row cost attention for nothing.
                lead = int(mask.any(dim=0).to(torch.int8).argmax())
                if lead > 0 and trim_cache_left(cache, lead):
                    mask = mask[:, lead:]

        # 4. One forward pass for the new tokens (the lean step where the model allows it)
        #    gives the next step's logits and extends the cache by one column.
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        if lean is not None:
            logits = lean.step(next_tokens, mask, next_pos, cache)
        else:
            logits, cache = forward_last_logits(
                model, params, next_tokens[:, None], mask, next_pos[:, None], cache
            )
        next_pos = next_pos + 1

    return [r for r in results if r is not None]
