"""The static backend: one batch decoded over a fixed-shape KV cache with a replayed step (a
CUDA graph on a GPU), stop checks deferred to every few steps.

Why a second decode loop: the dynamic backend (:mod:`.decode`) compacts the batch and grows or
trims its cache as rows finish, and checks every row on the host after every token - right on
a CPU, where the arithmetic dominates, and ruinous on a GPU, where a small model's step is
kernel launches and host syncs. Here the shapes never change within a bucket, the step is
captured once and replayed, the next token is chosen on the device, and the host reads the
new tokens only every ``stop_check_interval`` steps (one sync), then finishes rows with the
same :class:`~.rows.Rows` book as the dynamic loop - discarding what a row generated after its
end. Finished rows keep their slot until the open rows fit a bucket a quarter the size, where
they then move (:data:`DOWNSHIFT_RATIO`).

:func:`static_unsupported` says whether a model and options can take this path: Llama, Qwen2,
Mistral and the shoestring GPT's plain variants, peft LoRA included (merged for the call, see
:mod:`.lora_view`). In fp32 both backends give the same greedy tokens (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from shoestring.engine.cache import cache_layers
from shoestring.engine.config import EngineOptions, GenerationResult
from shoestring.engine.lean_decode import LeanDecoder
from shoestring.engine.lora_view import merged_lora
from shoestring.engine.model_io import compute_dtype, forward_params, model_device
from shoestring.engine.prefill import pad_token_id, prefill_prompts
from shoestring.engine.rows import Rows
from shoestring.engine.sampling import row_keys
from shoestring.engine.static_cache import row_bucket, width_bucket
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

__all__ = ["DOWNSHIFT_RATIO", "decode_static", "static_unsupported"]

# Open rows move to a smaller bucket once it is at most 1/DOWNSHIFT_RATIO of the current one
# (64 rows -> 16 -> 4 -> 1): few recaptures, and a tail of long rows stops paying for the rest.
DOWNSHIFT_RATIO = 4


def static_unsupported(model: Any, options: EngineOptions) -> str | None:
    """``None`` when ``options`` and ``model`` take the static path, else why not."""
    if options.static_cache == "off":
        return "static_cache=off"
    if options.static_cache == "auto" and model_device(model).type != "cuda":
        return "not a CUDA device (static_cache=auto)"
    rope = getattr(getattr(getattr(model, "model", None), "rotary_emb", None), "rope_type", "")
    if any(kind in str(rope) for kind in ("dynamic", "longrope")):
        return f"RoPE type {rope} reads the positions on the host every step"
    # (LoRA layers are fine: run as modules)
    if LeanDecoder.build(model, fuse=False, pack=False) is None:
        return f"the lean decode step does not support {type(model).__name__} as configured"
    return None


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


def decode_static(
    model: Any,
    options: EngineOptions,
    ids_list: list[list[int]],
    rows: Rows,
    keys: torch.Tensor | None,
    capture: Capture | None = None,
) -> list[GenerationResult]:
    """Decode every prompt of ``ids_list`` (token ids) into ``rows`` on the static path;
    results in output order, the same as :func:`~.decode.decode_dynamic` gives (sampled
    ones too: ``keys`` are the rows' stream keys as there, ``None`` = prompt ``i`` is
    stream ``i``).

    ``capture`` turns the step into its replay (default: a CUDA graph on CUDA with
    ``cuda_graphs``, else the step itself); tests inject one to count captures.
    """
    device = model_device(model)
    if capture is None:
        graphs = device.type == "cuda" and options.cuda_graphs
        capture = cuda_graph_capture if graphs else eager_capture
    merging = merged_lora(model) if options.merge_lora else contextlib.nullcontext(0)
    with torch.no_grad(), merging:
        decoder = LeanDecoder.build(model, fuse=False)
        if decoder is None:
            raise UserError(
                f"the static decode path does not support {type(model).__name__} as configured;"
                " set static_cache=off"
            )
        try:
            with torch.inference_mode(), _precision(model, options.dtype):
                return _decode(model, options, ids_list, rows, decoder, keys, capture)
        except Exception as exc:
            if is_oom_error(exc):  # free the buffers and graphs before the engine retries
                engine_state(model).runners.clear()
            raise


def _decode(
    model: Any,
    options: EngineOptions,
    ids_list: list[list[int]],
    rows: Rows,
    decoder: Any,
    keys: torch.Tensor | None,
    capture: Capture,
) -> list[GenerationResult]:
    """Prefill, load the static buffers, then replay the step in chunks of
    ``stop_check_interval`` steps, handing each chunk's tokens to ``rows``."""
    cfg = rows.sampling
    device = model_device(model)
    n = cfg.num_return_sequences
    lengths = [len(x) for x in ids_list]
    rows.start(range(len(rows)))

    # Prefill with the dynamic backend's (grouped) prefill; reserve one decode column there,
    # the static buffers hold the decode.
    pad = pad_token_id(rows.tokenizer, model, rows.eos)
    params = forward_params(model)
    logits, cache, mask = prefill_prompts(model, params, ids_list, options, 1, pad, device, None)
    # (keys, values) per layer, each [prompts, kv heads, prompt width + 1, head dim]
    layers = [(layer.keys, layer.values) for layer in cache_layers(cache) or []]
    if not layers:
        raise UserError(f"{type(model).__name__} built a cache without layers; static_cache=off")
    shapes = [(k.shape[1], k.shape[-1], v.shape[-1]) for k, v in layers]  # (heads, dk, dv)
    slot_rows = list(range(len(rows)))  # output row of each occupied batch slot
    key = RunnerKey(
        # rounded up to a few sizes, so the captured steps are reused across calls
        rows=row_bucket(len(slot_rows)),
        width=width_bucket(mask.shape[1] + cfg.max_new_tokens),  # the whole sequence fits
        dtype=layers[0][0].dtype,
        greedy=cfg.greedy,
        temperature=float(cfg.temperature),
        top_k=int(cfg.top_k),
        top_p=float(cfg.top_p),
        min_new_tokens=int(cfg.min_new_tokens),
        eos=tuple(sorted(rows.eos)),
    )
    state = engine_state(model)
    state.check_weights(model)
    vocab = logits.shape[-1]

    def runner_for(k: RunnerKey) -> StaticRunner:
        r = state.runner(k, lambda: StaticRunner(k, decoder, shapes, vocab, device, cfg))
        r.decoder, r.sampling = decoder, cfg  # read by an eager (uncaptured) step
        return r

    runner = runner_for(key)
    if keys is None:
        keys = row_keys(range(len(ids_list)), n)
    # prompts (repeated n times) into the buffers, and each row's random numbers
    runner.load(layers, mask, lengths, n, keys.to(device), cfg.seed)
    del cache, layers  # the dynamic cache is copied: free it before decoding
    runner.first(logits.repeat_interleave(n, dim=0) if n > 1 else logits)  # token 1 of each row
    state.prepare(runner, capture)

    def fetch(lo: int, hi: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start copying output columns ``lo..hi`` to the host; the event marks its end."""
        part = runner.out[: len(slot_rows), lo:hi]  # [occupied slots, steps]: token ids
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
        # steps to queue now: a chunk, but never past the length limit
        ahead = min(options.stop_check_interval, cfg.max_new_tokens - produced)
        for _ in range(ahead):
            runner.replay()  # queued on the device; the host does not wait for it
        host, event = pending  # the previous chunk's tokens, copied behind those steps
        if event is not None:
            event.synchronize()  # the only wait for the device in this chunk
        rows.feed(slot_rows, host.tolist())  # every row's end found on the host at once
        checked += host.shape[1]
        if not rows.any_open:
            break
        if ahead == 0:  # pragma: no cover - the length limit ends every row first
            raise RuntimeError("static decode ran out of steps with rows still open")
        produced += ahead
        # Few rows left: move them to a bucket a quarter the size or smaller (its step is
        # captured once per shape), so finished rows stop costing compute.
        keep = [s for s, i in enumerate(slot_rows) if rows.open[i]]  # slots still decoding
        if row_bucket(len(keep)) * DOWNSHIFT_RATIO <= runner.key.rows:
            smaller = runner_for(dataclasses.replace(runner.key, rows=row_bucket(len(keep))))
            smaller.adopt(runner, keep)
            state.prepare(smaller, capture)
            runner, slot_rows = smaller, [slot_rows[s] for s in keep]
        pending = fetch(checked, produced)  # start copying the chunk just queued
    state.trim()
    return rows.results()
