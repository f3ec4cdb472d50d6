"""The context policy: how long a prompt a model may be given, and what happens to longer ones.

Why one module: every command that feeds a model text (bench, generate, grpo, progressive,
quickstart) meets prompts longer than the model can read - a 1 MB question, a 100k-character
prompt, a model trained with a context of 64. A model with learned positions then fails deep
inside its forward pass (``index out of range``) and a RoPE model silently reads positions it
never saw. The policy decides before the first forward pass, from the model's config alone:

- :func:`context_limit` is the model's real limit: a learned position table's size
  (``n_positions``, ``max_position_embeddings``, ``n_ctx``; the shoestring GPT's ``max_seq_len``),
  for RoPE ``max_position_embeddings`` widened by the ``rope_scaling`` factor (Hugging Face's
  convention: a factor ``f`` reads ``f`` times the original length), else the tokenizer's
  ``model_max_length``; None when nothing names one.
- :func:`fit_prompts` keeps room for ``max_new_tokens`` and either truncates a longer prompt
  from the left - its last ``limit - max_new_tokens`` tokens, as lm-eval's HF backend keeps
  them - or refuses it with a reason. Each prompt is judged alone, so one bad prompt never
  costs the others; the counts are the caller's to record (``summary.json``, per problem).
- When ``max_new_tokens`` alone fills the context, a learned-position model cannot run at all
  (refused, :func:`no_room_reason`), while a RoPE model can: its prompts are kept within the
  context and the generated tokens run past it (``extrapolates=True``; recorded as
  :attr:`PromptFit.past_context`), as a small model trained on a short context (the
  quickstart's 128 tokens) is still asked for a full answer.

lm-eval's own protocols keep lm-eval's rule (``scoring/lm_eval_rules.py``, which ignores RoPE
scaling), so their prompts stay identical to lm-eval's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Overflow",
    "PromptFit",
    "context_limit",
    "fit_prompts",
    "has_learned_positions",
    "no_room_reason",
    "tokenizing_long_prompts",
]

#: What happens to a prompt longer than the room the context leaves: cut from the left, or
#: refused with a reason.
Overflow = Literal["truncate", "refuse"]

#: Config attributes naming a learned position table's size (or a model's context), in the
#: order lm-eval reads them; ``max_seq_len`` is the shoestring GPT's own name.
_LIMIT_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")
#: transformers' ``model_max_length`` for "unset" (``tokenization_utils_base.VERY_LARGE_INTEGER``).
_TOKENIZER_INFINITY = int(1e30)


def _config_of(model_or_config: Any) -> Any:
    """The language model's config of a model, a peft wrapper, or a config itself."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return getattr(cfg, "text_config", None) or cfg  # multimodal configs nest the LM


def _rope_factor(cfg: Any) -> float:
    """The ``rope_scaling`` factor: a float (the shoestring GPT) or HF's dict; 1.0 = none."""
    scaling = getattr(cfg, "rope_scaling", None)
    if isinstance(scaling, dict):
        factor = scaling.get("factor")
        return float(factor) if isinstance(factor, int | float) and factor > 0 else 1.0
    return float(scaling) if isinstance(scaling, int | float) and scaling > 0 else 1.0


def has_learned_positions(model_or_config: Any) -> bool:
    """Whether positions past the limit cannot run at all (a learned table): the shoestring
    GPT with ``position="learned"``, GPT-2 style configs (``n_positions``)."""
    cfg = _config_of(model_or_config)
    position = getattr(cfg, "position", None)
    if position is not None:
        return position == "learned"
    return getattr(cfg, "n_positions", None) is not None


def context_limit(model_or_config: Any, tokenizer: Any = None) -> int | None:
    """The most tokens (prompt + generated) ``model_or_config`` can read; None when unknown.

    RoPE scaling widens the limit by its factor, unless the dict names the
    ``original_max_position_embeddings`` the factor applies to (Llama 3.1, YaRN): then the
    larger of ``max_position_embeddings`` and original x factor.
    """
    cfg = _config_of(model_or_config)
    for attr in _LIMIT_ATTRS:
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if has_learned_positions(cfg):
                return value  # a table of `value` rows: scaling cannot apply
            factor = _rope_factor(cfg)
            scaling = getattr(cfg, "rope_scaling", None)
            original = (
                scaling.get("original_max_position_embeddings")
                if isinstance(scaling, dict)
                else None
            )
            if isinstance(original, int) and original > 0:
                return max(value, int(original * factor))
            return int(value * factor)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < _TOKENIZER_INFINITY:
        return model_max
    return None


@dataclass(frozen=True)
class PromptFit:
    """Prompts fitted to a context: what to generate from, and what was cut or refused.

    ``ids[i]`` is prompt ``i`` as the model gets it, None where it was refused;
    ``cut[i]`` the tokens removed from its left (0 = whole); ``refused[i]`` the reason.
    ``budget`` is the most prompt tokens kept (None: no known limit, nothing cut).
    """

    ids: list[list[int] | None]
    cut: list[int]
    refused: dict[int, str] = field(default_factory=dict)
    limit: int | None = None
    budget: int | None = None
    #: generated tokens may run past ``limit`` (a RoPE model asked for more tokens than its
    #: context holds): the caller records it
    past_context: bool = False

    @property
    def truncated(self) -> int:
        """How many prompts were cut (refused ones not counted)."""
        return sum(1 for c in self.cut if c > 0)

    @property
    def no_room(self) -> str | None:
        """Why no prompt at all can be given (``max_new_tokens`` fills the context), else None."""
        if self.limit is None or self.budget is None or self.past_context:
            return None
        return no_room_reason(self.limit, self.limit - self.budget)

    def kept(self) -> list[int]:
        """Indices of the prompts that will be generated from, in input order."""
        return [i for i, x in enumerate(self.ids) if x is not None]

    def kept_ids(self) -> list[list[int]]:
        """The token ids to generate from: prompt ``kept()[j]`` is ``kept_ids()[j]``."""
        return [x for x in self.ids if x is not None]


def no_room_reason(
    limit: int | None, max_new_tokens: int, *, extrapolates: bool = False
) -> str | None:
    """Why ``max_new_tokens`` leaves no room for any prompt in a context of ``limit`` tokens
    (a one-line error with the fix), or None when a prompt of at least one token fits or the
    model ``extrapolates`` (RoPE: it can read past its context); a caller can refuse a run
    with it before loading anything but the config."""
    if limit is None or extrapolates or limit - max_new_tokens > 0:
        return None
    return (
        f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
        f"{limit} tokens; lower max_new_tokens below {limit}"
    )


def fit_prompts(
    prompts: Sequence[Sequence[int]],
    limit: int | None,
    max_new_tokens: int,
    *,
    overflow: Overflow = "truncate",
    extrapolates: bool = False,
) -> PromptFit:
    """Fit token-id prompts into ``limit`` with room for ``max_new_tokens`` generated tokens.

    A prompt longer than ``limit - max_new_tokens`` keeps its last that many tokens
    (``overflow="truncate"``, lm-eval's left truncation) or is refused with a reason
    (``"refuse"``). When ``max_new_tokens`` alone fills the context every prompt is refused with
    that reason (:attr:`PromptFit.no_room`), so a caller may refuse the whole run up front -
    unless the model ``extrapolates`` (RoPE): then prompts keep at most ``limit`` tokens and
    the answer runs past the context (:attr:`PromptFit.past_context`).
    """
    if limit is None:
        return PromptFit([list(p) for p in prompts], [0] * len(prompts))
    budget = limit - max_new_tokens
    past_context = extrapolates and budget <= 0
    if past_context:
        budget = limit  # the prompt within the context; the generated tokens run past it
    ids: list[list[int] | None] = []
    cut: list[int] = []
    refused: dict[int, str] = {}
    for i, prompt in enumerate(prompts):
        over = len(prompt) - budget  # tokens past the room the context leaves
        if budget <= 0:
            refused[i] = str(no_room_reason(limit, max_new_tokens))
        elif over > 0 and overflow == "refuse":
            refused[i] = (
                f"prompt of {len(prompt)} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"model's context of {limit} tokens"
            )
        if i in refused:
            ids.append(None)
            cut.append(0)
            continue
        ids.append(list(prompt[-budget:]) if over > 0 else list(prompt))  # the last `budget`
        cut.append(max(over, 0))
    return PromptFit(ids, cut, refused, limit, budget, past_context)


@contextmanager
def tokenizing_long_prompts() -> Iterator[None]:
    """Tokenise prompts that may exceed the tokenizer's ``model_max_length`` without its
    warning ("... will result in indexing errors"): the policy fits them before any forward
    pass, so that warning would be false and is the only line a user would read."""
    log = logging.getLogger("transformers.tokenization_utils_base")  # transformers' own logger
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
