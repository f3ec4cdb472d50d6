"""lm-evaluation-harness's ``gsm8k`` rules, reproduced: its filters, its exact match, its context.

Why this module exists: a number reported as "lm-eval's GSM8K" must be the number lm-eval gives.
The lenient numeric judge of :mod:`shoestring.data.answers` accepts ``#### 18.00`` for 18, a
Unicode minus and a 1e-4 relative tolerance; lm-eval does not. This module is lm-eval 0.4.13's
behaviour, read from its source, so the ``lm-eval-5shot`` protocol can judge and truncate the
way lm-eval does:

- filters (``tasks/gsm8k/gsm8k.yaml``): ``strict-match`` = regex ``#### (\\-?[0-9\\.\\,]+)``,
  first match; ``flexible-extract`` = regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match, its
  first non-empty group (``filters/extraction.py: RegexFilter``); the match is ``strip()``-ed and
  no match is lm-eval's fallback ``"[invalid]"`` (returned here as ``None``, which never
  matches a reference);
- metric (``api/metrics.py: exact_match_hf_evaluate`` with the yaml's settings): prediction and
  reference each have the ``regexes_to_ignore`` ``","``, ``"\\$"``, ``"(?s).*#### "`` and
  ``"\\.$"`` removed in that order, are lower-cased (``ignore_case: true``; punctuation is kept),
  and must then be equal strings;
- context (``models/huggingface.py: generate_until`` / ``tok_batch_encode``): a prompt keeps
  only its last ``max_length - max_gen_toks`` tokens, where ``max_length`` is the first of the
  config's ``n_positions``, ``max_position_embeddings``, ``n_ctx`` (of ``text_config`` when the
  config nests one), else the tokenizer's ``model_max_length`` unless unset, else 2048
  (``models/utils.py: resolve_max_length``); a prompt whose text already starts with the
  tokenizer's BOS token (a chat template that writes it) is encoded without special tokens,
  any other with the tokenizer's default (``tok_batch_encode``);
- the chain-of-thought tasks (``gsm8k-cot.yaml``, ``gsm8k-cot-zeroshot.yaml``) keep the metric
  and ``flexible-extract`` but their ``strict-match`` regex is ``The answer is
  (\\-?[0-9\\.\\,]+).`` (its final ``.`` is any character); ``gsm8k_cot``'s reference is
  ``answer.split('####')[-1].strip()`` rather than the whole answer (:func:`reference`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from shoestring.errors import UserError

__all__ = [
    "COT_STRICT_PATTERN",
    "DEFAULT_MAX_LENGTH",
    "FLEXIBLE_PATTERN",
    "IGNORE_REGEXES",
    "STRICT_PATTERN",
    "adds_special_tokens",
    "context_length",
    "exact_match",
    "flexible_extract",
    "left_truncate",
    "prompt_budget",
    "reference",
    "regex_filter",
    "strict_match",
]

STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
#: gsm8k-cot.yaml and gsm8k-cot-zeroshot.yaml ``strict-match`` (first match).
COT_STRICT_PATTERN = r"The answer is (\-?[0-9\.\,]+)."
#: gsm8k.yaml ``metric_list[0].regexes_to_ignore``, applied in this order.
IGNORE_REGEXES: tuple[str, ...] = (",", r"\$", r"(?s).*#### ", r"\.$")
#: lm-eval's ``DEFAULT_MAX_LENGTH`` (used when neither config nor tokenizer names a context).
DEFAULT_MAX_LENGTH = 2048
#: transformers' ``model_max_length`` for "unset" (``tokenization_utils_base.VERY_LARGE_INTEGER``).
_TOKENIZER_INFINITY = int(1e30)
_SEQLEN_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")

_STRICT_RE = re.compile(STRICT_PATTERN)
_FLEXIBLE_RE = re.compile(FLEXIBLE_PATTERN)
_IGNORE_RES = tuple(re.compile(p) for p in IGNORE_REGEXES)


def regex_filter(response: str, pattern: str | re.Pattern[str], group_select: int) -> str | None:
    """lm-eval's ``RegexFilter`` on one response; None where lm-eval writes ``[invalid]``."""
    matches = re.findall(pattern, response)  # re caches a pattern given as text
    if not matches:
        return None
    match = matches[group_select]  # 0: the first match (strict), -1: the last (flexible)
    if isinstance(match, tuple):  # several groups: the first non-empty one
        groups = [m for m in match if m]
        if not groups:
            return None
        match = groups[0]
    return match.strip()


def strict_match(response: str) -> str | None:
    """lm-eval's ``strict-match`` answer: the text after the first ``#### `` (unnormalised)."""
    return regex_filter(response, _STRICT_RE, 0)


def flexible_extract(response: str) -> str | None:
    """lm-eval's ``flexible-extract`` answer: the last number-like match (unnormalised)."""
    return regex_filter(response, _FLEXIBLE_RE, -1)


def reference(answer: str, rule: str) -> str:
    """lm-eval's reference for a GSM8K answer field under a task's ``doc_to_target``.

    ``answer``: the whole field (``gsm8k``, ``gsm8k_cot_zeroshot``); ``after-hashes``:
    ``answer.split('####')[-1].strip()`` (``gsm8k_cot``). A canonical gold number passes
    through both unchanged.
    """
    if rule == "answer":
        return answer
    if rule == "after-hashes":
        return answer.split("####")[-1].strip()
    raise ValueError(f"unknown lm-eval reference rule {rule!r}; use 'answer' or 'after-hashes'")


def _ignore(text: str) -> str:
    for regex in _IGNORE_RES:
        text = regex.sub("", text)
    return text.lower()


def exact_match(pred: str | None, gold: str) -> bool:
    """lm-eval's gsm8k ``exact_match`` of one filtered prediction against a gold answer.

    ``gold`` may be the whole GSM8K answer field (what lm-eval uses) or its canonical number
    (:attr:`shoestring.data.gsm8k.Problem.gold`): the ignore-regexes reduce both to the same
    string for every GSM8K answer (tests/test_lm_eval_rules.py checks all 8792).
    """
    if pred is None:
        return False
    return _ignore(pred) == _ignore(gold)


def context_length(config: Any, tokenizer: Any = None) -> int:
    """The context lm-eval's HF backend assumes for a model (``resolve_max_length``)."""
    cfg = getattr(config, "text_config", None) or config  # multimodal configs nest the LM
    for attr in _SEQLEN_ATTRS:
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max != _TOKENIZER_INFINITY:
        return int(model_max)
    return DEFAULT_MAX_LENGTH


def prompt_budget(config: Any, tokenizer: Any, max_new_tokens: int) -> int:
    """Prompt tokens lm-eval keeps: the context minus the tokens it may generate."""
    ctx = context_length(config, tokenizer)
    budget = ctx - max_new_tokens
    if budget <= 0:
        raise UserError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"context of {ctx} tokens (lm-eval refuses this too); lower --max-new-tokens"
        )
    return budget


def adds_special_tokens(text: str, tokenizer: Any) -> bool:
    """Whether lm-eval's HF backend lets the tokenizer add special tokens to ``text``: not when
    the text already starts with the BOS token (a chat template that writes it), else yes."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def left_truncate(ids: Sequence[int], budget: int) -> list[int]:
    """The last ``budget`` tokens of a prompt, as lm-eval's ``tok_batch_encode`` keeps them."""
    return list(ids[-budget:])
