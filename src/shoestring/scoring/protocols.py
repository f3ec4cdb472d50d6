"""Scoring protocols as data: how a problem is asked, when an answer ends, what counts as right.

Why this module exists: an accuracy is a property of a model *and* a protocol. If ``bench``,
GRPO's held-out evaluation, progressive's stage gates and quickstart each built prompts and
extracted answers their own way, one model would get different numbers from different
commands. So every command names a :class:`Protocol` from :data:`PROTOCOLS` (like an
lm-evaluation-harness task file declares prompt, stop strings, filters and metric), scores
through :mod:`shoestring.scoring.scoring`, and records ``protocol.to_dict()`` in its run
directory; ``compare`` flags accuracies scored under different protocols.

The protocols
-------------
``lm-eval-5shot``
    lm-evaluation-harness 0.4.13's ``gsm8k`` task, rule for rule: five "Question: ...\\nAnswer:
    <worked solution>" shots drawn *per problem* by lm-eval's sampler (``random.Random(1234)``
    shared across the run, one ``sample(train, 5)`` per test document in file order:
    :func:`shoestring.data.gsm8k.lm_eval_fewshot_for`), the tokenizer's default special tokens
    (as lm-eval's HF backend), the prompt left-truncated to the context minus
    ``max_new_tokens``, stop at "Question:"; correct when lm-eval's ``strict-match`` answer
    passes its ``exact_match`` (:mod:`shoestring.scoring.lm_eval_rules`), so ``#### 18.00`` is
    wrong for 18 as it is in lm-eval.
``gsm8k-5shot-numeric``
    The same prompts, judged by shoestring's numeric match (:func:`answers.is_correct`:
    ``#### 18.00`` = 18, ``0.50`` = ``.5``, a Unicode minus, 1e-4 relative tolerance). More
    lenient than lm-eval, so it has its own name: its numbers are not lm-eval's.
``chat-cot``
    Zero-shot chain of thought through the model's chat template; the instruction asks for a
    final "#### N" line, so correctness is ``strict``.
``plain``
    "Question: {q}\\nAnswer: Let's think step by step." for base models without a template; no
    answer format is asked for, so correctness is the last number (``flexible``).
``qa``
    "Question: {q}\\nAnswer:", the layout of shoestring's synthetic corpus and pretraining
    documents (quickstart, GRPO on a model without a chat template); the corpus teaches
    "#### N", so correctness is ``strict``.

Every extractor in :data:`shoestring.data.answers.EXTRACTORS` is run and recorded on every
response; the protocol's ``primary`` extractor is the one that decides "correct" - in a
bench table, a GRPO evaluation, a stage gate and GRPO's correctness reward alike. Under the
``lm-eval`` matcher, ``strict`` and ``flexible`` record lm-eval's own filter output (the raw
text it compares) and are judged by its exact match; ``answer-is`` and ``boxed`` (not lm-eval
filters) stay numeric.

Few-shot draws: lm-eval's shots depend on a problem's position in the test file, so only a
caller that knows it and has the train split (``bench``) passes each problem's draw
(``fewshot=``). Without one (GRPO's training prompts and held-out sets, stage gates), a
few-shot protocol uses lm-eval's first draw for every problem
(:data:`shoestring.data.gsm8k.LM_EVAL_FEWSHOT`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from shoestring.data.answers import EXTRACTORS, extract_all, is_correct
from shoestring.data.gsm8k import LM_EVAL_FEWSHOT, LM_EVAL_FEWSHOT_SEED, Problem
from shoestring.errors import UserError
from shoestring.scoring import lm_eval_rules

__all__ = [
    "CHAT_COT_INSTRUCTION",
    "PROTOCOLS",
    "Protocol",
    "Scored",
    "get_protocol",
    "has_chat_template",
    "resolve_protocol",
]

CHAT_COT_INSTRUCTION = (
    "Solve the following math word problem. Reason step by step, then give the final "
    'numeric answer on its own last line in the form "#### N".\n\n'
)

#: A fixed question used only to fingerprint a protocol's rendered prompt (a changed chat
#: template, instruction or shot text changes the fingerprint).
_PROBE_QUESTION = "PROBE QUESTION 1 + 2?"


@dataclass(frozen=True)
class Scored:
    """One response judged under a protocol: every extractor's answer, and the verdict."""

    extracted: dict[str, str | None]
    correct: dict[str, bool]
    pred: str | None
    ok: bool


@dataclass(frozen=True)
class Protocol:
    """How a problem is asked and judged; everything that decides a score, as data.

    ``style`` is ``template`` (``template.format(question=...)``), ``fewshot`` (``fewshot``
    worked examples rendered with ``template`` + " " + answer, joined by a blank line, then the
    problem) or ``chat`` (``instruction + question`` as the user turn of the tokenizer's chat
    template). ``primary`` names the extractor that decides correctness.
    """

    name: str
    description: str
    style: Literal["template", "fewshot", "chat"]
    template: str = "Question: {question}\nAnswer:"
    instruction: str = ""
    n_shots: int = 0
    stop_strings: tuple[str, ...] = ()
    add_special_tokens: bool = True
    primary: str = "strict"
    matcher: Literal["numeric", "lm-eval"] = "numeric"
    fewshot_sampler: Literal["", "lm-eval"] = ""
    truncation: Literal["none", "left"] = "none"
    metric: str = "numeric exact match of the primary extractor's answer (answers.is_correct)"

    # -- asking
    def prompt(
        self, question: str, tokenizer: Any = None, fewshot: Sequence[Problem] | None = None
    ) -> str:
        """The prompt text for one question (encode with ``add_special_tokens``)."""
        if self.style == "template":
            return self.template.format(question=question)
        if self.style == "fewshot":
            shots = LM_EVAL_FEWSHOT[: self.n_shots] if fewshot is None else fewshot
            head = "".join(
                self.template.format(question=s.question) + f" {s.answer}\n\n" for s in shots
            )
            return head + self.template.format(question=question)
        if tokenizer is None or not has_chat_template(tokenizer):
            raise UserError(
                f"protocol {self.name!r} needs a tokenizer with a chat template; this model has "
                "none. Use protocol plain or qa (zero-shot) or lm-eval-5shot (few-shot)."
            )
        return tokenizer.apply_chat_template(
            self.messages(question), tokenize=False, add_generation_prompt=True
        )

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat turn a ``chat`` protocol asks in (TRL's conversational prompt form)."""
        return [{"role": "user", "content": self.instruction + question}]

    # -- judging
    def extract(self, response: str) -> str | None:
        """The answer the primary extractor reads in ``response`` (canonical, or None)."""
        return EXTRACTORS[self.primary](response)

    def score(self, response: str, gold: str) -> Scored:
        """Every extractor's answer and correctness; ``ok`` is the primary extractor's."""
        extracted = extract_all(response)
        correct = {name: is_correct(pred, gold) for name, pred in extracted.items()}
        if self.matcher == "lm-eval":
            # lm-eval's own filter text and exact match replace the numeric ones it defines
            for name, fn in _LM_EVAL_FILTERS.items():
                extracted[name] = fn(response)
                correct[name] = lm_eval_rules.exact_match(extracted[name], gold)
        return Scored(extracted, correct, extracted[self.primary], correct[self.primary])

    def judge(self, response: str, gold: str) -> bool:
        """Whether ``response`` is right under this protocol (the primary extractor only)."""
        # the same verdict as score(...).ok, without running every extractor (a reward per
        # completion calls this)
        if self.matcher == "lm-eval" and self.primary in _LM_EVAL_FILTERS:
            return lm_eval_rules.exact_match(_LM_EVAL_FILTERS[self.primary](response), gold)
        return is_correct(self.extract(response), gold)

    # -- recording
    def prompt_fingerprint(self, tokenizer: Any = None) -> str:
        """Hash of the prompt a fixed probe question gets under this protocol and tokenizer."""
        text = self.prompt(_PROBE_QUESTION, tokenizer)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """What a run directory records (``summary.json["protocol"]``)."""
        out = asdict(self)
        out["stop_strings"] = list(self.stop_strings)
        if self.style == "fewshot":
            first = [s.idx for s in LM_EVAL_FEWSHOT[: self.n_shots]]
            if self.fewshot_sampler == "lm-eval":
                out["fewshot"] = {
                    "sampler": "lm-eval default: random.Random(seed).sample(train, n_shots) "
                    "per test document, in test-file order",
                    "seed": LM_EVAL_FEWSHOT_SEED,
                    "pool": "train split",
                    "first_draw": first,
                }
            else:
                out["fewshot"] = first
        return out

    def key(self) -> str:
        """A short identity of everything that decides a score (for comparing run dirs)."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return f"{self.name}@{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


#: lm-eval's gsm8k filters by the extractor name they correspond to.
_LM_EVAL_FILTERS = {
    "strict": lm_eval_rules.strict_match,
    "flexible": lm_eval_rules.flexible_extract,
}

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="lm-eval-5shot",
            description="lm-evaluation-harness gsm8k: per-problem 5-shot draw, strict-match, "
            "lm-eval's exact match",
            style="fewshot",
            n_shots=5,
            stop_strings=("Question:", "</s>", "<|im_end|>"),
            add_special_tokens=True,
            primary="strict",
            matcher="lm-eval",
            fewshot_sampler="lm-eval",
            truncation="left",
            metric="lm-eval exact_match (regexes_to_ignore ',', '$', '(?s).*#### ', '.$'; "
            "ignore_case) of lm-eval's strict-match filter output",
        ),
        Protocol(
            name="gsm8k-5shot-numeric",
            description="lm-eval-5shot's prompts, judged numerically (18.00 = 18; more lenient "
            "than lm-eval)",
            style="fewshot",
            n_shots=5,
            stop_strings=("Question:", "</s>", "<|im_end|>"),
            add_special_tokens=True,
            primary="strict",
            fewshot_sampler="lm-eval",
            truncation="left",
        ),
        Protocol(
            name="chat-cot",
            description="zero-shot chain of thought in the chat template, final '#### N' line",
            style="chat",
            instruction=CHAT_COT_INSTRUCTION,
            stop_strings=("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"),
            add_special_tokens=False,
            primary="strict",
        ),
        Protocol(
            name="plain",
            description="zero-shot 'Let's think step by step.' for base models, last number",
            style="template",
            template="Question: {question}\nAnswer: Let's think step by step.",
            stop_strings=("Question:", "</s>", "<|im_end|>"),
            add_special_tokens=True,
            primary="flexible",
        ),
        Protocol(
            name="qa",
            description="'Question: ...\\nAnswer:' as in shoestring's synthetic corpus, '#### N'",
            style="template",
            template="Question: {question}\nAnswer:",
            stop_strings=("Question:",),
            add_special_tokens=True,
            primary="strict",
        ),
    )
}


def has_chat_template(tokenizer: Any) -> bool:
    """True when a tokenizer carries a chat template (so ``chat-cot`` can be used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name names the nearest one."""
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    near = difflib.get_close_matches(name, list(PROTOCOLS), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise UserError(
        f"unknown scoring protocol {name!r}{hint}; choose one of {', '.join(PROTOCOLS)}"
    )


def resolve_protocol(name: str, tokenizer: Any, fallback: str = "plain") -> Protocol:
    """``auto`` = ``chat-cot`` for a tokenizer with a chat template, else ``fallback``."""
    if name == "auto":
        return PROTOCOLS["chat-cot" if has_chat_template(tokenizer) else fallback]
    return get_protocol(name)
