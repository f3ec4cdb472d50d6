"""The output rows of one batch: each row's tokens, incrementally decoded text, stop detection,
streamed text, finish reason and result - one book both decode loops keep.

Why one book: the dynamic loop (:mod:`.decode`) hands it one token per row per step, the static
loop (:mod:`.static_decode`) a chunk of tokens every few steps, but a row must end at the same
token either way - EOS, a stop string found in the newly decoded tail, or the length limit - and
its text, streamed deltas and result must be the same. :meth:`Rows.append` is that rule;
:meth:`Rows.feed` walks a chunk through it and drops what a row generated after its end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoestring.engine.config import FinishReason, GenerationResult, Sampling, TextOptions
from shoestring.engine.stops import IncrementalText, find_stop

__all__ = ["OnResult", "OnText", "RowState", "Rows", "finished_text"]

# on_text(output index, new text): streamed text, held back while it may begin a stop string.
OnText = Callable[[int, str], None]
# on_result(output index, result): fires the moment that output finishes.
OnResult = Callable[[int, GenerationResult], None]


@dataclass
class RowState:
    """One output sequence while its batch runs."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: IncrementalText | None = None  # only when stop strings or streaming need text
    emitted: int = 0  # characters already streamed to on_text
    stop: tuple[int, str] | None = None  # (position, stop string) found incrementally
    t0: float = 0.0  # when the row's prefill started (its latency counts from there)


class Rows:
    """Every output row of one batch (``prompt * num_return_sequences + sample`` order): what
    each has generated, whether it is still open, and its result once it finishes. The
    callbacks see row ``i`` as output ``first + i``."""

    def __init__(
        self,
        tokenizer: Any,
        sampling: Sampling,
        text: TextOptions,
        eos: set[int],
        prompt_lengths: Sequence[int],
        on_text: OnText | None = None,
        on_result: OnResult | None = None,
        first: int = 0,
    ) -> None:
        self.first = first  # output index of row 0 in the callbacks (a batch of a larger call)
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.text_options = text
        self.eos = eos  # ids that end a row (empty when EOS is ignored from the start)
        self.ignore_eos = sampling.ignore_eos
        self.max_new_tokens = sampling.max_new_tokens
        self.stops = list(sampling.stop_strings)
        # characters at the end of the text that may still begin a stop string
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.on_text = on_text
        self.on_result = on_result
        self.track_text = bool(self.stops) or on_text is not None
        if self.track_text and tokenizer is None:
            raise ValueError("stop strings and streaming need a tokenizer")
        n = sampling.num_return_sequences
        self.prompt_tokens = [prompt_lengths[i // n] for i in range(len(prompt_lengths) * n)]
        self.restart()

    def restart(self) -> None:
        """Every row empty and open again (a backend that retries a batch from its prefill)."""
        self.rows = [RowState(prompt_tokens=k) for k in self.prompt_tokens]  # row i: i // n, i % n
        if self.track_text:
            for r in self.rows:
                r.text = IncrementalText(self.tokenizer, self.text_options.skip_special_tokens)
        self.open = [True] * len(self.rows)
        self.results_by_row: list[GenerationResult | None] = [None] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def any_open(self) -> bool:
        return any(self.open)

    def start(self, indices: Sequence[int]) -> None:
        """Rows ``indices`` start now (their prefill begins): their latency counts from here."""
        t = time.perf_counter()
        for i in indices:
            self.rows[i].t0 = t

    def append(self, i: int, tok: int) -> bool:
        """Append ``tok`` to open row ``i`` and decide whether the row ends here: EOS, a stop
        string in the newly decoded tail, or the length limit; a row that ends delivers its
        result. Streamed text holds back the last ``hold`` characters, which could still
        begin a stop string. Returns True when the row finished."""
        row = self.rows[i]
        row.tokens.append(tok)
        reason: FinishReason | None = None
        if tok in self.eos and not self.ignore_eos:
            reason = "eos"
        elif row.text is not None:
            old_len = len(row.text.text)
            row.text.update(row.tokens)
            if self.stops:
                # a stop string can only newly start in the last `hold` old characters or later
                hit = find_stop(row.text.text, self.stops, max(0, old_len - self.hold))
                if hit is not None:
                    row.stop = hit
                    reason = "stop"
            if reason is None and self.on_text is not None:
                safe = len(row.text.text) - (self.hold if self.stops else 0)  # may stream up to
                if safe > row.emitted:
                    self.on_text(self.first + i, row.text.text[row.emitted : safe])
                    row.emitted = safe
        if reason is None and len(row.tokens) >= self.max_new_tokens:
            reason = "length"
        if reason is None:
            return False
        self.finish(i, reason)
        return True

    def feed(self, row_ids: Sequence[int], chunk: Sequence[Sequence[int]]) -> None:
        """``chunk[s]`` holds the next tokens of row ``row_ids[s]`` (the static loop reads a
        few steps at once); each open row takes them one by one until it ends."""
        for i, toks in zip(row_ids, chunk, strict=True):
            if not self.open[i]:
                continue
            for tok in toks:
                if self.append(i, tok):
                    break  # what the row generated after its end is dropped

    def finish(self, i: int, reason: FinishReason) -> None:
        """Close row ``i``: decode its text once, cut it at its stop string, stream what was
        held back, and deliver the result."""
        row = self.rows[i]
        seconds = time.perf_counter() - row.t0
        stopped_at = row.stop if reason == "stop" else None
        text, stop_str = finished_text(
            self.tokenizer, row.tokens, stopped_at, self.stops, self.text_options
        )
        if self.on_text is not None and len(text) > row.emitted:
            self.on_text(self.first + i, text[row.emitted :])
            row.emitted = len(text)
        res = GenerationResult(
            text=text,
            token_ids=row.tokens,
            n_tokens=len(row.tokens),
            finish_reason=reason,
            seconds=seconds,
            prompt_tokens=row.prompt_tokens,
            stop_string=stop_str,
            index=self.first + i,
        )
        self.open[i] = False
        self.results_by_row[i] = res
        if self.on_result is not None:
            self.on_result(self.first + i, res)

    def results(self) -> list[GenerationResult]:
        """The results in output order (every row must have finished)."""
        missing = [i for i, r in enumerate(self.results_by_row) if r is None]
        if missing:  # pragma: no cover - would be an engine bug
            raise RuntimeError(f"decoding left rows {missing[:10]} open")
        return [r for r in self.results_by_row if r is not None]


def finished_text(
    tokenizer: Any,
    tokens: Sequence[int],
    stopped_at: tuple[int, str] | None,
    stops: Sequence[str],
    text: TextOptions,
) -> tuple[str, str | None]:
    """A finished row's text and the stop string that ended it (``None`` if none did).

    The row's tokens are decoded once in full (incremental text can differ at the edges),
    the stop string is looked up again in that text - falling back to where the incremental
    search found it - and the text is cut before it, or after it with ``keep_stop_string``.
    """
    decoded = (
        tokenizer.decode(list(tokens), skip_special_tokens=text.skip_special_tokens)
        if tokenizer is not None
        else ""
    )
    if stopped_at is None:
        return decoded, None
    found = find_stop(decoded, stops) or stopped_at  # (character position, stop string)
    return decoded[: found[0] + (len(found[1]) if text.keep_stop_string else 0)], found[1]
