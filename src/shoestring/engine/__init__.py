"""Batched KV-cache text generation for any Hugging Face causal LM.

Why not ``model.generate``? One sequence per forward pass is a matrix-vector product bound by
memory bandwidth, which leaves most of a machine idle. This engine decodes many prompts
together (left padding, an attention mask and position ids derived from it, one shared KV
cache), and it owns the decode loop so it can:

* stop every row on its own - EOS or a stop string, found by decoding only the new tail of each
  row instead of re-tokenising whole sequences;
* stop paying for finished rows - the batch is compacted (rows dropped from the ids, mask, and
  every cache layer; leading all-padding columns trimmed) as soon as a row finishes;
* keep the batch full while answers end at different lengths - queued prompts are prefilled
  into the running batch as rows finish (continuous batching, ``EngineOptions.refill``), each
  prompt getting the greedy tokens it gets alone;
* share a prompt's prefill between its samples (``num_return_sequences``), which GRPO needs;
* pick the batch size from the model's shape and the memory that is actually free;
* on CUDA, replay a captured decode step over a fixed-shape cache (the static backend).

Greedy decoding in fp32 reproduces ``model.generate(do_sample=False)`` token for token (the
tests check it for Llama and GPT-2), so speed never costs correctness. Sampling draws each
row's numbers from a counter-based stream of (seed, the prompt's stream, the sample, the token
position), so a seed gives a prompt the same samples whatever else shares the call, the batch
size, the backend or the number of ranks.

The one entry point is :class:`Engine`: ``Engine(model, tokenizer, EngineOptions(...))
.generate(prompts, Sampling(...))``. The package, one job per module, in the order a call meets
them:

* :mod:`.config` - :class:`Sampling` (what to generate), :class:`EngineOptions` (how),
  :class:`TextOptions` (how text is read and written) and :class:`GenerationResult`;
* :mod:`.engine` - :class:`Engine`: sorting, batching, out-of-memory halving, callbacks, and
  the choice of backend;
* :mod:`.sizing` - the auto batch size from the model's shape and the free memory;
* :mod:`.rows` - :class:`~.rows.Rows`, the per-row state both backends keep: tokens, text,
  stop strings, streaming, finish reasons, results;
* :mod:`.decode` - the dynamic backend: one forward pass per token, rows compacted and
  refilled as they finish;
* :mod:`.static_decode` - the CUDA backend: a fixed-shape cache (:mod:`.static_cache`), a
  captured, replayed step (:mod:`.static_runner`), stop checks every few steps, LoRA merged
  for the call (:mod:`.lora_view`);
* :mod:`.prefill` - tokenising, padding and prefill of the prompts (unpadded through the lean
  forward, else grouped by length);
* :mod:`.cache` - the preallocated KV cache and row compaction / padding trimming;
* :mod:`.stops` - EOS ids, stop strings and incrementally decoded text;
* :mod:`.sampling` - choosing the next token (greedy, or an exact sample);
* :mod:`.lean_decode` and :mod:`.packed_linear` - the fast forward (decode step and prefill)
  and its weight packing; :mod:`.kept_decoder` keeps it between calls; on AVX2 CPUs
  :mod:`.sgemm_avx2` multiplies and :mod:`.decode_glue` does a decode step's work between the
  products, both C files built by :mod:`.kernel_build`;
* :mod:`.cpu_attention` - fp32 attention for a bf16 model on a CPU, single-query attention;
* :mod:`.model_io` - the model's device, dtype, forward signature and one forward pass.
"""

from shoestring.engine.cache import (
    make_cache,
    repeat_cache_rows,
    select_cache_rows,
    trim_cache_left,
)
from shoestring.engine.config import (
    EngineOptions,
    FinishReason,
    GenerationResult,
    Prompt,
    Sampling,
    TextOptions,
)
from shoestring.engine.engine import Engine
from shoestring.engine.model_io import forward_params, model_device, model_dtype
from shoestring.engine.prefill import encode_prompts, pad_token_id
from shoestring.engine.rows import Rows
from shoestring.engine.sizing import auto_batch_size, estimate_row_bytes
from shoestring.engine.stops import IncrementalText, resolve_eos_ids

__all__ = [
    "Engine",
    "EngineOptions",
    "FinishReason",
    "GenerationResult",
    "IncrementalText",
    "Prompt",
    "Rows",
    "Sampling",
    "TextOptions",
    "auto_batch_size",
    "encode_prompts",
    "estimate_row_bytes",
    "forward_params",
    "make_cache",
    "model_device",
    "model_dtype",
    "pad_token_id",
    "repeat_cache_rows",
    "resolve_eos_ids",
    "select_cache_rows",
    "trim_cache_left",
]
