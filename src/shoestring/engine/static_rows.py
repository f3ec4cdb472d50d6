"""The host's side of the static decode path: each output row's tokens, text and end, fed a
chunk of tokens at a time.

Why its own module: the static path reads tokens every few steps instead of every step, so a
row may have generated past its end by the time the host looks. :class:`RowBook` walks each
chunk token by token with the dynamic engine's rules (EOS, a stop string in incrementally
decoded text, the length limit, streaming that holds back a possible stop string), finishes
the row where the dynamic engine would have, and ignores the rest - so both paths return the
same results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoestring.engine.config import FinishReason, GenerationResult, SamplingConfig
from shoestring.engine.stops import IncrementalText, find_stop, finished_result

__all__ = ["RowBook"]


@dataclass
class _Row:
    """Book-keeping of one output sequence (as the dynamic engine keeps it)."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: IncrementalText | None = None
    emitted: int = 0  # characters already streamed to on_text
    stop: tuple[int, str] | None = None


class RowBook:
    """Every output row of one batch: tokens so far, whether it is still open, its result."""

    def __init__(
        self,
        tokenizer: Any,
        cfg: SamplingConfig,
        eos: set[int],
        prompt_tokens: list[int],
        on_text: Callable[[int, str], None] | None,
        on_result: Callable[[int, GenerationResult], None] | None,
    ) -> None:
        self.t0 = time.perf_counter()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.eos = eos
        self.stops = list(cfg.stop_strings)
        # characters at the end of the text that may still begin a stop string
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.on_text = on_text
        self.on_result = on_result
        track_text = bool(self.stops) or on_text is not None
        if track_text and tokenizer is None:
            raise ValueError("stop strings and streaming need a tokenizer")
        self.rows = [_Row(prompt_tokens=p) for p in prompt_tokens]
        if track_text:
            for r in self.rows:
                r.text = IncrementalText(tokenizer, cfg.skip_special_tokens)
        self.open = [True] * len(self.rows)
        self.results: list[GenerationResult | None] = [None] * len(self.rows)

    @property
    def any_open(self) -> bool:
        return any(self.open)

    def feed(self, row_ids: list[int], chunk: list[list[int]]) -> None:
        """``chunk[s]`` holds the new tokens of row ``row_ids[s]``; finish rows that end."""
        for i, toks in zip(row_ids, chunk, strict=True):
            if not self.open[i]:
                continue
            for tok in toks:
                reason = self._consume(i, tok)
                if reason is not None:
                    self._finish(i, reason)
                    self.open[i] = False
                    break  # what the row generated after its end is dropped

    def _consume(self, i: int, tok: int) -> FinishReason | None:
        """Append one token to row ``i``; why the row ends here, if it does."""
        cfg, row = self.cfg, self.rows[i]
        row.tokens.append(tok)
        if tok in self.eos and not cfg.ignore_eos:
            return "eos"
        reason: FinishReason | None = None
        if row.text is not None:
            old_len = len(row.text.text)
            row.text.update(row.tokens)
            if self.stops:
                hit = find_stop(row.text.text, self.stops, max(0, old_len - self.hold))
                if hit is not None:
                    row.stop = hit
                    reason = "stop"
            if reason is None and self.on_text is not None:
                safe = len(row.text.text) - (self.hold if self.stops else 0)
                if safe > row.emitted:
                    self.on_text(i, row.text.text[row.emitted : safe])
                    row.emitted = safe
        if reason is None and len(row.tokens) >= cfg.max_new_tokens:
            reason = "length"
        return reason

    def _finish(self, i: int, reason: FinishReason) -> None:
        """Decode the row's text once, cut it at its stop string, flush held-back streamed
        text, and deliver the result (as the dynamic engine's ``finish``)."""
        seconds = time.perf_counter() - self.t0
        res = finished_result(
            self.rows[i], i, reason, seconds, self.tokenizer, self.stops, self.cfg, self.on_text
        )
        self.results[i] = res
        if self.on_result is not None:
            self.on_result(i, res)

    def finished(self) -> list[GenerationResult]:
        """The results in output order (every row must have finished)."""
        missing = [i for i, r in enumerate(self.results) if r is None]
        if missing:  # pragma: no cover - would be an engine bug
            raise RuntimeError(f"static decode left rows {missing[:10]} open")
        return [r for r in self.results if r is not None]
