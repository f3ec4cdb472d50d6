"""The one scoring path: a model answers problems under a protocol, greedy, and is judged.

``bench``, GRPO's held-out evaluation, progressive's stage gates and quickstart all call
:func:`score_model` (bench through its ``on_result`` callback, to stream records to disk as
they finish), so the same model on the same problems under the same protocol gets the same
per-problem correctness from every command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shoestring.eval.generation import GenerationResult, SamplingConfig, generate_all
from shoestring.eval.protocols import Protocol, Scored
from shoestring.eval.stats import wilson_interval

__all__ = ["ProblemScore", "accuracy_summary", "sampling_for", "score_model"]


@dataclass(frozen=True)
class ProblemScore:
    """One problem's response and verdict under a protocol (``index`` = position in the list)."""

    index: int
    question: str
    gold: str
    result: GenerationResult
    scored: Scored

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


def sampling_for(
    protocol: Protocol, max_new_tokens: int, batch_size: int = 0, **extra: Any
) -> SamplingConfig:
    """Greedy decoding with the protocol's stop strings and special-token rule."""
    return SamplingConfig(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_strings=list(protocol.stop_strings),
        add_special_tokens=protocol.add_special_tokens,
        **extra,
    ).check()


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
    sampling: SamplingConfig | None = None,
) -> list[ProblemScore]:
    """Answer every question greedily under ``protocol`` and judge it against its gold answer.

    ``on_result`` is called as each problem finishes (in completion order), so a caller can
    persist results of a long run before it ends. ``sampling`` replaces the protocol's
    default decoding settings (it must stay greedy for a score to be reproducible).
    """
    if len(questions) != len(golds):
        raise ValueError(f"{len(questions)} questions but {len(golds)} gold answers")
    cfg = sampling or sampling_for(protocol, max_new_tokens, batch_size)
    prompts = [protocol.prompt(q, tokenizer) for q in questions]
    out: list[ProblemScore | None] = [None] * len(prompts)

    def judge(i: int, res: GenerationResult) -> None:
        item = ProblemScore(i, questions[i], golds[i], res, protocol.score(res.text, golds[i]))
        out[i] = item
        if on_result is not None:
            on_result(item)

    generate_all(model, tokenizer, prompts, cfg, callback=judge, progress=progress, desc=desc)
    return [x for x in out if x is not None]


def accuracy_summary(correct: Sequence[bool]) -> dict[str, Any]:
    """``correct, n, accuracy, ci_low, ci_high`` (95% Wilson) for a list of verdicts."""
    n, k = len(correct), sum(bool(c) for c in correct)
    lo, hi = wilson_interval(k, n)
    return {"correct": k, "n": n, "accuracy": k / n if n else None, "ci_low": lo, "ci_high": hi}
