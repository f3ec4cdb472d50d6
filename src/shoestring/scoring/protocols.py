"""Scoring protocols as data: how a problem is asked, when an answer ends, what counts as right.

Why this module exists: an accuracy is a property of a model *and* a protocol. If ``bench``,
GRPO's held-out evaluation, progressive's stage gates and quickstart each built prompts and
extracted answers their own way, one model would get different numbers from different
commands. So every command names a :class:`Protocol` from :data:`PROTOCOLS` (like an
lm-evaluation-harness task file declares prompt, stop strings, filters and metric), scores
through :mod:`shoestring.scoring.scoring`, and records ``protocol.to_dict()`` in its run
directory; ``compare`` flags accuracies scored under different protocols.

This module is one idea: the protocol record and the table of every protocol, kept together
so a reader sees every field a score depends on next to the values each protocol gives it.

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
``lm-eval-cot-8shot``, ``lm-eval-cot-0shot``
    lm-eval's ``gsm8k_cot`` (its 8 fixed exemplars, :mod:`shoestring.scoring.exemplars`) and
    ``gsm8k_cot_zeroshot``: "Q: ...\\nA:" prompts, stop at "Q:", ``strict`` = "The answer is
    N." as lm-eval's regex reads it.
``lm-eval-5shot-chat``, ``lm-eval-cot-8shot-chat``, ``lm-eval-cot-0shot-chat``
    The three tasks under lm-eval's ``--apply_chat_template`` (few-shot as multi-turn): each
    shot a user and an assistant turn of the model's chat template.
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
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from shoestring.data.answers import EXTRACTORS, extract_all, is_correct
from shoestring.data.gsm8k import LM_EVAL_FEWSHOT, LM_EVAL_FEWSHOT_SEED, Problem
from shoestring.errors import UserError
from shoestring.scoring import lm_eval_rules
from shoestring.scoring.exemplars import EXEMPLARS

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

    ``style`` is ``template`` (``template.format(question=...)``), ``fewshot`` (``n_shots``
    worked examples rendered with ``template`` + " " + answer, joined by a blank line, then the
    problem), ``chat`` (``instruction + question`` as the user turn of the tokenizer's chat
    template) or ``chat-multiturn`` (lm-eval's ``--apply_chat_template --fewshot_as_multiturn``:
    each shot a user turn ``template.format(question=...)`` and an assistant turn with its
    answer, then the problem's user turn and the generation prompt). Shots come from the
    caller's per-problem draw, else the fixed ``exemplars`` set (lm-eval's ``first_n``), else
    lm-eval's first draw. ``primary`` names the extractor that decides correctness; under the
    ``lm-eval`` matcher ``strict`` and ``flexible`` are lm-eval's regex filters
    ``strict_pattern`` and ``flexible_pattern``, judged against lm-eval's ``reference`` of the
    answer field. ``bos_check``: as lm-eval's HF backend, a prompt whose text already starts
    with the BOS token gets no special tokens (otherwise ``add_special_tokens`` decides).
    """

    name: str
    description: str
    style: Literal["template", "fewshot", "chat", "chat-multiturn"]
    template: str = "Question: {question}\nAnswer:"
    instruction: str = ""
    n_shots: int = 0
    stop_strings: tuple[str, ...] = ()
    add_special_tokens: bool = True
    primary: str = "strict"
    matcher: Literal["numeric", "lm-eval"] = "numeric"
    fewshot_sampler: Literal["", "lm-eval", "first_n"] = ""
    truncation: Literal["none", "left"] = "none"
    metric: str = "numeric exact match of the primary extractor's answer (answers.is_correct)"
    # fields added after run directories first recorded keys: to_dict() leaves them out at
    # their defaults (_LATER_FIELDS), so the keys of the protocols above them stay as recorded
    exemplars: str = ""
    strict_pattern: str = lm_eval_rules.STRICT_PATTERN
    flexible_pattern: str = lm_eval_rules.FLEXIBLE_PATTERN
    reference: Literal["answer", "after-hashes"] = "answer"
    bos_check: bool = False

    @property
    def is_chat(self) -> bool:
        """Whether the prompt is rendered through the tokenizer's chat template."""
        return self.style in ("chat", "chat-multiturn")

    # -- asking
    def shots(self, fewshot: Sequence[Problem] | None = None) -> Sequence[Problem]:
        """The worked examples before a problem: ``fewshot`` (a per-problem draw) if given,
        else the first ``n_shots`` of the fixed ``exemplars``, else of lm-eval's first draw."""
        if fewshot is not None:
            return fewshot
        pool = EXEMPLARS[self.exemplars] if self.exemplars else LM_EVAL_FEWSHOT
        return pool[: self.n_shots]

    def prompt(
        self, question: str, tokenizer: Any = None, fewshot: Sequence[Problem] | None = None
    ) -> str:
        """The prompt text for one question (encode it with :meth:`encode`)."""
        if self.style == "template":
            return self.template.format(question=question)
        if self.style == "fewshot":
            head = "".join(
                self.template.format(question=s.question) + f" {s.answer}\n\n"
                for s in self.shots(fewshot)
            )
            return head + self.template.format(question=question)
        if tokenizer is None or not has_chat_template(tokenizer):
            raise UserError(
                f"protocol {self.name!r} needs a tokenizer with a chat template; this model has "
                "none. Use protocol plain or qa (zero-shot) or lm-eval-5shot (few-shot)."
            )
        return tokenizer.apply_chat_template(
            self.messages(question, fewshot), tokenize=False, add_generation_prompt=True
        )

    def messages(
        self, question: str, fewshot: Sequence[Problem] | None = None
    ) -> list[dict[str, str]]:
        """The chat turns a chat protocol asks in (TRL's conversational prompt form)."""
        if self.style != "chat-multiturn":
            return [{"role": "user", "content": self.instruction + question}]
        turns: list[dict[str, str]] = []
        for shot in self.shots(fewshot):
            turns.append({"role": "user", "content": self.template.format(question=shot.question)})
            turns.append({"role": "assistant", "content": shot.answer})
        turns.append({"role": "user", "content": self.template.format(question=question)})
        return turns

    def encode(self, tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of prompt texts under this protocol's special-token rule."""
        if not self.bos_check:
            enc = tokenizer(list(texts), add_special_tokens=self.add_special_tokens)
            return [list(x) for x in enc["input_ids"]]
        return [
            list(
                tokenizer(t, add_special_tokens=lm_eval_rules.adds_special_tokens(t, tokenizer))[
                    "input_ids"
                ]
            )
            for t in texts
        ]

    # -- judging
    def _lm_eval_filter(self, name: str, response: str) -> str | None:
        pattern = self.strict_pattern if name == "strict" else self.flexible_pattern
        # strict-match takes the first match, flexible-extract the last
        return lm_eval_rules.regex_filter(response, pattern, 0 if name == "strict" else -1)

    def extract(self, response: str) -> str | None:
        """The answer the primary extractor reads in ``response``: canonical, or lm-eval's
        filter text under the ``lm-eval`` matcher; None when there is none."""
        if self.matcher == "lm-eval" and self.primary in _LM_EVAL_FILTERS:
            return self._lm_eval_filter(self.primary, response)
        return EXTRACTORS[self.primary](response)

    def score(self, response: str, gold: str) -> Scored:
        """Every extractor's answer and correctness; ``ok`` is the primary extractor's."""
        extracted = extract_all(response)
        correct = {name: is_correct(pred, gold) for name, pred in extracted.items()}
        if self.matcher == "lm-eval":
            ref = lm_eval_rules.reference(gold, self.reference)
            # lm-eval's own filter text and exact match replace the numeric ones it defines
            for name in _LM_EVAL_FILTERS:
                extracted[name] = self._lm_eval_filter(name, response)
                correct[name] = lm_eval_rules.exact_match(extracted[name], ref)
        return Scored(extracted, correct, extracted[self.primary], correct[self.primary])

    def judge(self, response: str, gold: str) -> bool:
        """Whether ``response`` is right under this protocol (the primary extractor only)."""
        # the same verdict as score(...).ok, without running every extractor (a reward per
        # completion calls this)
        if self.matcher == "lm-eval" and self.primary in _LM_EVAL_FILTERS:
            ref = lm_eval_rules.reference(gold, self.reference)
            return lm_eval_rules.exact_match(self.extract(response), ref)
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
        for name, default in _LATER_FIELDS.items():
            if out[name] == default:
                del out[name]
        if self.n_shots and self.style in ("fewshot", "chat-multiturn"):
            first = [s.idx for s in self.shots()]
            if self.fewshot_sampler == "lm-eval":
                out["fewshot"] = {
                    "sampler": "lm-eval default: random.Random(seed).sample(train, n_shots) "
                    "per test document, in test-file order",
                    "seed": LM_EVAL_FEWSHOT_SEED,
                    "pool": "train split",
                    "first_draw": first,
                }
            elif self.fewshot_sampler == "first_n":
                out["fewshot"] = {
                    "sampler": "lm-eval first_n: the task's fixed exemplars in order",
                    "exemplars": self.exemplars,
                    "indices": first,
                }
            else:
                out["fewshot"] = first
        return out

    def key(self) -> str:
        """A short identity of everything that decides a score (for comparing run dirs)."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return f"{self.name}@{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


#: Protocol fields added after keys were first recorded, with the defaults to_dict omits.
_LATER_FIELDS: dict[str, Any] = {
    f.name: f.default
    for f in fields(Protocol)
    if f.name in ("exemplars", "strict_pattern", "flexible_pattern", "reference", "bos_check")
}

_LM_EVAL_METRIC = (
    "lm-eval exact_match (regexes_to_ignore ',', '$', '(?s).*#### ', '.$'; "
    "ignore_case) of lm-eval's strict-match filter output"
)
_GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")
_COT_STRICT = lm_eval_rules.COT_STRICT_PATTERN

#: lm-eval's filters by the extractor name they correspond to ("strict-match" is strict).
_LM_EVAL_FILTERS = ("strict", "flexible")


def _lm_eval_variants() -> tuple[Protocol, ...]:
    """lm-eval 0.4.13's other GSM8K tasks (gsm8k_cot, gsm8k_cot_zeroshot) and the three tasks
    under ``--apply_chat_template`` (few-shot as multi-turn, lm-eval's default with it)."""
    common: dict[str, Any] = dict(
        add_special_tokens=True,  # the tokenizer's default, as lm-eval's HF backend
        bos_check=True,
        primary="strict",
        matcher="lm-eval",
        truncation="left",
        metric=_LM_EVAL_METRIC,
    )
    cot: dict[str, Any] = dict(
        common, stop_strings=("Q:", "</s>", "<|im_end|>"), strict_pattern=_COT_STRICT
    )
    cot_8shot: dict[str, Any] = dict(
        cot,
        template="Q: {question}\nA:",
        n_shots=8,
        fewshot_sampler="first_n",
        exemplars="gsm8k-cot",
        reference="after-hashes",
    )
    cot_0shot: dict[str, Any] = dict(cot, template="Q: {question}\nA: Let's think step by step.")
    five_shot: dict[str, Any] = dict(
        common, stop_strings=_GSM8K_STOPS, n_shots=5, fewshot_sampler="lm-eval"
    )
    return (
        Protocol(
            name="lm-eval-cot-8shot",
            description="lm-evaluation-harness gsm8k_cot: the 8 fixed chain-of-thought "
            "exemplars, 'The answer is N.' strict-match",
            style="fewshot",
            **cot_8shot,
        ),
        Protocol(
            name="lm-eval-cot-0shot",
            description="lm-evaluation-harness gsm8k_cot_zeroshot: \"Q: ...\\nA: Let's think "
            "step by step.\", 'The answer is N.' strict-match",
            style="template",
            **cot_0shot,
        ),
        Protocol(
            name="lm-eval-5shot-chat",
            description="lm-evaluation-harness gsm8k --apply_chat_template: lm-eval-5shot's "
            "shots as chat turns",
            style="chat-multiturn",
            **five_shot,
        ),
        Protocol(
            name="lm-eval-cot-8shot-chat",
            description="lm-evaluation-harness gsm8k_cot --apply_chat_template: the 8 "
            "exemplars as chat turns",
            style="chat-multiturn",
            **cot_8shot,
        ),
        Protocol(
            name="lm-eval-cot-0shot-chat",
            description="lm-evaluation-harness gsm8k_cot_zeroshot --apply_chat_template: the "
            "question as one user turn",
            style="chat-multiturn",
            **cot_0shot,
        ),
    )


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
            metric=_LM_EVAL_METRIC,
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
        *_lm_eval_variants(),
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
