"""Rewards: correctness judges with the run's protocol (the bench's extractor and normaliser) on
tricky answers; format is a small shaping term; user rewards load from ``module:function`` with
TRL's signature."""

from __future__ import annotations

import sys

import pytest

from shoestring.errors import UserError
from shoestring.rl.rewards import builtin_rewards, load_reward, reward_weights, score
from shoestring.scoring.protocols import get_protocol

QA = get_protocol("qa")
correctness = builtin_rewards(QA)["correctness"]
format_reward = builtin_rewards(QA)["format"]

GOLD = "She pays 617 + 617 = <<617+617=1234>>1234 dollars.\n#### 1234"


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("So the total is 1,234 dollars.\n#### 1,234", GOLD, 1.0),  # thousands separator
        ("#### 1234.00", GOLD, 1.0),  # trailing zeros
        # qa's strict extractor (bench's, lm-eval's strict-match) reads only "#### N": other
        # phrasings earn nothing, because the benchmark would not count them either
        ("#### $1,234.00", GOLD, 0.0),
        ("The answer is 1234.", GOLD, 0.0),
        ("\\boxed{1234}", GOLD, 0.0),
        ("#### 1235", GOLD, 0.0),  # off by one
        ("I think 1234 apples", GOLD, 0.0),  # a bare number is not a stated answer
        ("", GOLD, 0.0),
        ("#### 12\nwait, 1234", GOLD, 0.0),  # the #### line wins over later numbers
        ("#### \u22123", "x\n#### -3", 0.0),  # Unicode minus: not strict-match's "-"
        ("#### -3", "x\n#### -3.0", 1.0),  # negative, trailing zero
        ("The answer is 3/4", "x\n#### 0.75", 0.0),  # no "####" line
        ("#### 3/4", "x\n#### 0.75", 0.0),  # strict-match takes "3" of "3/4"
        ("#### 0.75", "x\n#### 3/4", 1.0),  # exact fraction vs decimal
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


def test_format_reward_and_protocol_extractor() -> None:
    assert format_reward(["q", "q", "q"], ["#### 7", "no answer here 7", "the answer is 7"]) == [
        1.0,
        0.0,
        0.0,  # qa's primary extractor is strict: only a "#### N" line states an answer
    ]
    assert QA.extract("x #### 5\n") == "5"
    assert QA.extract("nothing") is None
    # the reward and the protocol's score agree, whatever the protocol's primary extractor
    for name in ("qa", "chat-cot", "plain", "lm-eval-5shot"):
        protocol = get_protocol(name)
        fn = builtin_rewards(protocol)["correctness"]
        for text in ("#### 7", "so 7", "the answer is 7", "\\boxed{7}"):
            assert fn(["q"], [text], answer=["#### 7"]) == [float(protocol.score(text, "7").ok)]


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
    fn = load_reward("my_rewards:length_bonus", QA)
    out = score([fn], ["p", "p"], ["abcde", "ab"], [[1], [2]], {"level": [1, 2]})
    assert out[0][0] == 0.5 and out[0][1] != out[0][1]  # None -> NaN
    with pytest.raises(UserError, match="signature"):
        load_reward("my_rewards:bad", QA)
    with pytest.raises(UserError, match="no callable"):
        load_reward("my_rewards:missing", QA)
    with pytest.raises(UserError, match="unknown reward"):
        load_reward("corectness", QA)


def test_default_weights() -> None:
    assert reward_weights(["correctness", "format", "m:f"], None) == [1.0, 0.1, 1.0]
    assert reward_weights(["correctness"], [2]) == [2.0]
