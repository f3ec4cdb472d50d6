"""When a row ends: its EOS ids, and its stop strings found in text decoded incrementally.

Why its own module: finding a stop string must not re-decode a whole row every step (that is
O(length) per token); :class:`IncrementalText` decodes only the new tail, and
:func:`find_stop` looks only where a stop string can newly start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.engine.config import FinishReason, GenerationResult, SamplingConfig

__all__ = ["IncrementalText", "find_stop", "finished_result", "finished_text", "resolve_eos_ids"]


def resolve_eos_ids(model: Any, tokenizer: Any, cfg: SamplingConfig) -> set[int]:
    """The ids that end a row: the config's list if given, else the union of the model's
    generation config (what ``model.generate`` uses) and the tokenizer's EOS."""
    if cfg.eos_token_ids is not None:
        return {int(t) for t in cfg.eos_token_ids}
    ids: set[int] = set()
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None)]
    for src in sources:
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else [int(e) for e in eos])
            break
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if tok_eos is not None:
        ids.add(int(tok_eos))
    return ids


class IncrementalText:
    """Text of a growing token list, decoded a few tokens at a time.

    Decoding the whole sequence every step costs O(length) per token; this keeps two offsets
    (the technique of vLLM/TGI): it decodes ``tokens[prefix:]`` and ``tokens[prefix:read]`` and
    appends the difference, so SentencePiece leading spaces and multi-byte characters split over
    tokens come out right while each step decodes only a short tail.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.text = ""
        self._prefix = 0
        self._read = 0

    def update(self, tokens: Sequence[int]) -> str:
        """Consume ``tokens`` (the full generated list so far); return the new text."""
        decode = self.tokenizer.decode
        before = decode(tokens[self._prefix : self._read], skip_special_tokens=self.skip)
        after = decode(tokens[self._prefix :], skip_special_tokens=self.skip)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            self._prefix, self._read = self._read, len(tokens)
            self.text += delta
            return delta
        return ""


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest occurrence (position, string) of any stop string at or after ``start``."""
    best: tuple[int, str] | None = None
    for s in stops:
        pos = text.find(s, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best


def finished_text(
    tokenizer: Any,
    tokens: Sequence[int],
    stopped_at: tuple[int, str] | None,
    stops: Sequence[str],
    cfg: SamplingConfig,
) -> tuple[str, str | None]:
    """A finished row's text and the stop string that ended it (``None`` if none did).

    The row's tokens are decoded once in full (incremental text can differ at the edges),
    the stop string is looked up again in that text - falling back to where the incremental
    search found it - and the text is cut before it, or after it with ``keep_stop_string``.
    Both decode loops (dynamic and static) finish rows through this, so they return the same
    texts.
    """
    text = (
        tokenizer.decode(list(tokens), skip_special_tokens=cfg.skip_special_tokens)
        if tokenizer is not None
        else ""
    )
    if stopped_at is None:
        return text, None
    found = find_stop(text, stops) or stopped_at
    return text[: found[0] + (len(found[1]) if cfg.keep_stop_string else 0)], found[1]


def finished_result(
    row: Any,
    index: int,
    reason: FinishReason,
    seconds: float,
    tokenizer: Any,
    stops: Sequence[str],
    cfg: SamplingConfig,
    on_text: Any = None,
) -> GenerationResult:
    """A finished row's result: its :func:`finished_text`, after streaming whatever text
    ``on_text`` has not had yet. ``row`` is either decode loop's row (``tokens``, ``stop``,
    ``emitted``, ``prompt_tokens``); both loops finish rows through this."""
    stopped_at = row.stop if reason == "stop" else None
    text, stop_str = finished_text(tokenizer, row.tokens, stopped_at, stops, cfg)
    if on_text is not None and len(text) > row.emitted:
        on_text(index, text[row.emitted :])
        row.emitted = len(text)
    return GenerationResult(
        text=text,
        token_ids=row.tokens,
        n_tokens=len(row.tokens),
        finish_reason=reason,
        seconds=seconds,
        prompt_tokens=row.prompt_tokens,
        stop_string=stop_str,
        index=index,
    )
