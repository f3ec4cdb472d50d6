"""The static decode path: one batch decoded over a fixed-shape KV cache with a replayed step
(a CUDA graph on a GPU), stop checks deferred to every few steps; and the dispatch that picks
it or the dynamic engine.

Why a second decode loop: the dynamic engine (:mod:`.decode`) compacts the batch and grows or
trims its cache as rows finish, and checks every row on the host after every token - right on
a CPU, where the arithmetic dominates, and ruinous on a GPU, where a small model's step is
kernel launches and host syncs. Here the shapes never change within a bucket, the step is
captured once and replayed, the next token is chosen on the device, and the host reads the
new tokens only every ``stop_check_interval`` steps (one sync), then finishes rows exactly as
the dynamic engine would - EOS, a stop string found in incrementally decoded text, the length
limit - discarding what a row generated after its end. Finished rows keep their slot until the
open rows fit a bucket a quarter the size, where they then move (:data:`DOWNSHIFT_RATIO`).

:func:`generate_batch_auto` is what the driver and ``generate`` call: the static path on CUDA
(or wherever ``static_cache="on"`` asks for it) for a model the lean step supports - Llama,
Qwen2, Mistral and the shoestring GPT's plain variants, peft LoRA included (merged for the
call, see :mod:`.lora_view`) - and :func:`~.decode.generate_batch` otherwise. In fp32 both give
the same greedy tokens (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from shoestring.engine.cache import cache_layers
from shoestring.engine.config import GenerationResult, Prompt, SamplingConfig
from shoestring.engine.decode import LogitsProcessor, generate_batch
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.lora_view import merged_lora
from shoestring.engine.model_io import compute_dtype, forward_params, model_device
from shoestring.engine.prefill import (
    pad_token_id,
    prefill_prompts,
    start_request,
)
from shoestring.engine.static_cache import row_bucket, width_bucket
from shoestring.engine.static_rows import RowBook
from shoestring.engine.static_runner import (
    Capture,
    RunnerKey,
    StaticRunner,
    cuda_graph_capture,
    eager_capture,
    engine_state,
)
from shoestring.errors import UserError
from shoestring.util.memory import is_oom_error

__all__ = ["DOWNSHIFT_RATIO", "generate_batch_auto", "static_generate_batch", "static_unsupported"]

# Open rows move to a smaller bucket once it is at most 1/DOWNSHIFT_RATIO of the current one
# (64 rows -> 16 -> 4 -> 1): few recaptures, and a tail of long rows stops paying for the rest.
DOWNSHIFT_RATIO = 4


def static_unsupported(model: Any, cfg: SamplingConfig) -> str | None:
    """``None`` when ``cfg`` and ``model`` take the static path, else why not."""
    if cfg.static_cache == "off":
        return "static_cache=off"
    if cfg.static_cache == "auto" and model_device(model).type != "cuda":
        return "not a CUDA device (static_cache=auto)"
    rope = getattr(getattr(getattr(model, "model", None), "rotary_emb", None), "rope_type", "")
    if any(kind in str(rope) for kind in ("dynamic", "longrope")):
        return f"RoPE type {rope} reads the positions on the host every step"
    # (LoRA layers are fine: run as modules)
    if LeanDecoder.build(model, fuse=False, pack=False) is None:
        return f"the lean decode step does not support {type(model).__name__} as configured"
    return None


def generate_batch_auto(
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
    """:func:`static_generate_batch` where it applies, else the dynamic engine's
    :func:`~.decode.generate_batch` (same arguments, same results).

    ``max_rows`` (continuous batching on the dynamic path) becomes fixed batches of at most
    that many rows on the static path, whose own buckets shrink as rows finish; a
    ``logits_processor`` edits logits on the host every step, so it takes the dynamic path.
    """
    cfg = (cfg or SamplingConfig()).check()
    reason = static_unsupported(model, cfg)
    if reason is None and logits_processor is not None:
        reason = "a logits processor edits the logits on the host every step"
    if reason is None:
        n = cfg.num_return_sequences
        per_call = len(prompts) if max_rows is None else max(1, max_rows // n)
        results: list[GenerationResult] = []
        for first in range(0, len(prompts), per_call):
            offset = first * n  # output indices continue across the fixed batches
            results += static_generate_batch(
                model,
                tokenizer,
                prompts[first : first + per_call],
                cfg,
                on_text=None if on_text is None else _shifted(on_text, offset),
                on_result=None if on_result is None else _shifted(on_result, offset),
                generator=generator,
            )
        return results
    if cfg.static_cache == "on":
        raise UserError(f"static_cache=on cannot be used: {reason}; set static_cache=auto or off")
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


def _shifted(callback: Callable[[int, Any], None], offset: int) -> Callable[[int, Any], None]:
    """``callback`` with the batch's output index moved to the call's numbering."""
    return lambda i, value: callback(i + offset, value)


@contextlib.contextmanager
def _precision(model: Any, dtype: str) -> Iterator[None]:
    """The engine's compute dtype; autocast (where it applies) without its weight cache, which
    a CUDA graph capture must not use."""
    with compute_dtype(model, dtype):
        dev = model_device(model).type
        if torch.is_autocast_enabled(dev):
            with torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), cache_enabled=False):
                yield
        else:
            yield


def static_generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    cfg: SamplingConfig | None = None,
    *,
    on_text: Callable[[int, str], None] | None = None,
    on_result: Callable[[int, GenerationResult], None] | None = None,
    generator: torch.Generator | None = None,
    capture: Capture | None = None,
    merge_lora: bool = True,
) -> list[GenerationResult]:
    """:func:`~.decode.generate_batch`'s contract on the static path.

    ``capture`` turns the step into its replay (default: a CUDA graph on CUDA with
    ``cuda_graphs``, else the step itself); tests inject one to count captures.
    ``merge_lora=False`` keeps peft's LoRA layers in the step (the benchmark's comparison).
    """
    cfg = (cfg or SamplingConfig()).check()
    if not prompts:
        return []
    device, ids_list, eos, generator = start_request(model, tokenizer, prompts, cfg, generator)
    if capture is None:
        graphs = device.type == "cuda" and cfg.cuda_graphs
        capture = cuda_graph_capture if graphs else eager_capture
    merging = merged_lora(model) if merge_lora else contextlib.nullcontext(0)
    with torch.no_grad(), merging:
        decoder = LeanDecoder.build(model, fuse=False)
        if decoder is None:
            raise UserError(
                f"the static decode path does not support {type(model).__name__} as configured;"
                " set static_cache=off"
            )
        try:
            with torch.inference_mode(), _precision(model, cfg.dtype):
                return _decode(
                    model,
                    tokenizer,
                    ids_list,
                    cfg,
                    eos,
                    decoder,
                    generator,
                    capture,
                    on_text,
                    on_result,
                )
        except Exception as exc:
            if is_oom_error(exc):  # free the buffers and graphs before the driver retries
                engine_state(model).runners.clear()
            raise


def _decode(
    model: Any,
    tokenizer: Any,
    ids_list: list[list[int]],
    cfg: SamplingConfig,
    eos: set[int],
    decoder: Any,
    generator: torch.Generator | None,
    capture: Capture,
    on_text: Callable[[int, str], None] | None,
    on_result: Callable[[int, GenerationResult], None] | None,
) -> list[GenerationResult]:
    device = model_device(model)
    n = cfg.num_return_sequences
    lengths = [len(x) for x in ids_list]
    prompt_tokens = [lengths[i // n] for i in range(len(ids_list) * n)]
    book = RowBook(tokenizer, cfg, eos, prompt_tokens, on_text, on_result)

    # Prefill with the dynamic engine's (grouped) prefill; reserve no decode room there, the
    # static buffers hold the decode.
    prefill_cfg = dataclasses.replace(cfg, max_new_tokens=1)
    pad = pad_token_id(tokenizer, model, eos)
    params = forward_params(model)
    logits, cache, mask = prefill_prompts(model, params, ids_list, prefill_cfg, pad, device, None)
    layers = [(layer.keys, layer.values) for layer in cache_layers(cache) or []]
    if not layers:
        raise UserError(f"{type(model).__name__} built a cache without layers; static_cache=off")
    shapes = [(k.shape[1], k.shape[-1], v.shape[-1]) for k, v in layers]
    slot_rows = list(range(len(book.rows)))  # output row of each occupied batch slot
    key = RunnerKey(
        rows=row_bucket(len(slot_rows)),
        width=width_bucket(mask.shape[1] + cfg.max_new_tokens),
        dtype=layers[0][0].dtype,
        greedy=cfg.greedy,
        temperature=float(cfg.temperature),
        top_k=int(cfg.top_k),
        top_p=float(cfg.top_p),
        min_new_tokens=int(cfg.min_new_tokens),
        eos=tuple(sorted(eos)),
    )
    state = engine_state(model)
    state.check_weights(model)
    vocab = logits.shape[-1]

    def runner_for(k: RunnerKey) -> StaticRunner:
        r = state.runner(k, lambda: StaticRunner(k, decoder, shapes, vocab, device, cfg))
        r.decoder, r.sampling = decoder, cfg  # read by an eager (uncaptured) step
        return r

    runner = runner_for(key)
    runner.load(layers, mask, lengths, n, generator)
    del cache, layers
    runner.first(logits.repeat_interleave(n, dim=0) if n > 1 else logits)
    state.prepare(runner, capture)

    def fetch(lo: int, hi: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start copying output columns ``lo..hi`` to the host; the event marks its end."""
        part = runner.out[: len(slot_rows), lo:hi]
        if device.type != "cuda":
            return part.clone(), None
        host = part.to("cpu", non_blocking=True)  # pinned: the copy runs behind the stream
        event = torch.cuda.Event()
        event.record()
        return host, event

    # Pipelined: the next steps are queued on the device before the host reads the tokens of
    # the last ones, so the host's stop checks overlap the device's work. A batch whose rows
    # all end in a chunk wastes at most the ``stop_check_interval`` steps queued after it.
    produced, checked = 1, 0  # tokens chosen so far / tokens the host has looked at
    pending = fetch(0, 1)
    while True:
        ahead = min(cfg.stop_check_interval, cfg.max_new_tokens - produced)
        for _ in range(ahead):
            runner.replay()
        host, event = pending
        if event is not None:
            event.synchronize()
        book.feed(slot_rows, host.tolist())  # one wait per check, for every row at once
        checked += host.shape[1]
        if not book.any_open:
            break
        if ahead == 0:  # pragma: no cover - the length limit ends every row first
            raise RuntimeError("static decode ran out of steps with rows still open")
        produced += ahead
        # Few rows left: move them to a bucket a quarter the size or smaller (its step is
        # captured once per shape), so finished rows stop costing compute.
        keep = [s for s, i in enumerate(slot_rows) if book.open[i]]
        if row_bucket(len(keep)) * DOWNSHIFT_RATIO <= runner.key.rows:
            smaller = runner_for(dataclasses.replace(runner.key, rows=row_bucket(len(keep))))
            smaller.adopt(runner, keep)
            state.prepare(smaller, capture)
            runner, slot_rows = smaller, [slot_rows[s] for s in keep]
        pending = fetch(checked, produced)
    state.trim()
    return book.finished()
