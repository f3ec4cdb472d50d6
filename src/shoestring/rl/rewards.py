"""Reward functions for GRPO: correctness, format, and user functions with TRL's signature.

Why the bench's normaliser: a reward that disagrees with the benchmark teaches the model to
please the reward, not to answer. ``correctness`` therefore extracts the final answer with the
same extractors and compares with the same :func:`shoestring.eval.answers.is_correct` as
``shoestring bench`` ("1,234" == "1234.00", "$5" == "5", fractions exact).

The seed project's rewards counted keywords, which a model satisfies without solving anything;
here ``format`` (is a final-answer line present?) is only a small shaping term next to
correctness.

Every reward has TRL's signature: ``fn(prompts, completions, **kwargs) -> list[float | None]``
where ``kwargs`` hold ``completion_ids`` and every dataset column (one value per completion).
``None`` means "not scorable by this function" and is excluded from the group baseline, as TRL
does.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from shoestring.errors import UserError
from shoestring.eval.answers import (
    AnswerFormatError,
    extract_answer_is,
    extract_boxed,
    extract_strict,
    is_correct,
    normalize_number,
    parse_gold,
)

RewardFn = Callable[..., list]

# Extractors are tried in order (see extract_final). The bare last number (lm-eval's flexible
# filter) is deliberately not used: rewarding any trailing number rewards guessing.


_HASH_LINE = re.compile(r"####[ \t]*([^\n]*)")


def extract_hash_line(completion: str) -> str | None:
    """The number on the first ``####`` line through the full normaliser ("#### $1,234.00",
    "#### \u22123"), where lm-eval's strict regex only accepts bare digits."""
    m = _HASH_LINE.search(completion)
    return normalize_number(m.group(1)) if m else None


def extract_final(completion: str) -> str | None:
    """The completion's final answer, canonical (None when it states none).

    Order: lm-eval's strict ``#### N``, the same line read by the bench's normaliser, a boxed
    answer, "the answer is N".
    """
    for fn in (extract_strict, extract_hash_line, extract_boxed, extract_answer_is):
        pred = fn(completion)
        if pred is not None:
            return pred
    return None


def _gold(answer: Any) -> str | None:
    if answer is None:
        return None
    text = str(answer)
    try:
        return parse_gold(text)
    except AnswerFormatError:
        # a bare number as the answer column is fine too
        return normalize_number(text)


def correctness(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list:
    """1.0 when the completion's final answer equals the gold ``#### N``, else 0.0.

    Needs the ``answer`` column; a row without a gold answer gets ``None`` (not scorable).
    """
    answers = kwargs.get("answer")
    if answers is None:
        raise UserError("the correctness reward needs an 'answer' column in the dataset")
    out: list[float | None] = []
    for completion, answer in zip(completions, answers, strict=True):
        gold = _gold(answer)
        if gold is None:
            out.append(None)
            continue
        out.append(1.0 if is_correct(extract_final(completion), gold) else 0.0)
    return out


def format_reward(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list:
    """1.0 when the completion states a final answer (a ``#### N`` line, a boxed number or
    "the answer is N"), else 0.0. Meant as a small shaping weight next to correctness."""
    return [1.0 if extract_final(c) is not None else 0.0 for c in completions]


BUILTIN: dict[str, RewardFn] = {"correctness": correctness, "format": format_reward}
DEFAULT_WEIGHTS: dict[str, float] = {"correctness": 1.0, "format": 0.1}


def load_reward(name: str) -> RewardFn:
    """A built-in reward by name, or a user function from ``module:function``."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise UserError(
            f"unknown reward {name!r}; use one of {', '.join(BUILTIN)} or module:function "
            "(a Python function with TRL's reward signature)"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import reward module {module_name!r} ({exc}); put it on PYTHONPATH"
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UserError(f"{module_name} has no callable {attr!r} for reward {name!r}")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not has_var_kw or "completions" not in params:
        raise UserError(
            f"reward {name!r} must accept (prompts, completions, **kwargs) like a TRL reward "
            f"function; its signature is {inspect.signature(fn)}"
        )
    return fn


def reward_weights(names: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """Explicit weights, or the defaults (correctness 1.0, format 0.1, user rewards 1.0)."""
    if weights is not None:
        return [float(w) for w in weights]
    return [DEFAULT_WEIGHTS.get(n, 1.0) for n in names]


def reward_label(name: str) -> str:
    """Short name for logs and metrics (``pkg.mod:fn`` -> ``fn``)."""
    return name.rpartition(":")[2] if ":" in name else name


def score(
    fns: Sequence[RewardFn],
    prompts: Sequence[str],
    completions: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    columns: dict[str, Sequence[Any]],
) -> list[list[float]]:
    """Per-function scores ``[func][completion]`` (``None`` becomes NaN), checked for length."""
    out = []
    for fn in fns:
        values = fn(
            prompts=list(prompts),
            completions=list(completions),
            completion_ids=[list(c) for c in completion_ids],
            **{k: list(v) for k, v in columns.items()},
        )
        if len(values) != len(completions):
            raise UserError(
                f"reward {getattr(fn, '__name__', fn)} returned {len(values)} values for "
                f"{len(completions)} completions"
            )
        out.append([float("nan") if v is None else float(v) for v in values])
    return out


__all__ = [
    "BUILTIN",
    "correctness",
    "extract_final",
    "format_reward",
    "load_reward",
    "reward_label",
    "reward_weights",
    "score",
]
