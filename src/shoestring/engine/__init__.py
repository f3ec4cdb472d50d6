"""Batched KV-cache text generation for any Hugging Face causal LM.

Why not ``model.generate``? The original study generated GSM8K answers one problem at a time in
fp32, which on a CPU leaves almost all of the machine idle: one sequence per forward pass is a
matrix-vector product bound by memory bandwidth. This engine decodes many prompts together
(left padding, an attention mask and position ids derived from it, one shared KV cache), and it
owns the decode loop so it can:

* stop every row on its own - EOS or a stop string, found by decoding only the new tail of each
  row instead of re-tokenising whole sequences;
* stop paying for finished rows - the batch is compacted (rows dropped from the ids, mask, and
  every cache layer; leading all-padding columns trimmed) as soon as a row finishes;
* keep the batch full while answers end at different lengths - queued prompts are prefilled
  into the running batch as rows finish (continuous batching, ``SamplingConfig.refill``), each
  prompt getting the greedy tokens it gets alone;
* share a prompt's prefill between its samples (``num_return_sequences``), which GRPO needs;
* pick the batch size from the model's shape and the memory that is actually free.

Greedy decoding in fp32 reproduces ``model.generate(do_sample=False)`` token for token (the
tests check it for Llama and GPT-2), so speed never costs correctness. Sampling uses one
``torch.Generator`` seeded per call, so a seed gives the same samples for the same prompts,
config and batch size.

The public entry points are :func:`generate_batch` (one batch, one forward per step) and
:func:`generate_all` (any number of prompts: length-sorted batches, progress bar, per-item
callback for resumable benchmarks, results in input order).

The package, one job per module, in the order a batch meets them:

* :mod:`.config` - :class:`SamplingConfig` (the request) and :class:`GenerationResult`;
* :mod:`.driver` - :func:`generate_all`: sorting, batching, out-of-memory halving, callbacks;
* :mod:`.sizing` - the auto batch size from the model's shape and the free memory;
* :mod:`.decode` - :func:`generate_batch` and the decode loop of one batch;
* :mod:`.prefill` - tokenising, padding and (grouped) prefill of the prompts;
* :mod:`.cache` - the preallocated KV cache and row compaction / padding trimming;
* :mod:`.stops` - EOS ids, stop strings and incrementally decoded text;
* :mod:`.cpu_attention` - fp32 attention for a bf16 model on a CPU;
* :mod:`.model_io` - the model's device, dtype, forward signature and one forward pass;
* :mod:`.static_decode` - the CUDA path: :func:`generate_batch_auto` picks it or the dynamic
  loop; a fixed-shape cache (:mod:`.static_cache`), a captured, replayed step
  (:mod:`.static_runner`), stop checks every few steps (:mod:`.static_rows`), LoRA merged for
  the call (:mod:`.lora_view`).

The next token is chosen by :mod:`shoestring.engine.sampling`; the optional fast decode step is
:mod:`shoestring.engine.lean_decode`.
"""

from shoestring.engine.cache import (
    make_cache,
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
from shoestring.engine.decode import generate_batch
from shoestring.engine.driver import generate_all
from shoestring.engine.model_io import forward_params, model_device, model_dtype
from shoestring.engine.prefill import encode_prompts, pad_token_id
from shoestring.engine.sizing import auto_batch_size, estimate_row_bytes
from shoestring.engine.static_decode import generate_batch_auto
from shoestring.engine.stops import IncrementalText, resolve_eos_ids

__all__ = [
    "FinishReason",
    "GenerationResult",
    "IncrementalText",
    "Prompt",
    "SamplingConfig",
    "auto_batch_size",
    "encode_prompts",
    "estimate_row_bytes",
    "forward_params",
    "generate_all",
    "generate_batch",
    "generate_batch_auto",
    "make_cache",
    "model_device",
    "model_dtype",
    "pad_token_id",
    "repeat_cache_rows",
    "resolve_eos_ids",
    "select_cache_rows",
    "trim_cache_left",
]
