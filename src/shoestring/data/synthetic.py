"""Seeded grade-school arithmetic word problems in GSM8K's format.

Why synthetic problems: the quickstart, the tests and the progressive (curriculum) RL runs need
math data that is small, free of licences, exactly checkable and graded by difficulty. Each
problem is a dict ``{"question", "answer", "level", "template", "ops"}`` where ``answer`` is
written like GSM8K's: worked lines with calculator annotations
(``Tom buys 3 * 4 = <<3*4=12>>12 apples.``) and a final ``#### 12`` line, so the same reward
and benchmark code reads GSM8K and this data alike.

Levels:

1. one operation;
2. two to three operations;
3. four or more operations, with distractors (sentences holding numbers that the solution
   does not use), which is what makes GSM8K hard for small models.

Everything draws from one ``random.Random(seed)``; nothing touches global random state or
iterates a ``set``, so a seed gives the same problems on every machine and Python run. Numbers
are chosen so that every division is exact and every intermediate value is a non-negative
integer; :func:`shoestring.data.problem_engine.evaluate` recomputes each annotation so tests
(and users) can check that.

This module is the public face (generation and the corpus writer); the templates are data in
``templates_one_step.py``, ``templates_two_step.py`` and ``templates_multi_step.py``, built by
``problem_engine.py`` from the words in ``problem_words.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from shoestring.data import templates_multi_step, templates_one_step, templates_two_step
from shoestring.data.problem_engine import Ctx, Template, Work, fill
from shoestring.rundir.directory import atomic_open

__all__ = [
    "LEVELS",
    "generate_problems",
    "iter_problems",
    "problems_to_text",
    "write_corpus",
    "write_jsonl",
]

LEVELS = (1, 2, 3)

# level -> its templates, in the order a seed draws from
_TEMPLATES: dict[int, tuple[Template, ...]] = {
    1: templates_one_step.TEMPLATES,
    2: templates_two_step.TEMPLATES,
    3: templates_multi_step.TEMPLATES,
}


def _numbers(text: str) -> list[int]:
    """The integers written in ``text``, in order (no regex: this runs per distractor try)."""
    out, cur = [], ""
    for ch in text + " ":
        if ch.isdigit():
            cur += ch
        elif cur:
            out.append(int(cur))
            cur = ""
    return out


def _make(rng: random.Random, level: int) -> dict[str, Any]:
    """One problem of ``level``: a template filled in, plus distractors at level 3."""
    template = rng.choice(_TEMPLATES[level])
    work = Work()
    sentences, ask, distractors = fill(template, Ctx(rng), work)
    final = work.ops[-1][1]
    if level == 3:
        # numbers a distractor may not use: anything the solution or question already holds
        used = {v for expr, val in work.ops for v in [*_numbers(expr), val]}
        used.update(_numbers(" ".join(sentences) + ask))
        want = rng.choice((1, 2, 2))  # one or two distractors, two twice as often
        placed = 0
        for make in rng.sample(distractors, k=len(distractors)):  # a shuffled copy
            for _ in range(50):  # redraw the number; give up on this sentence after 50 clashes
                sentence = make(rng.randint(3, 60))
                if not set(_numbers(sentence)) & used:
                    used.update(_numbers(sentence))
                    # never first: the first sentence introduces the character a distractor names
                    sentences.insert(rng.randint(1, len(sentences)), sentence)
                    placed += 1
                    break
            if placed == want:
                break
    question = " ".join([*sentences, ask])
    return {
        "question": question,
        "answer": work.answer(final),
        "level": level,
        "template": f"L{level}-{template.name}",
        "ops": work.ops,
    }


def iter_problems(n: int, level: int | None = None, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield ``n`` problems lazily (same sequence as :func:`generate_problems`)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")
    rng = random.Random(seed)
    for _ in range(n):
        yield _make(rng, level if level is not None else rng.choice(LEVELS))


def generate_problems(n: int, level: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` problems of one level (or a uniform mix of levels when ``level`` is None).

    Each dict has ``question``, ``answer`` (GSM8K style, ending ``#### N``), ``level``, plus
    ``template`` and ``ops`` (the ``[expression, value]`` calculator record) for checking.
    """
    return list(iter_problems(n, level, seed))


def problems_to_text(problems: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Each problem as one pretraining document ``Question: ...\\nAnswer: ...``.

    The same layout is used by ``prepare`` for GSM8K-like JSONL rows, so a model pretrained on
    it sees questions and answers the way the benchmark prompts them.
    """
    for p in problems:
        yield f"Question: {p['question']}\nAnswer: {p['answer']}"


def write_jsonl(problems: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line to a temporary file, then rename it into place.

    The rename makes the write atomic: a killed run never leaves a half-written file that a
    later command would read as a (shorter) data set.
    """
    path = Path(path)
    with atomic_open(path) as f:
        for p in problems:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path


def write_corpus(
    out_dir: str | Path, n_train: int, n_test: int, seed: int = 0, level: int | None = None
) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` with no question shared between them.

    Both come from one seeded stream: the first ``n_train`` problems are the training set and
    the following problems whose question does not occur in it form the test set, so a test
    score never rewards memorising a training question.
    """
    out = Path(out_dir)
    # a generous bound on draws: repeats (frequent at level 1) are skipped, so the test set
    # needs more than n_test draws, but a seed that cannot supply it must end, not loop
    stream = iter_problems(10 * (n_train + n_test) + 1000, level, seed)
    train = [next(stream) for _ in range(n_train)]
    seen = {p["question"] for p in train}
    test: list[dict[str, Any]] = []
    for p in stream:
        if len(test) == n_test:
            break
        if p["question"] not in seen:
            seen.add(p["question"])
            test.append(p)
    if len(test) < n_test:
        raise ValueError(f"could only make {len(test)} distinct test problems")
    return {
        "train": write_jsonl(train, out / "train.jsonl"),
        "test": write_jsonl(test, out / "test.jsonl"),
    }
