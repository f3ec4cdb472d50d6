"""Reward functions for GRPO: correctness, format, and user functions with TRL's signature.

Why the run's scoring protocol judges: a reward that disagrees with the benchmark teaches the
model to please the reward, not to answer. The built-in ``correctness`` and ``format`` rewards
are therefore made for a :class:`~shoestring.scoring.protocols.Protocol` by
:func:`builtin_rewards`, and read the answer with the protocol's primary extractor - the one
``shoestring bench``, GRPO's held-out evaluation and progressive's stage gates use for that
protocol - and judge it as they do (:meth:`~shoestring.scoring.protocols.Protocol.judge`: numeric
for most protocols, "1,234" == "1234.00"; lm-eval's exact match under lm-eval-5shot). For
``qa`` and ``chat-cot`` that extractor is lm-eval's strict ``#### N``: "the answer is 5" or a
boxed 5 earns nothing, because the benchmark would not count it either.

The seed project's rewards counted keywords, which a model satisfies without solving anything;
here ``format`` (does the primary extractor find an answer?) is only a small shaping term next
to correctness.

Every reward has TRL's signature: ``fn(prompts, completions, **kwargs) -> list[float | None]``
where ``kwargs`` hold ``completion_ids`` and every dataset column (one value per completion);
:mod:`shoestring.rl.reward_contract` adds the rest of TRL's contract (``trainer_state``,
``log_extra``/``log_metric``, conversational completions, async functions). ``None`` means "not
scorable by this function" and is excluded from the group baseline, as TRL does. TRL's own
reward functions load as ``trl:NAME`` (the names of TRL's ``trl grpo`` script) or
``trl.rewards:NAME``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shoestring.data.answers import AnswerFormatError, normalize_number, parse_gold
from shoestring.errors import UserError
from shoestring.rl.trl_keys import TRL_SCRIPT_REWARDS
from shoestring.scoring.protocols import Protocol

RewardFn = Callable[..., list]

BUILTIN_NAMES = ("correctness", "format")
DEFAULT_WEIGHTS: dict[str, float] = {"correctness": 1.0, "format": 0.1}


def _gold(answer: Any) -> str | None:
    if answer is None:
        return None
    text = str(answer)
    try:
        return parse_gold(text)
    except AnswerFormatError:
        # a bare number as the answer column is fine too
        return normalize_number(text)


def completion_text(completion: Any) -> str:
    """A completion's text: the string itself, or the contents of its messages when it is
    conversational (TRL's ``[{"role": "assistant", "content": ...}]``)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)


def builtin_rewards(protocol: Protocol) -> dict[str, RewardFn]:
    """The built-in rewards judged by ``protocol``'s primary extractor, by name."""

    def correctness(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list:
        """1.0 when the completion's answer (the protocol's extractor) equals the gold
        ``#### N``, else 0.0; ``None`` (not scorable) for a row without a gold answer."""
        answers = kwargs.get("answer")
        if answers is None:
            raise UserError("the correctness reward needs an 'answer' column in the dataset")
        out: list[float | None] = []
        for completion, answer in zip(completions, answers, strict=True):
            gold = _gold(answer)
            if gold is None:
                out.append(None)
                continue
            out.append(1.0 if protocol.judge(completion_text(completion), gold) else 0.0)
        return out

    def format_reward(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list:
        """1.0 when the protocol's extractor finds a final answer in the completion, else 0.0.
        Meant as a small shaping weight next to correctness."""
        return [
            1.0 if protocol.extract(completion_text(c)) is not None else 0.0 for c in completions
        ]

    return {"correctness": correctness, "format": format_reward}


def load_reward(name: str, protocol: Protocol) -> RewardFn:
    """A built-in reward by name (judged by ``protocol``), or :func:`user_reward`."""
    if name in BUILTIN_NAMES:
        return builtin_rewards(protocol)[name]
    return user_reward(name)


def check_rewards(names: Sequence[str]) -> None:
    """Resolve every reward that is not built in (import its module, find the function, check
    its signature) so that a bad name fails with the other config errors, before any model
    loads - not after minutes of loading."""
    for name in names:
        if name not in BUILTIN_NAMES:
            user_reward(name)


def user_reward(name: str) -> RewardFn:
    """``trl:NAME`` (TRL's script rewards) or a user function from ``module:function``.

    The module is imported as ``trl grpo`` imports it: with the working directory first on
    ``sys.path``, so ``my_rewards.py`` next to the config is found without ``PYTHONPATH``.
    """
    if name.startswith("trl:"):
        return trl_script_reward(name[4:])
    if ":" not in name:
        raise UserError(
            f"unknown reward {name!r}; use one of {', '.join(BUILTIN_NAMES)}, trl:NAME (TRL's "
            "rewards) or module:function (a Python function with TRL's reward signature)"
        )
    module_name, _, attr = name.partition(":")
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)  # as trl grpo does: the working directory comes first
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import reward module {module_name!r} for reward {name!r} ({exc}); it is "
            f"looked for in the working directory ({cwd}) and on PYTHONPATH - run from the "
            f"folder that holds {module_name.replace('.', '/')}.py or add that folder to "
            "PYTHONPATH"
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


def trl_script_reward(name: str) -> RewardFn:
    """A reward of TRL's ``trl grpo`` script by its registry name, built as that script builds
    it (``get_soft_overlong_punishment`` with max_completion_len=1280, soft_punish_cache=256)."""
    if name not in TRL_SCRIPT_REWARDS:
        raise UserError(f"unknown TRL reward trl:{name}; TRL's script knows {TRL_SCRIPT_REWARDS}")
    try:
        rewards = importlib.import_module("trl.rewards")
    except ImportError as exc:
        raise UserError(f"reward trl:{name} needs TRL: pip install trl ({exc})") from exc
    if name == "get_soft_overlong_punishment":
        return rewards.get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)
    return getattr(rewards, name)


def reward_weights(names: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """Explicit weights, or the defaults (correctness 1.0, format 0.1, user rewards 1.0)."""
    if weights is not None:
        return [float(w) for w in weights]
    return [DEFAULT_WEIGHTS.get(n, 1.0) for n in names]


def reward_label(name: str) -> str:
    """Short name for logs and metrics (``pkg.mod:fn`` or ``trl:fn`` -> ``fn``)."""
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
    "BUILTIN_NAMES",
    "builtin_rewards",
    "check_rewards",
    "completion_text",
    "load_reward",
    "reward_label",
    "reward_weights",
    "score",
    "trl_script_reward",
    "user_reward",
]
