"""When a row ends: its EOS ids, and its stop strings found in text decoded incrementally.

Why its own module: finding a stop string must not re-decode a whole row every step (that is
O(length) per token); :class:`IncrementalText` decodes only the new tail, and
:func:`find_stop` looks only where a stop string can newly start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.engine.config import Sampling

__all__ = ["IncrementalText", "find_stop", "request_eos_ids", "resolve_eos_ids"]


def resolve_eos_ids(model: Any, tokenizer: Any, explicit: Sequence[int] | None = None) -> set[int]:
    """The ids that end a row: ``explicit`` if given, else the union of the model's
    generation config (what ``model.generate`` uses) and the tokenizer's EOS."""
    if explicit is not None:
        return {int(t) for t in explicit}
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


def request_eos_ids(model: Any, tokenizer: Any, sampling: Sampling) -> set[int]:
    """The ids that end a row of this request: none when EOS is ignored from the first token
    (then no step masks or checks them), else :func:`resolve_eos_ids`."""
    if sampling.ignore_eos and sampling.min_new_tokens == 0:
        return set()
    return resolve_eos_ids(model, tokenizer, sampling.eos_token_ids)


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
