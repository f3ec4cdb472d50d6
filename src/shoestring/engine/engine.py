"""The engine: :class:`Engine` holds a model, its tokenizer and the :class:`EngineOptions`;
:meth:`Engine.generate` takes any number of prompts and a :class:`Sampling` request and returns
one :class:`GenerationResult` per output, in input order.

Why one entry point: every caller (``bench``, GRPO's rollouts and held-out evaluation,
``generate``, the benchmarks) needs the same things around the decode loops - prompts sorted by
length and cut into batches that fit in memory, an out-of-memory batch halved, outputs
delivered one by one (a benchmark appends each to a JSONL file and resumes from it), each
output's sampling stream (:func:`~.sampling.row_keys`) following it through all of that, and
the choice of backend: the static loop on CUDA for the models it supports
(:mod:`.static_decode`), the dynamic loop otherwise (:mod:`.decode`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from shoestring.engine.config import (
    EngineOptions,
    GenerationResult,
    Prompt,
    Sampling,
    TextOptions,
)
from shoestring.engine.decode import LogitsProcessor, decode_dynamic
from shoestring.engine.kept_decoder import KeptDecoder
from shoestring.engine.model_io import model_device
from shoestring.engine.prefill import encode_prompts
from shoestring.engine.rows import OnResult, OnText, Rows
from shoestring.engine.sampling import row_keys
from shoestring.engine.sizing import auto_batch_size
from shoestring.engine.static_decode import decode_static, static_unsupported
from shoestring.engine.static_runner import Capture
from shoestring.engine.stops import request_eos_ids
from shoestring.engine.weight_packs import WeightPacks
from shoestring.errors import UserError
from shoestring.util.memory import is_oom_error
from shoestring.util.progress import progress_bar

__all__ = ["Engine"]


class Engine:
    """Batched KV-cache generation for one model and tokenizer.

    ``text`` says how text prompts are tokenised and answers decoded; ``capture`` replaces
    the static backend's step capture (tests count captures with it); ``packs`` are packed
    copies of the model's weights that the caller keeps and multiplies through too (a GRPO
    full fine-tune's training pass): the lean step packs through them (:mod:`.weight_packs`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        options: EngineOptions | None = None,
        *,
        text: TextOptions | None = None,
        capture: Capture | None = None,
        packs: WeightPacks | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.options = (options or EngineOptions()).check()
        self.text = (text or TextOptions()).check()
        self.capture = capture
        # the lean forward (its packed weights) from the last call, reused while unchanged;
        # with the caller's kept packed copies, rebuilt from them
        self._kept = KeptDecoder(packs)

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling | None = None,
        *,
        on_text: OnText | None = None,
        on_result: OnResult | None = None,
        logits_processor: LogitsProcessor | None = None,
        progress: bool = False,
        desc: str = "generate",
        streams: Sequence[int] | None = None,
    ) -> list[GenerationResult]:
        """Generate for any number of prompts (text or token ids); results in input order,
        sample ``k`` of prompt ``i`` at ``i * num_return_sequences + k``.

        Prompts are sorted longest first (little padding per batch, and the batch most likely
        to run out of memory runs first) and decoded ``options.batch_size`` rows at a time, or
        an auto size from the model shape and free memory. With ``options.refill`` (continuous
        batching) queued prompts take the places of rows that finish; otherwise they go in
        fixed batches. ``on_result(i, result)`` fires as output ``i`` finishes, so a caller can
        persist it and resume by passing only the prompts still missing. ``on_text(i, delta)``
        streams output ``i``'s new text (text that could still become a stop string is held
        back until it is certain). ``logits_processor(outputs, generated, logits)`` may edit
        the next-token logits in place before each choice (a per-row rule, like a
        ``transformers`` ``LogitsProcessor``; it keeps the dynamic backend). An out-of-memory
        batch is retried at half the size, keeping the outputs already delivered.

        ``streams[i]`` is prompt ``i``'s sampling stream (default: ``i``): sample ``k`` of
        prompt ``i`` draws its ``t``-th token from ``(sampling.seed, streams[i], k, t)`` alone
        (:func:`~.sampling.stream_uniforms`), so its tokens do not depend on the other prompts
        of the call, their order, the batch size, refill or backend. A caller that splits one
        call into several (ranks, rounds, a resumed run) passes each prompt's index in the
        whole call and gets the outputs the one call gives. Greedy decoding ignores it.
        """
        sampling = (sampling or Sampling()).check()
        model, options = self.model, self.options
        n = sampling.num_return_sequences
        ids_list = encode_prompts(self.tokenizer, prompts, self.text.add_special_tokens)
        if streams is not None and len(streams) != len(ids_list):
            raise ValueError(f"{len(ids_list)} prompts but {len(streams)} streams")
        # [prompts, n]: the stream key of each output (sample k of prompt i at [i, k]), which
        # goes with the output through sorting, batching, retries and the backends
        keys = row_keys(range(len(ids_list)) if streams is None else streams, n)
        keys = keys.view(len(ids_list), n)
        eos = request_eos_ids(model, self.tokenizer, sampling)
        # longest first: little padding per batch, and the likeliest out-of-memory batch first
        order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
        results: list[GenerationResult | None] = [None] * (len(ids_list) * n)
        device = model_device(model)
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
        refill = options.refill and options.compact and options.preallocate
        start = 0
        while start < len(order):
            # Size this batch from its longest prompt (the first, since prompts are sorted).
            longest = len(ids_list[order[start]])
            rows_fit = options.batch_size or auto_batch_size(
                model, longest, sampling.max_new_tokens, options
            )
            prompts_per_batch = max(1, rows_fit // n)  # a prompt brings n rows (its samples)
            if sticky_cap is not None:
                prompts_per_batch = min(prompts_per_batch, sticky_cap)
            if refill:  # one call: finished rows are replaced from the rest of the queue
                chunk, max_rows = order[start:], prompts_per_batch * n
            else:
                chunk, max_rows = order[start : start + prompts_per_batch], None

            def caller_index(local: int, chunk: list[int] = chunk) -> int:
                """The caller's output index of the batch's output ``local``."""
                return chunk[local // n] * n + local % n  # (prompt, sample) -> caller index

            def deliver(local: int, res: GenerationResult) -> None:
                """Hand a finished output over once, in the caller's numbering."""
                out = caller_index(local)
                if results[out] is not None:  # delivered by an attempt before an OOM retry
                    return
                res.index = out
                results[out] = res
                bar.update(1)
                if on_result is not None:
                    on_result(out, res)

            def book(first: int, count: int, chunk: list[int] = chunk) -> Rows:
                """The rows of prompts ``chunk[first : first + count]`` (one backend call)."""
                return Rows(
                    self.tokenizer,
                    sampling,
                    self.text,
                    eos,
                    [len(ids_list[i]) for i in chunk[first : first + count]],
                    on_text=None if on_text is None else _renumbered(on_text, caller_index),
                    on_result=deliver,
                    first=first * n,  # the rows' batch-local output indices start here
                )

            processor = None
            if logits_processor is not None:

                def processor(
                    outs: list[int],
                    generated: list[int],
                    logits: torch.Tensor,
                    user: LogitsProcessor = logits_processor,
                    to_caller: Any = caller_index,
                ) -> None:
                    user([to_caller(o) for o in outs], generated, logits)

            try:
                chunk_keys = keys[chunk].reshape(-1)  # in the batch's output order
                self._decode([ids_list[i] for i in chunk], n, book, chunk_keys, max_rows, processor)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_oom_error(exc) or prompts_per_batch == 1 or len(chunk) == 1:
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # hand the failed batch's blocks back first
                sticky_cap = max(1, min(prompts_per_batch, len(chunk)) // 2)
                # Prompts whose every sample already arrived are done; retry the rest.
                pending = [i for i in chunk if any(results[i * n + k] is None for k in range(n))]
                order[start : start + len(chunk)] = pending
                continue  # same start: the smaller cap applies to the pending prompts
            start += len(chunk)
        bar.close()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # pragma: no cover - would be an engine bug
            raise RuntimeError(f"generation lost outputs {missing[:10]}")
        return [r for r in results if r is not None]

    def _decode(
        self,
        ids_list: list[list[int]],
        n: int,
        book: Callable[[int, int], Rows],
        keys: torch.Tensor,
        max_rows: int | None,
        logits_processor: LogitsProcessor | None,
    ) -> None:
        """One batch (or, with ``max_rows``, a refilling queue) through the backend that fits;
        ``book(first, count)`` makes the rows of prompts ``first .. first + count``, ``n``
        rows (samples) each; ``keys`` are the stream keys of those rows, in the same order.

        The static backend decodes fixed batches of at most ``max_rows`` rows (its buckets
        shrink as rows finish, instead of taking new prompts); a ``logits_processor`` edits
        logits on the host every step, so it takes the dynamic backend.
        """
        model, options = self.model, self.options
        reason = static_unsupported(model, options)
        if reason is None and logits_processor is not None:
            reason = "a logits processor edits the logits on the host every step"
        if reason is not None:
            if options.static_cache == "on":
                raise UserError(
                    f"static_cache=on cannot be used: {reason}; set static_cache=auto or off"
                )
            rows = book(0, len(ids_list))
            kept = self._kept if options.keep_packed or self._kept.packs is not None else None
            decode_dynamic(model, options, ids_list, rows, keys, max_rows, logits_processor, kept)
            return
        # the static backend takes no new prompts mid-call: the queue goes in fixed batches
        per_call = len(ids_list) if max_rows is None else max(1, max_rows // n)
        for first in range(0, len(ids_list), per_call):
            part = ids_list[first : first + per_call]
            part_keys = keys[first * n : (first + len(part)) * n]
            decode_static(model, options, part, book(first, len(part)), part_keys, self.capture)


def _renumbered(callback: OnText, to_caller: Any) -> OnText:
    """``callback`` with the batch's output index moved to the caller's numbering."""
    return lambda i, value: callback(to_caller(i), value)
