"""Rewards: correctness uses the bench's normaliser on tricky answers; format is a small
shaping term; user rewards load from ``module:function`` with TRL's signature."""

from __future__ import annotations

import sys

import pytest

from shoestring.errors import UserError
from shoestring.rl.rewards import (
    correctness,
    extract_final,
    format_reward,
    load_reward,
    reward_weights,
    score,
)

GOLD = "She pays 617 + 617 = <<617+617=1234>>1234 dollars.\n#### 1234"


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("So the total is 1,234 dollars.\n#### 1,234", GOLD, 1.0),  # thousands separator
        ("#### $1,234.00", GOLD, 1.0),  # currency and trailing zeros
        ("The answer is 1234.", GOLD, 1.0),  # answer-is phrasing
        ("\\boxed{1234}", GOLD, 1.0),  # boxed
        ("#### 1235", GOLD, 0.0),  # off by one
        ("I think 1234 apples", GOLD, 0.0),  # a bare number is not a stated answer
        ("", GOLD, 0.0),
        ("#### 12\nwait, 1234", GOLD, 0.0),  # the #### line wins over later numbers
        ("#### \u22123", "x\n#### -3", 1.0),  # Unicode minus
        ("The answer is 3/4", "x\n#### 0.75", 1.0),  # exact fraction vs decimal
        ("#### 0.333", "x\n#### 1/3", 0.0),  # 1/3 is not 0.333 within 1e-4
        ("#### 50%", "x\n#### 50", 1.0),  # percent sign dropped as GSM8K does
    ],
)
def test_correctness_on_tricky_answers(completion: str, gold: str, expected: float) -> None:
    assert correctness(prompts=["q"], completions=[completion], answer=[gold]) == [expected]


def test_correctness_unscorable_without_gold_and_needs_answer_column() -> None:
    assert correctness(["q"], ["#### 3"], answer=[None]) == [None]
    with pytest.raises(UserError, match="answer"):
        correctness(["q"], ["#### 3"])


def test_format_reward_and_extract_final() -> None:
    assert format_reward(["q", "q", "q"], ["#### 7", "no answer here 7", "the answer is 7"]) == [
        1.0,
        0.0,
        1.0,
    ]
    assert extract_final("x #### 5\n") == "5"
    assert extract_final("nothing") is None


def test_user_reward_module_function(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def length_bonus(prompts, completions, **kwargs):\n"
        "    return [len(c) / 10 if kwargs['level'][i] == 1 else None\n"
        "            for i, c in enumerate(completions)]\n"
        "def bad(x):\n    return [0]\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    fn = load_reward("my_rewards:length_bonus")
    out = score([fn], ["p", "p"], ["abcde", "ab"], [[1], [2]], {"level": [1, 2]})
    assert out[0][0] == 0.5 and out[0][1] != out[0][1]  # None -> NaN
    with pytest.raises(UserError, match="signature"):
        load_reward("my_rewards:bad")
    with pytest.raises(UserError, match="no callable"):
        load_reward("my_rewards:missing")
    with pytest.raises(UserError, match="unknown reward"):
        load_reward("corectness")


def test_default_weights() -> None:
    assert reward_weights(["correctness", "format", "m:f"], None) == [1.0, 0.1, 1.0]
    assert reward_weights(["correctness"], [2]) == [2.0]
