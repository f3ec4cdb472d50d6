"""Synthetic GSM8K-style problems: determinism, exact arithmetic, levels, distractors, variety."""

from __future__ import annotations

import json
import re

import pytest

from shoestring.data import synthetic as syn
from shoestring.data import templates_multi_step, templates_one_step, templates_two_step
from shoestring.data.problem_engine import evaluate

ANNOTATION = re.compile(r"<<([^=<>]+)=(\d+)>>")
FINAL = re.compile(r"\n#### (\d+)$")
NUMBER = re.compile(r"\d+")


def test_deterministic_for_a_seed_and_seed_sensitive() -> None:
    a = syn.generate_problems(60, seed=7)
    assert a == syn.generate_problems(60, seed=7)
    assert a != syn.generate_problems(60, seed=8)
    assert syn.generate_problems(10, level=2, seed=1) == list(syn.iter_problems(10, 2, 1))


def test_answers_recompute_from_the_record() -> None:
    for p in syn.generate_problems(300, seed=3):
        m = FINAL.search(p["answer"])
        assert m, p["answer"]
        final = int(m.group(1))
        found = [(e, int(v)) for e, v in ANNOTATION.findall(p["answer"])]
        assert found == [(e, v) for e, v in p["ops"]]
        results: list[int] = []
        allowed = {int(x) for x in NUMBER.findall(p["question"])} | {2}  # "twice"/"half"
        for expr, value in found:
            assert evaluate(expr) == value >= 0
            for operand in map(int, NUMBER.findall(expr)):
                assert operand in allowed or operand in results, (expr, p["question"])
            results.append(value)
        assert final == results[-1]


@pytest.mark.parametrize(("level", "lo", "hi"), [(1, 1, 1), (2, 2, 3), (3, 4, 99)])
def test_levels_have_their_number_of_steps(level: int, lo: int, hi: int) -> None:
    for p in syn.generate_problems(80, level=level, seed=level):
        assert p["level"] == level
        assert lo <= len(p["ops"]) <= hi, p


def test_level3_has_distractor_numbers() -> None:
    for p in syn.generate_problems(100, level=3, seed=11):
        used = {int(x) for expr, _ in p["ops"] for x in NUMBER.findall(expr)}
        unused = {int(x) for x in NUMBER.findall(p["question"])} - used
        assert unused, p["question"]


def test_variety_of_templates_and_names() -> None:
    for templates in (templates_one_step, templates_two_step, templates_multi_step):
        assert len(templates.TEMPLATES) >= 8
    sample = syn.generate_problems(200, seed=0)
    assert len({p["template"] for p in sample}) >= 20
    assert len({p["question"] for p in sample}) >= 195  # small level-1 ranges may repeat
    assert {p["level"] for p in sample} == {1, 2, 3}


def test_evaluate_rejects_what_a_problem_may_not_contain() -> None:
    assert evaluate("3*4+2") == 14
    for bad in ["5/2", "2-5", "__import__('os')", "2**8", "1.5*2", ""]:
        with pytest.raises(ValueError):
            evaluate(bad)


def test_text_and_files(tmp_path) -> None:
    probs = syn.generate_problems(5, seed=2)
    docs = list(syn.problems_to_text(probs))
    assert docs[0] == f"Question: {probs[0]['question']}\nAnswer: {probs[0]['answer']}"
    path = syn.write_jsonl(probs, tmp_path / "sub" / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == probs
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["p.jsonl"]  # no temp left
    paths = syn.write_corpus(tmp_path / "c", n_train=40, n_test=10, seed=5)
    train = [json.loads(x) for x in paths["train"].read_text().splitlines()]
    test = [json.loads(x) for x in paths["test"].read_text().splitlines()]
    assert (len(train), len(test)) == (40, 10)
    assert not {p["question"] for p in train} & {p["question"] for p in test}
