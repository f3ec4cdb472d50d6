"""Which scoring protocol each model of a bench is judged under: decided here and nowhere else.

Why one place: ``--protocol auto`` cannot be resolved before a model's tokenizer is loaded (it
picks chat-cot for a tokenizer with a chat template), yet three decisions need the protocol
earlier - whether lm-eval's per-problem shots must be drawn, which stored settings can be
compared before any model loads, and whether a model whose problems are all stored can be
reported without loading it. :class:`ProtocolChoice` answers all of them from the one
resolution of ``--protocol``; everything after it takes a resolved
:class:`~shoestring.scoring.protocols.Protocol`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shoestring.scoring.protocols import Protocol, get_protocol, has_chat_template, resolve_protocol

__all__ = ["ProtocolChoice", "protocol_key", "recorded_protocol"]


def protocol_key(protocol: Protocol, max_new_tokens: int) -> str:
    """The identity of a score: the protocol's definition and the generation budget.

    ``Protocol.key()`` alone would let a 160-token quickstart score and a 256-token bench score
    share one key, though an answer cut at 160 tokens can be wrong where the same answer at
    256 is right; the budget is part of what decides a score, so it is part of the key. Same
    form as ``Protocol.key()``: ``name@hash``.
    """
    blob = json.dumps({**protocol.to_dict(), "max_new_tokens": max_new_tokens}, sort_keys=True)
    return f"{protocol.name}@{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def recorded_protocol(state: dict[str, Any]) -> Protocol:
    """The protocol a model's stored lines were made with (its state.json's settings)."""
    return get_protocol(state["settings"]["protocol"])


@dataclass(frozen=True)
class ProtocolChoice:
    """``--protocol`` resolved once per run: a named protocol is every model's, ``auto`` is
    decided per model by its tokenizer."""

    asked: str  # "auto" or a protocol name, as config.json records it
    fixed: Protocol | None  # the named protocol; None for auto

    @classmethod
    def resolve(cls, asked: str) -> ProtocolChoice:
        """The choice ``--protocol asked`` makes; an unknown name is an error naming the nearest."""
        return cls(asked, None if asked == "auto" else get_protocol(asked))

    @property
    def lm_eval_shots(self) -> int:
        """How many few-shot examples lm-eval draws for each problem's line of the test file;
        0 when the protocol draws none per problem (``auto`` never picks a few-shot one)."""
        if self.fixed is None or self.fixed.fewshot_sampler != "lm-eval":
            return 0
        return self.fixed.n_shots

    def known_settings(self) -> dict[str, Any]:
        """The protocol part of the settings known before loading: the name when one was given."""
        return {} if self.fixed is None else {"protocol": self.fixed.name}

    def for_tokenizer(self, tokenizer: Any) -> tuple[Protocol, str]:
        """The model's protocol and why (recorded as ``protocol_source``)."""
        protocol = resolve_protocol(self.asked, tokenizer, fallback="plain")
        if self.fixed is not None:
            return protocol, "--protocol"
        if has_chat_template(tokenizer):
            return protocol, "default: the tokenizer has a chat template"
        return protocol, "default: no chat template"

    def without_loading(self, state: dict[str, Any]) -> Protocol | None:
        """The stored lines' protocol when loading the tokenizer could not pick another one;
        None when it might (or nothing is stored).

        A named protocol was compared with the stored one before any model loaded. ``auto``
        reuses a stored default; a protocol named explicitly last time needs the tokenizer to
        know whether it is this model's default.
        """
        if state.get("settings") is None:
            return None
        source = str(state.get("info", {}).get("protocol_source", ""))
        if self.fixed is None and not source.startswith("default"):
            return None
        return recorded_protocol(state)
