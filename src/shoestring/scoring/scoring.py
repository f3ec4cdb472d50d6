"""The one scoring path: a model answers problems under a protocol, greedy, and is judged.

``bench``, GRPO's held-out evaluation, progressive's stage gates and quickstart all call
:func:`score_model` (bench through its ``on_result`` callback, to stream records to disk as
they finish), so the same model on the same problems under the same protocol gets the same
per-problem correctness from every command. :func:`render_prompts` is where a protocol's prompt
becomes the tokens the model sees (per-problem few-shot draws, lm-eval's left truncation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shoestring.data.gsm8k import Problem
from shoestring.engine import Engine, EngineOptions, GenerationResult, Sampling
from shoestring.errors import UserError
from shoestring.models.context import context_limit, fit_prompts, has_learned_positions
from shoestring.scoring.lm_eval_rules import left_truncate, prompt_budget
from shoestring.scoring.protocols import Protocol, Scored
from shoestring.util.stats import wilson_interval

__all__ = [
    "ProblemScore",
    "RenderedPrompts",
    "accuracy_summary",
    "render_prompts",
    "sampling_for",
    "score_model",
]


@dataclass(frozen=True)
class ProblemScore:
    """One problem's response and verdict under a protocol (``index`` = position in the list)."""

    index: int
    question: str
    gold: str
    result: GenerationResult
    scored: Scored

    @classmethod
    def judge(
        cls, index: int, question: str, gold: str, result: GenerationResult, protocol: Protocol
    ) -> ProblemScore:
        """``result`` judged under ``protocol`` against ``gold``: the one verdict every
        command records."""
        return cls(index, question, gold, result, protocol.score(result.text, gold))

    @property
    def ok(self) -> bool:
        return self.scored.ok

    def record(self) -> dict[str, Any]:
        """The JSON line a run directory keeps per problem."""
        return {
            "index": self.index,
            "question": self.question,
            "gold": self.gold,
            "response": self.result.text,
            "pred": self.scored.pred,
            "correct": self.scored.ok,
            "extracted": self.scored.extracted,
            "tokens": self.result.n_tokens,
            "finish_reason": self.result.finish_reason,
        }


def sampling_for(protocol: Protocol, max_new_tokens: int) -> Sampling:
    """Greedy decoding with the protocol's stop strings (its special-token rule applies where
    :func:`render_prompts` tokenises)."""
    return Sampling(max_new_tokens=max_new_tokens, stop_strings=list(protocol.stop_strings)).check()


@dataclass(frozen=True)
class RenderedPrompts:
    """Each problem's prompt as the model sees it: token ids (protocol's special-token rule
    applied, truncated where the protocol truncates), how many were cut, and the prompt texts
    as rendered (before truncation: what lm-eval's ``prompt_hash`` hashes)."""

    ids: list[list[int]]
    truncated: int
    budget: int | None  # prompt tokens kept at most (None: the protocol never truncates)
    texts: list[str] = field(default_factory=list)


def render_prompts(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    protocol: Protocol,
    *,
    max_new_tokens: int,
    fewshot: Sequence[Sequence[Problem]] | None = None,
    fit_context: bool = True,
) -> RenderedPrompts:
    """Prompt tokens for every question under ``protocol``.

    ``fewshot[i]`` are question ``i``'s worked examples (a few-shot protocol's per-problem
    draw); without them a few-shot protocol uses its fixed first draw. A ``left``-truncating
    protocol keeps each prompt's last (context - ``max_new_tokens``) tokens, the context
    resolved as lm-eval resolves it (:func:`shoestring.scoring.lm_eval_rules.context_length`);
    any other protocol's prompts are fitted by the context policy
    (:mod:`shoestring.models.context`). ``fit_context=False`` returns every prompt whole, for a
    caller that fits, counts and hashes them itself (bench).
    """
    if fewshot is not None and len(fewshot) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(fewshot)} few-shot draws")
    texts = [
        protocol.prompt(q, tokenizer, None if fewshot is None else fewshot[i])
        for i, q in enumerate(questions)
    ]
    ids = protocol.encode(tokenizer, texts)
    if not fit_context:  # the caller fits (and counts) them itself
        return RenderedPrompts(ids, 0, None, texts)
    if protocol.truncation != "left":
        # the context policy (models/context.py): a prompt past the context is cut from the
        # left, never a crash deep in the forward pass
        fit = fit_prompts(
            ids,
            context_limit(model, tokenizer),
            max_new_tokens,
            extrapolates=not has_learned_positions(model),
        )
        if fit.no_room is not None:
            raise UserError(f"{fit.no_room} (the evaluation's max_new_tokens)")
        return RenderedPrompts(fit.kept_ids(), fit.truncated, fit.budget, texts)
    budget = prompt_budget(getattr(model, "config", None), tokenizer, max_new_tokens)
    cut = sum(1 for x in ids if len(x) > budget)
    return RenderedPrompts([left_truncate(x, budget) for x in ids], cut, budget, texts)


def score_model(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    golds: Sequence[str],
    protocol: Protocol,
    *,
    max_new_tokens: int,
    batch_size: int = 0,
    progress: bool = True,
    desc: str = "score",
    on_result: Callable[[ProblemScore], None] | None = None,
    sampling: Sampling | None = None,
    options: EngineOptions | None = None,
    fewshot: Sequence[Sequence[Problem]] | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    streams: Sequence[int] | None = None,
) -> list[ProblemScore]:
    """Answer every question greedily under ``protocol`` and judge it against its gold answer.

    ``on_result`` is called as each problem finishes (in completion order), so a caller can
    persist results of a long run before it ends. ``sampling`` replaces the protocol's
    default decoding settings (it must stay greedy for a score to be reproducible);
    ``options`` are the engine's (``batch_size``, when set, overrides theirs).
    ``fewshot[i]`` are question ``i``'s shots under a few-shot protocol (see
    :func:`render_prompts`). ``prompt_ids`` are the prompts already rendered and fitted
    (bench fits, counts and hashes them itself), one per question. ``streams[i]`` is question
    ``i``'s sampling stream (default: its position here); a caller that answers a subset (a
    resumed benchmark) passes each problem's own index, so a sampled answer does not depend on
    which other problems were still missing.
    """
    if len(questions) != len(golds):
        raise ValueError(f"{len(questions)} questions but {len(golds)} gold answers")
    cfg = sampling or sampling_for(protocol, max_new_tokens)
    options = options or EngineOptions()
    if batch_size:
        options = replace(options, batch_size=batch_size)
    if prompt_ids is not None:
        if len(prompt_ids) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(prompt_ids)} prompts")
        prompts = [list(x) for x in prompt_ids]
    else:
        prompts = render_prompts(
            model,
            tokenizer,
            questions,
            protocol,
            max_new_tokens=cfg.max_new_tokens,
            fewshot=fewshot,
        ).ids
    # the engine finishes problems out of order; each lands at its own index
    out: list[ProblemScore | None] = [None] * len(prompts)

    def judge(i: int, res: GenerationResult) -> None:
        item = ProblemScore.judge(i, questions[i], golds[i], res, protocol)
        out[i] = item
        if on_result is not None:
            on_result(item)

    engine = Engine(model, tokenizer, options)
    engine.generate(prompts, cfg, on_result=judge, progress=progress, desc=desc, streams=streams)
    return [x for x in out if x is not None]


def accuracy_summary(correct: Sequence[bool]) -> dict[str, Any]:
    """``correct, n, accuracy, ci_low, ci_high`` (95% Wilson) for a list of verdicts."""
    n, k = len(correct), sum(bool(c) for c in correct)
    lo, hi = wilson_interval(k, n)
    return {"correct": k, "n": n, "accuracy": k / n if n else None, "ci_low": lo, "ci_high": hi}
