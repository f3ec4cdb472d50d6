"""lm-eval's gsm8k rules as shoestring reproduces them: filters, exact match, few-shot draws,
context truncation; and the lenient numeric judge kept apart under its own protocol name."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from _helpers import char_tokenizer
from shoestring.data.answers import parse_gold
from shoestring.data.gsm8k import (
    LM_EVAL_FEWSHOT,
    Problem,
    lm_eval_fewshot_for,
    lm_eval_fewshot_indices,
    load_fewshot_pool,
    load_gsm8k,
)
from shoestring.errors import UserError
from shoestring.scoring import lm_eval_rules as rules
from shoestring.scoring.protocols import get_protocol
from shoestring.scoring.scoring import render_prompts

LM_EVAL = get_protocol("lm-eval-5shot")
NUMERIC = get_protocol("gsm8k-5shot-numeric")

#: (response, gold, lm-eval's verdict): the lenient cases the issue found, and plain ones.
CASES = [
    ("So 18.\n#### 18", "18", True),
    ("#### 18.00", "18", False),
    ("#### 0.50", "0.5", False),
    ("#### \u221218", "-18", False),  # Unicode minus: lm-eval's regex does not match
    ("#### 70000.5", "70000", False),
    ("#### 1,234", "1234", True),
    ("#### 18.", "18", True),  # the trailing "." is an ignored regex
    ("#### -3", "-3", True),
    ("The answer is 18", "18", False),  # strict needs "#### "
    ("#### 5\n#### 6", "6", False),  # take_first
]


@pytest.mark.parametrize(("response", "gold", "ok"), CASES)
def test_lm_eval_protocol_judges_as_lm_eval(response: str, gold: str, ok: bool) -> None:
    assert LM_EVAL.score(response, gold).ok is ok
    assert LM_EVAL.judge(response, gold) is ok


def test_bench_scorer_rejects_18_00_under_lm_eval_but_numeric_protocol_accepts() -> None:
    scored = LM_EVAL.score("18 apples.\n#### 18.00", "18")
    assert scored.pred == "18.00" and not scored.ok and not scored.correct["strict"]
    assert NUMERIC.score("18 apples.\n#### 18.00", "18").ok
    # the numeric protocol asks exactly as lm-eval-5shot does; only the judge differs
    assert NUMERIC.prompt("Q?") == LM_EVAL.prompt("Q?")
    assert NUMERIC.key() != LM_EVAL.key()


def test_filters_and_metric_match_lm_eval_itself() -> None:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    assert lm_eval.__version__ == "0.4.13"
    strict = RegexFilter(rules.STRICT_PATTERN, group_select=0)
    flexible = RegexFilter(rules.FLEXIBLE_PATTERN, group_select=-1)
    responses = [r for r, _, _ in CASES] + ["no number", "$5.", "costs $1,200.50 total", "-"]
    for resp in responses:
        for mine, theirs in ((rules.strict_match, strict), (rules.flexible_extract, flexible)):
            got = theirs.apply([[resp]], [{}])[0][0]
            assert mine(resp) == (None if got == "[invalid]" else got), resp
    for resp, gold, _ in CASES:
        pred = rules.strict_match(resp) or "[invalid]"
        em = exact_match_hf_evaluate(
            [pred], [f"work\n#### {gold}"], list(rules.IGNORE_REGEXES), ignore_case=True
        )
        assert rules.exact_match(rules.strict_match(resp), gold) is bool(em["exact_match"])


def test_canonical_gold_is_lm_eval_reference_for_all_of_gsm8k(shared_dir) -> None:
    """bench may judge against Problem.gold (the canonical number): for every GSM8K answer it
    is the same string lm-eval compares against."""
    n = 0
    for split in ("train", "test"):
        path = shared_dir / "data" / "gsm8k" / f"{split}.jsonl"
        if not path.exists():
            pytest.skip("GSM8K not in ../shared")
        for line in path.read_text().splitlines():
            answer = json.loads(line)["answer"]
            assert rules.exact_match(parse_gold(answer), answer), answer
            n += 1
    assert n == 8792


def _problems(n: int, start: int = 0) -> list[Problem]:
    return [Problem(i, f"Q{i}?", f"A{i}\n#### {i}", str(i)) for i in range(start, start + n)]


def test_fewshot_draw_follows_the_test_file_line() -> None:
    pool = _problems(50)
    tests = _problems(8)
    draws = lm_eval_fewshot_indices(len(pool), 8)
    shots = lm_eval_fewshot_for(tests, pool)
    assert [[s.idx for s in d] for d in shots] == draws
    # a subset keeps each problem's own draw (lm-eval's document = the file line)
    subset = [tests[2], tests[7]]
    assert lm_eval_fewshot_for(subset, pool) == [shots[2], shots[7]]
    assert len({tuple(d) for d in draws}) > 1  # draws differ from problem to problem
    prompt = LM_EVAL.prompt(tests[3].question, fewshot=shots[3])
    assert prompt.startswith(f"Question: {shots[3][0].question}\nAnswer: {shots[3][0].answer}\n\n")
    assert prompt.endswith("Question: Q3?\nAnswer:")


def test_fewshot_pool_is_the_real_train_split(shared_dir) -> None:
    data = shared_dir / "data" / "gsm8k"
    if not (data / "train.jsonl").exists():
        pytest.skip("GSM8K not in ../shared")
    pool = load_fewshot_pool(data / "test.jsonl")
    assert len(pool) == 7473
    first = lm_eval_fewshot_for(load_gsm8k(data / "test.jsonl", limit=2), pool)
    assert list(first[0]) == list(LM_EVAL_FEWSHOT)  # the embedded first draw, byte for byte
    assert first[1] != first[0]


def test_fewshot_pool_missing_says_what_to_do(tmp_path) -> None:
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    with pytest.raises(UserError, match="train.jsonl.*zero-shot"):
        load_fewshot_pool(tmp_path / "test.jsonl")


def test_context_length_resolves_as_lm_eval() -> None:
    ns = SimpleNamespace
    assert rules.context_length(ns(n_positions=1024, max_position_embeddings=4096)) == 1024
    assert rules.context_length(ns(text_config=ns(max_position_embeddings=8192))) == 8192
    assert rules.context_length(ns(), ns(model_max_length=300)) == 300
    assert rules.context_length(ns(), ns(model_max_length=int(1e30))) == 2048
    with pytest.raises(UserError, match="max_new_tokens=256.*256 tokens"):
        rules.prompt_budget(ns(max_position_embeddings=256), None, 256)


def test_render_prompts_left_truncates_only_under_lm_eval_protocols() -> None:
    tok = char_tokenizer()
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=300))
    shots = [tuple(_problems(5))] * 2
    questions = ["short?", "long " * 40 + "?"]
    out = render_prompts(model, tok, questions, LM_EVAL, max_new_tokens=256, fewshot=shots)
    assert out.budget == 44 and out.truncated == 2
    full = tok(LM_EVAL.prompt(questions[1], fewshot=shots[1]))["input_ids"]
    assert out.ids[1] == full[-44:]
    # any other protocol is fitted by the context policy (models/context.py): cut from the left
    # to the same room, so a long prompt never crashes a learned-position model
    whole = tok(f"Question: {questions[1]}\nAnswer:")["input_ids"]
    plain = render_prompts(model, tok, questions, get_protocol("qa"), max_new_tokens=256)
    assert plain.truncated == 1 and plain.budget == 44 and plain.ids[1] == whole[-44:]
    # bench fits, counts and hashes its prompts itself: fit_context=False leaves them whole
    kept = render_prompts(
        model, tok, questions, get_protocol("qa"), max_new_tokens=256, fit_context=False
    )
    assert kept.truncated == 0 and kept.ids[1] == whole
