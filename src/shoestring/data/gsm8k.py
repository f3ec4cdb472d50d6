"""GSM8K loading and prompt construction.

Why this module exists: a GSM8K number is meaningless without the exact problems and the
exact prompt behind it. Loading is therefore strict about input (bad lines are reported with
``file:line``, never dropped silently), subsets are seeded (the same seed gives the same
problems on every machine), and every prompt protocol is a named, documented function.

Loading
-------
:func:`load_gsm8k` reads a local JSON Lines file (the main path; ``../shared/data/gsm8k`` holds
``train.jsonl`` and ``test.jsonl``) or a directory holding ``{split}.jsonl``. Each line must be
a JSON object with string fields ``question`` and ``answer``; the answer must end with a
``#### N`` line. Behaviour on a bad line (invalid UTF-8, invalid JSON, missing or empty field,
no ``#### N``): the line is **skipped and reported** as ``path:line: reason`` through the
``shoestring.data.gsm8k`` logger at WARNING level (the first 20, then a count) and through the
optional ``on_warning`` callback (all of them); with ``strict=True`` the first bad line raises
:class:`UserError` instead. A file that is not text (NUL bytes, mostly invalid UTF-8) is refused
as a whole; :mod:`shoestring.data.input_report` is the policy every reader shares. If no
valid problem remains, :class:`UserError` is raised. Blank lines are not records and are
skipped without a report. ``Problem.idx`` is the 0-based line number in the file (the row
number for a hub dataset), so a problem keeps its identity whatever else is skipped.

The name ``openai/gsm8k`` (or ``gsm8k``), when no such local path exists, loads the ``main``
configuration through the optional ``datasets`` package; that needs the package and a
reachable hub and fails with a clear message otherwise.

Prompts
-------
How a problem is asked and judged lives in :mod:`shoestring.scoring.protocols` (protocols as
data). This module holds the data those protocols need. lm-evaluation-harness's default
sampler draws ``random.Random(1234).sample(train, 5)`` once per evaluated document, from one
generator shared by the whole run, in test-file order (``api/samplers.py: ContextSampler``;
the seed is ``simple_evaluate``'s ``fewshot_random_seed``). :func:`lm_eval_fewshot_indices`
replays those draws and :func:`lm_eval_fewshot_for` gives each problem the shots lm-eval gives
the document at its line of the test file (what a full run or ``--limit N`` run shows it);
:func:`load_fewshot_pool` reads the train split they are drawn from. :data:`LM_EVAL_FEWSHOT`
embeds the first draw (train lines 6374, 3610, 957, 61, 742) for callers without a test
position (GRPO training prompts, held-out sets).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.data.answers import AnswerFormatError, parse_gold
from shoestring.data.input_report import (
    json_problem,
    refuse_binary,
    report_capped,
    split_lines,
    utf8_problem,
)
from shoestring.errors import UserError

__all__ = [
    "HUB_NAMES",
    "LM_EVAL_FEWSHOT",
    "LM_EVAL_FEWSHOT_SEED",
    "Problem",
    "lm_eval_fewshot_for",
    "lm_eval_fewshot_indices",
    "load_fewshot_pool",
    "load_gsm8k",
    "read_gsm8k_jsonl",
    "select_subset",
]

log = logging.getLogger("shoestring.data.gsm8k")

HUB_NAMES = ("openai/gsm8k", "gsm8k")

LM_EVAL_FEWSHOT_SEED = 1234


@dataclass(frozen=True)
class Problem:
    """One GSM8K problem. ``gold`` is the canonical number from the ``#### N`` line."""

    idx: int
    question: str
    answer: str
    gold: str


# lm-eval's first few-shot draw, random.Random(1234).sample(train, 5): (train line, q, a).
# Text copied byte for byte from openai/grade-school-math train.jsonl (MIT licence).
_LM_EVAL_FEWSHOT_ROWS: tuple[tuple[int, str, str], ...] = (
    (
        6374,
        (
            "Jen and Tyler are gymnasts practicing flips. Jen is practicing the triple-flip "
            "while Tyler is practicing the double-flip. Jen did sixteen triple-flips during "
            "practice. Tyler flipped in the air half the number of times Jen did. How many "
            "double-flips did Tyler do?"
        ),
        (
            "Jen did 16 triple-flips, so she did 16 * 3 = <<16*3=48>>48 flips.\n"
            "Tyler did half the number of flips, so he did 48 / 2 = <<48/2=24>>24 flips.\n"
            "A double flip has two flips, so Tyler did 24 / 2 = <<24/2=12>>12 double-flips.\n"
            "#### 12"
        ),
    ),
    (
        3610,
        (
            "Four people in a law firm are planning a party. Mary will buy a platter of pasta "
            "for $20 and a loaf of bread for $2. Elle and Andrea will split the cost for buying "
            "4 cans of soda which cost $1.50 each, and chicken wings for $10. Joe will buy a "
            "cake that costs $5. How much more will Mary spend than the rest of the firm put "
            "together?"
        ),
        (
            "Mary will spend $20 + $2 = $<<20+2=22>>22.\n"
            "Elle and Andrea will spend $1.5 x 4 = $<<1.5*4=6>>6 for the soda.\n"
            "Elle and Andrea will spend $6 + $10 = $<<6+10=16>>16 for the soda and chicken "
            "wings.\n"
            "Elle, Andrea, and Joe together will spend $16 + $5 = $<<16+5=21>>21.\n"
            "So, Mary will spend $22 - $21 = $<<22-21=1>>1 more than all of them combined.\n"
            "#### 1"
        ),
    ),
    (
        957,
        (
            "A charcoal grill burns fifteen coals to ash every twenty minutes of grilling. The "
            "grill ran for long enough to burn three bags of coals. Each bag of coal contains 60 "
            "coals. How long did the grill run?"
        ),
        (
            "The grill burned 3 * 60 = <<3*60=180>>180 coals.\n"
            "It takes 20 minutes to burn 15 coals, so the grill ran for 180 / 15 * 20 = "
            "<<180/15*20=240>>240 minutes.\n"
            "#### 240"
        ),
    ),
    (
        61,
        (
            "A bear is preparing to hibernate for the winter and needs to gain 1000 pounds. At "
            "the end of summer, the bear feasts on berries and small woodland animals. During "
            "autumn, it devours acorns and salmon. It gained a fifth of the weight it needed "
            "from berries during summer, and during autumn, it gained twice that amount from "
            "acorns. Salmon made up half of the remaining weight it had needed to gain. How many "
            "pounds did it gain eating small animals?"
        ),
        (
            "The bear gained 1 / 5 * 1000 = <<1/5*1000=200>>200 pounds from berries.\n"
            "It gained 2 * 200 = <<2*200=400>>400 pounds from acorns.\n"
            "It still needed 1000 - 200 - 400 = <<1000-200-400=400>>400 pounds.\n"
            "Thus, it gained 400 / 2 = <<400/2=200>>200 pounds from salmon.\n"
            "Therefore, the bear gained 400 - 200 = <<400-200=200>>200 pounds from small "
            "animals.\n"
            "#### 200"
        ),
    ),
    (
        742,
        (
            "Brendan can cut 8 yards of grass per day, he bought a lawnmower and it helped him "
            "to cut more yards by Fifty percent per day. How many yards will Brendan be able to "
            "cut after a week?"
        ),
        (
            "The additional yard Brendan can cut after buying the lawnmower is 8 x 0.50 = "
            "<<8*0.50=4>>4 yards.\n"
            "So, the total yards he can cut with the lawnmower is 8 + 4 = <<8+4=12>>12.\n"
            "Therefore, the total number of yards he can cut in a week is 12 x 7 = <<12*7=84>>84 "
            "yards.\n"
            "#### 84"
        ),
    ),
)

#: lm-eval's first draw (idx = 0-based line in train.jsonl): the shots of a few-shot protocol
#: for a problem without a test-file position (GRPO prompts, held-out sets).
LM_EVAL_FEWSHOT: tuple[Problem, ...] = tuple(
    Problem(idx=i, question=q, answer=a, gold=parse_gold(a)) for i, q, a in _LM_EVAL_FEWSHOT_ROWS
)


# --- loading ----------------------------------------------------------------------------------


def _record_to_problem(obj: Any, idx: int) -> Problem:
    """Validate one record; raises ValueError with the reason (the caller adds file:line)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    fields = {}
    for key in ("question", "answer"):
        value = obj.get(key)
        if value is None:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {key!r} must be a non-empty string")
        fields[key] = value
    try:
        gold = parse_gold(fields["answer"])
    except AnswerFormatError as exc:
        raise ValueError(str(exc)) from None
    return Problem(idx=idx, question=fields["question"], answer=fields["answer"], gold=gold)


def read_gsm8k_jsonl(path: str | Path) -> tuple[list[Problem], list[str]]:
    """Parse a GSM8K JSONL file: ``(valid problems, one "path:line: reason" per bad line)``.

    The low-level reader: it neither logs nor raises for bad lines, so callers decide.
    Raises UserError only when the file cannot be read at all.
    """
    path = Path(path)
    refuse_binary(path, "JSONL")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read GSM8K file {path}: {exc.strerror or exc}") from exc
    problems: list[Problem] = []
    issues: list[str] = []
    for line_no, raw_line in split_lines(raw):
        where = f"{path}:{line_no}"
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.append(utf8_problem(path, line_no, raw_line, exc.start))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(f"{where}: {json_problem(exc)}")
            continue
        try:
            problems.append(_record_to_problem(obj, idx=line_no - 1))
        except ValueError as exc:
            issues.append(f"{where}: {exc}")
    return problems, issues


def _load_hub(name: str, split: str) -> tuple[list[Problem], list[str]]:
    """Load ``openai/gsm8k`` (config ``main``) via the optional ``datasets`` package."""
    try:
        import datasets  # optional dependency, imported only when asked for
    except ImportError:
        raise UserError(
            f"loading {name!r} by name needs the optional 'datasets' package "
            "(pip install datasets) and access to the Hugging Face hub; or pass a local "
            "JSONL file such as ../shared/data/gsm8k/test.jsonl"
        ) from None
    hub_name = "openai/gsm8k" if name == "gsm8k" else name
    try:
        rows = datasets.load_dataset(hub_name, "main", split=split)
    except Exception as exc:  # network, auth, unknown split: all user-facing
        raise UserError(
            f"could not load {hub_name!r} split {split!r} from the hub: {exc}. "
            "Offline? Pass a local JSONL file instead."
        ) from exc
    problems: list[Problem] = []
    issues: list[str] = []
    for i, row in enumerate(rows):
        try:
            problems.append(_record_to_problem(row, idx=i))
        except ValueError as exc:
            issues.append(f"{hub_name}[{split}] row {i}: {exc}")
    return problems, issues


def select_subset(
    problems: Sequence[Problem], limit: int | None, subset_seed: int | None
) -> list[Problem]:
    """``limit`` problems: the first N without a seed, a seeded random N with one.

    With a seed the whole list is shuffled by ``random.Random(seed)`` and the first N taken,
    then restored to file order; so the same seed always gives the same problems, and a
    larger limit with the same seed contains the smaller subset (runs at n=50 and n=200 share
    their first 50 problems). A limit at or above the size returns everything.
    """
    problems = list(problems)
    if limit is None:
        return problems
    if limit <= 0:
        raise UserError(f"--limit must be a positive number of problems, got {limit}")
    if limit >= len(problems):
        return problems
    if subset_seed is None:
        return problems[:limit]
    order = list(range(len(problems)))
    random.Random(subset_seed).shuffle(order)
    # a prefix of one seeded permutation: a larger limit keeps the smaller subset
    return [problems[i] for i in sorted(order[:limit])]


def load_gsm8k(
    path_or_name: str | Path,
    split: str = "test",
    limit: int | None = None,
    subset_seed: int | None = None,
    *,
    strict: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> list[Problem]:
    """Load GSM8K problems from a JSONL file, a directory with ``{split}.jsonl``, or the hub.

    ``split`` picks the file inside a directory and the hub split; it is ignored for a file
    path. Bad lines are skipped and reported (logger warning + ``on_warning``), or raise
    UserError with ``strict=True``; an input with no valid problem raises UserError. See the
    module docstring for the exact rules; :func:`select_subset` for ``limit``/``subset_seed``.
    """
    target = Path(path_or_name)
    if target.is_dir():
        target = target / f"{split}.jsonl"
        if not target.is_file():
            raise UserError(f"{Path(path_or_name)} has no {split}.jsonl (looked for {target})")
    if target.is_file():
        problems, issues = read_gsm8k_jsonl(target)
        source = str(target)
    elif str(path_or_name) in HUB_NAMES:
        problems, issues = _load_hub(str(path_or_name), split)
        source = f"{path_or_name}[{split}]"
    else:
        raise UserError(
            f"GSM8K data not found: {path_or_name} is neither a file nor a directory "
            f"(or one of {', '.join(HUB_NAMES)} to load from the hub)"
        )
    if issues:
        if strict:
            more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
            raise UserError(f"bad GSM8K record: {issues[0]}{more}")
        report_capped(issues, lambda msg: log.warning("skipped %s", msg))
        for msg in issues:
            if on_warning is not None:
                on_warning(msg)
        log.warning("%s: skipped %d bad line(s), kept %d", source, len(issues), len(problems))
    if not problems:
        raise UserError(f"no valid GSM8K problems in {source} ({len(issues)} bad line(s))")
    return select_subset(problems, limit, subset_seed)


# --- prompts ----------------------------------------------------------------------------------


def lm_eval_fewshot_indices(
    n_train: int, n_docs: int, k: int = 5, seed: int = LM_EVAL_FEWSHOT_SEED
) -> list[list[int]]:
    """Train indices lm-eval's default sampler picks for each of the first ``n_docs`` docs.

    Replays ``random.Random(seed).sample(train, k)`` once per evaluated document, as
    lm-eval's ContextSampler does with its shared generator (test split != few-shot split,
    so no extra sample is drawn). Element 0 is ``[6374, 3610, 957, 61, 742]`` for the 7473
    GSM8K train problems. Valid when documents are evaluated in file order from the start.
    """
    rnd = random.Random(seed)
    population = range(n_train)
    return [rnd.sample(population, k) for _ in range(n_docs)]


def lm_eval_fewshot_for(
    problems: Sequence[Problem], pool: Sequence[Problem], k: int = 5
) -> list[tuple[Problem, ...]]:
    """The ``k`` shots lm-eval's ``gsm8k`` task puts before each problem.

    A problem at line ``idx`` of the test file is lm-eval's document ``idx``, so it gets
    draw ``idx`` of the seeded generator, whatever subset of problems is being scored.
    ``pool`` is the whole train split in file order (lm-eval samples from its rows).
    """
    if not problems:
        return []
    # draws are sequential: problem idx needs every draw before it, scored or not
    draws = lm_eval_fewshot_indices(len(pool), max(p.idx for p in problems) + 1, k)
    return [tuple(pool[j] for j in draws[p.idx]) for p in problems]


def load_fewshot_pool(data: str | Path, split: str = "test") -> list[Problem]:
    """The train split lm-eval draws its shots from, found next to the evaluated data.

    ``data`` is what ``bench --data`` got: a directory or a file (its directory's
    ``train.jsonl`` is used), or a hub name (its ``train`` split). Every line must be valid
    (``strict``): lm-eval samples by row position, so a skipped line would shift every draw.
    """
    target = Path(data)
    if not target.exists() and str(data) in HUB_NAMES:
        return load_gsm8k(data, "train", strict=True)
    folder = target if target.is_dir() else target.parent
    pool = folder / "train.jsonl"
    if not pool.is_file() or (target.is_file() and target.resolve() == pool.resolve()):
        raise UserError(
            f"lm-eval's few-shot examples are drawn from the train split, and there is no "
            f"{pool} next to the {split} data (needed beside {data}); copy GSM8K's train.jsonl "
            "there, or score with a zero-shot protocol (qa, plain, chat-cot)"
        )
    return load_gsm8k(pool, strict=True)
