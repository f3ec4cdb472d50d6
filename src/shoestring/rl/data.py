"""Prompts for GRPO: GSM8K JSONL or the synthetic math corpus by difficulty level, encoded
under the run's scoring protocol, and the order in which training visits them.

A task is a list of dicts with ``question``, ``answer`` (gold text ending ``#### N``) and
``solution`` (the final number alone, the column TRL's math rewards such as
``trl.rewards.accuracy_reward`` read) plus any extra columns, which reach reward functions as
keyword arguments (TRL passes dataset columns the same way).

Synthetic train and test splits must never share a question, whatever sizes are asked for, or
a held-out accuracy would reward memorising training prompts. A problem's split is therefore a
function of its question text alone (a stable hash bucket), not of its position in a stream:
``train`` and ``test`` drawn with any ``n`` and any seed are disjoint.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.data.answers import parse_gold
from shoestring.data.gsm8k import load_gsm8k
from shoestring.data.root import data_root_candidates, find_dataset
from shoestring.data.synthetic import iter_problems
from shoestring.errors import UserError
from shoestring.models.context import fit_prompts, no_room_reason, tokenizing_long_prompts
from shoestring.rl.config import parse_slice
from shoestring.scoring.protocols import Protocol

DEFAULT_SYNTHETIC_SIZE = 5000
TEST_BUCKETS = 10  # 1 in 10 synthetic questions belongs to the test split
SPLITS = ("train", "test")


def synthetic_split_of(question: str) -> str:
    """``'test'`` for one question in ``TEST_BUCKETS`` (stable across runs and machines)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return "test" if digest[0] % TEST_BUCKETS == 0 else "train"


def _gsm8k_dir() -> Path:
    """``gsm8k`` under the data root (:mod:`shoestring.data.root`), never the current dir."""
    found = find_dataset("gsm8k", "train.jsonl")
    if found is not None:
        return found
    tried = "; ".join(f"{root / 'gsm8k'} ({why})" for root, why in data_root_candidates())
    raise UserError(
        f"dataset 'gsm8k' looks for gsm8k/train.jsonl under the data root and found none "
        f"(tried {tried}); set SHOESTRING_DATA to the directory holding gsm8k/, or pass "
        "dataset=gsm8k:PATH with a GSM8K JSONL file or directory"
    )


def _gsm8k_target(arg: str) -> Path:
    """What ``gsm8k:PATH`` names (a file or a folder), or the data root's ``gsm8k/``."""
    return Path(arg) if arg else _gsm8k_dir()


def data_source(spec: str, split: str = "train") -> dict[str, Any]:
    """Where ``spec``'s ``split`` comes from, for ``summary.json``: the absolute file GSM8K
    problems are read from (a folder's ``{split}.jsonl``), or ``path: None`` for synthetic
    problems, which are generated. Recorded so a run can be traced to its data, whatever
    the data root was on the machine that ran it."""
    kind, _, arg = spec.partition(":")
    if kind == "gsm8k":
        target = _gsm8k_target(arg)
        file = target / f"{split}.jsonl" if target.is_dir() else target
        return {"dataset": spec, "split": split, "path": str(file.resolve())}
    return {"dataset": spec, "split": split, "path": None, "generated": "shoestring.data.synthetic"}


def _synthetic(level: int | None, split: str, seed: int, n: int | None, exclude: set[str]) -> list:
    want = n or DEFAULT_SYNTHETIC_SIZE
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    # the test split keeps 1/TEST_BUCKETS of the stream; bound the stream so a tiny problem
    # space ends with a clear error instead of looping
    stream_seed = seed if split == "train" else seed + 7919
    for p in iter_problems(want * TEST_BUCKETS * 40 + 1000, level, stream_seed):
        q = p["question"]
        if q in seen or q in exclude or synthetic_split_of(q) != split:
            continue
        seen.add(q)
        out.append(p)
        if len(out) == want:
            return out
    raise UserError(
        f"could only draw {len(out)} distinct synthetic level-{level} {split} problems of "
        f"{want}; ask for fewer (dataset_size)"
    )


def load_task(
    spec: str,
    split: str = "train",
    slice: str | None = None,  # noqa: A002 - the config field's name
    seed: int = 0,
    n: int | None = None,
    exclude: Iterable[str] = (),
    on_warning: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Problems for ``spec`` (``synthetic:LEVEL`` | ``gsm8k`` | ``gsm8k:PATH``).

    ``on_warning`` receives every skipped bad line of a GSM8K file (``file:line: reason``).

    ``slice`` ('START:END') selects rows after loading, then ``n`` keeps the first N (for
    synthetic data ``n`` is the number generated, default 5000). ``exclude`` drops questions
    (e.g. a pretraining corpus) so a held-out set is really held out.
    """
    if split not in SPLITS:
        raise UserError(f"split={split!r}; use one of {', '.join(SPLITS)}")
    excluded = set(exclude)
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        level: int | None
        if arg in ("", "mixed", "all"):
            level = None
        else:
            try:
                level = int(arg)
            except ValueError:
                raise UserError(f"dataset={spec!r}: use synthetic:1, :2, :3 or :mixed") from None
            if level not in (1, 2, 3):
                raise UserError(f"dataset={spec!r}: synthetic levels are 1, 2 and 3")
        rows = _synthetic(level, split, seed, n, excluded)
        if slice is not None:
            a, b = parse_slice(slice)
            rows = rows[a:b]
        return [{**r, "solution": parse_gold(r["answer"])} for r in rows]
    if kind == "gsm8k":
        problems = load_gsm8k(_gsm8k_target(arg), split=split, on_warning=on_warning)
        rows = [
            {"question": p.question, "answer": p.answer, "solution": p.gold, "idx": p.idx}
            for p in problems
            if p.question not in excluded
        ]
        if slice is not None:
            a, b = parse_slice(slice)
            rows = rows[a:b]
        if n:
            rows = rows[:n]
        if not rows:
            raise UserError(f"dataset={spec!r} slice={slice!r} selects no problems")
        return rows
    raise UserError(f"unknown dataset {spec!r}; use synthetic:LEVEL, gsm8k or gsm8k:PATH")


@dataclass
class PromptSet:
    """The training prompts of a run: the problems, their text under the protocol, their ids.

    ``ids`` keep only the last ``max_prompt_length`` tokens of a longer prompt (``cut`` counts
    those), and then only as many as the model's context leaves room for next to
    ``max_completion_length`` (``context_cut`` counts those): the context policy of
    :mod:`shoestring.models.context`, left truncation as lm-eval does it, decided before the
    first forward pass so a long question never crashes a rollout. ``columns`` are the dataset
    columns a reward function receives as keyword arguments. ``messages`` are the prompts as
    chat messages when the protocol asks through the chat template (TRL's conversational
    prompts), else None.
    """

    rows: list[dict[str, Any]]
    texts: list[str]
    ids: list[list[int]]
    columns: list[str]
    cut: int
    messages: list[list[dict[str, str]]] | None = None
    context_cut: int = 0
    context_limit: int | None = None
    context_budget: int | None = None

    def messages_by_text(self) -> dict[str, list[dict[str, str]]] | None:
        """Prompt text -> its chat messages (for conversational rewards), or None."""
        if self.messages is None:
            return None
        return dict(zip(self.texts, self.messages, strict=True))

    @classmethod
    def encode(
        cls,
        rows: list[dict[str, Any]],
        tokenizer: Any,
        protocol: Protocol,
        max_prompt_length: int | None,
        context: int | None = None,
        max_completion_length: int = 0,
    ) -> PromptSet:
        """Prompt each question as ``protocol`` asks it and tokenize it as the protocol says
        (BOS for a plain layout, none for a chat template, which carries its own); then fit it
        to ``max_prompt_length`` and to ``context`` (the model's limit, None = unknown) with
        room for ``max_completion_length`` generated tokens."""
        texts = [protocol.prompt(r["question"], tokenizer) for r in rows]
        with tokenizing_long_prompts():  # fitted below, so the tokenizer's warning is false
            enc = protocol.encode(tokenizer, texts)  # the protocol's BOS rule, as bench
        limit = max_prompt_length
        ids = [list(x)[-limit:] if limit else list(x) for x in enc]
        cut = sum(1 for x in enc if limit and len(x) > limit)
        reason = no_room_reason(context, max_completion_length)
        if reason is not None:
            raise UserError(reason.replace("max_new_tokens", "max_completion_length"))
        fit = fit_prompts(ids, context, max_completion_length)  # left truncation, never refusal
        columns = sorted({k for r in rows for k in r if k != "ops"})
        messages = None
        if protocol.is_chat:  # the turns Protocol.prompt renders through the template
            messages = [protocol.messages(r["question"]) for r in rows]
        kept = [x for x in fit.ids if x is not None]
        return cls(rows, texts, kept, columns, cut, messages, fit.truncated, context, fit.budget)

    def cut_warnings(self, max_prompt_length: int | None) -> list[str]:
        """What the run's warnings say about prompts that lost their start, and why."""
        out = []
        if self.cut:
            out.append(
                f"{self.cut} of {len(self.ids)} prompts are longer than max_prompt_length="
                f"{max_prompt_length} and keep only their last {max_prompt_length} tokens (the "
                "start of the question is lost)"
            )
        if self.context_cut:
            out.append(
                f"{self.context_cut} of {len(self.ids)} prompts do not fit the model's context of "
                f"{self.context_limit} tokens next to max_completion_length and keep only their "
                f"last {self.context_budget} tokens (left truncation, as lm-eval does)"
            )
        return out

    def summary(self) -> dict[str, Any]:
        """The prompt counts ``summary.json`` records (``prompts``)."""
        return {
            "n": len(self.ids),
            "cut_by_max_prompt_length": self.cut,
            "cut_by_context": self.context_cut,
            "context_limit": self.context_limit,
            "prompt_budget": self.context_budget,
        }


def prompt_indices(gen_index: int, n: int, per_step: int, seed: int) -> list[int]:
    """The prompts of generation batch ``gen_index``: consecutive slices of per-epoch shuffles
    of ``n`` prompts (seeded by the epoch), so the order is a function of the index alone and
    a resumed run draws exactly the prompts the interrupted one would have."""
    out: list[int] = []
    pos = gen_index * per_step
    while len(out) < per_step:
        epoch, offset = divmod(pos, n)
        perm = list(range(n))
        random.Random(seed * 1000 + epoch).shuffle(perm)
        take = min(per_step - len(out), n - offset)
        out.extend(perm[offset : offset + take])
        pos += take
    return out


__all__ = ["PromptSet", "data_source", "load_task", "prompt_indices", "synthetic_split_of"]
