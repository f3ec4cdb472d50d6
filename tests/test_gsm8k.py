"""GSM8K loading (bad lines reported with file:line, seeded subsets) and prompt protocols."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shoestring.data.gsm8k import (
    ADD_SPECIAL_TOKENS,
    LM_EVAL_FEWSHOT,
    PROTOCOLS,
    STOP_STRINGS,
    Problem,
    build_prompt,
    default_protocol,
    lm_eval_fewshot_indices,
    load_gsm8k,
    read_gsm8k_jsonl,
    select_subset,
)
from shoestring.errors import UserError


def _line(q: str, a: str) -> str:
    return json.dumps({"question": q, "answer": a})


def _write(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def _problems(n: int) -> list[str]:
    return [_line(f"What is {i} + 1?", f"{i} + 1 = {i + 1}\n#### {i + 1}") for i in range(n)]


# --- loading ----------------------------------------------------------------------------------


def test_bad_lines_reported_with_file_and_line(tmp_path: Path, caplog) -> None:
    good = _problems(3)
    path = _write(
        tmp_path / "mixed.jsonl",
        [
            good[0],
            "{not json",
            json.dumps({"question": "no answer here"}),
            good[1],
            "",  # blank lines are not records
            json.dumps({"question": "Q", "answer": "no final line"}),
            b'{"question": "\xff", "answer": "#### 1"}',
            json.dumps(["a", "list"]),
            good[2],
        ],
    )
    warnings: list[str] = []
    with caplog.at_level(logging.WARNING, logger="shoestring.data.gsm8k"):
        problems = load_gsm8k(path, on_warning=warnings.append)
    assert [p.idx for p in problems] == [0, 3, 8]  # idx = 0-based line in the file
    assert [p.gold for p in problems] == ["1", "2", "3"]
    assert len(warnings) == 5
    assert warnings[0].startswith(f"{path}:2: invalid JSON")
    assert warnings[1] == f"{path}:3: missing field 'answer'"
    assert warnings[2].startswith(f"{path}:6: no '#### N' line")
    assert warnings[3].startswith(f"{path}:7: not valid UTF-8")
    assert warnings[4] == f"{path}:8: expected a JSON object, got list"
    assert f"{path}:2: invalid JSON" in caplog.text
    assert "skipped 5 bad line(s), kept 3" in caplog.text


def test_strict_mode_rejects_first_bad_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [*_problems(2), "{oops"])
    with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid JSON"):
        load_gsm8k(path, strict=True)


def test_nothing_valid_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "junk.jsonl", ["{", "[]"])
    with pytest.raises(UserError, match="no valid GSM8K problems"):
        load_gsm8k(path)


def test_missing_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_gsm8k(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"has no test\.jsonl"):
        load_gsm8k(tmp_path)


def test_directory_and_split(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", _problems(4))
    _write(tmp_path / "test.jsonl", _problems(2))
    assert len(load_gsm8k(tmp_path)) == 2
    assert len(load_gsm8k(tmp_path, split="train")) == 4


def test_subset_first_n_and_seeded(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", _problems(100))
    first = load_gsm8k(path, limit=5)
    assert [p.idx for p in first] == [0, 1, 2, 3, 4]
    a = load_gsm8k(path, limit=10, subset_seed=7)
    b = load_gsm8k(path, limit=10, subset_seed=7)
    c = load_gsm8k(path, limit=10, subset_seed=8)
    assert [p.idx for p in a] == [p.idx for p in b]  # same seed, same problems
    assert [p.idx for p in a] != [p.idx for p in c]
    assert [p.idx for p in a] == sorted(p.idx for p in a)  # kept in file order
    bigger = load_gsm8k(path, limit=30, subset_seed=7)
    assert {p.idx for p in a} <= {p.idx for p in bigger}  # nested subsets
    assert len(load_gsm8k(path, limit=1000)) == 100
    with pytest.raises(UserError):
        select_subset(first, 0, None)


def test_hub_name_without_datasets_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.chdir(tmp_path)  # no local "openai/gsm8k" path
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match="optional 'datasets' package"):
        load_gsm8k("openai/gsm8k")


def test_real_files(shared_dir: Path) -> None:
    problems, issues = read_gsm8k_jsonl(shared_dir / "data/gsm8k/test.jsonl")
    assert len(problems) == 1319 and issues == []
    assert problems[0].gold == "18"  # Janet's ducks
    train = load_gsm8k(shared_dir / "data/gsm8k", split="train")
    assert len(train) == 7473


# --- prompts ----------------------------------------------------------------------------------

PROBLEM = Problem(
    idx=0,
    question="Tom has 3 apples and buys 2 more. How many apples does he have?",
    answer="3 + 2 = <<3+2=5>>5\n#### 5",
    gold="5",
)

EXPECTED_LM_EVAL_PROMPT = """\
Question: Jen and Tyler are gymnasts practicing flips. Jen is practicing the triple-flip \
while Tyler is practicing the double-flip. Jen did sixteen triple-flips during practice. \
Tyler flipped in the air half the number of times Jen did. How many double-flips did Tyler do?
Answer: Jen did 16 triple-flips, so she did 16 * 3 = <<16*3=48>>48 flips.
Tyler did half the number of flips, so he did 48 / 2 = <<48/2=24>>24 flips.
A double flip has two flips, so Tyler did 24 / 2 = <<24/2=12>>12 double-flips.
#### 12

Question: Four people in a law firm are planning a party. Mary will buy a platter of pasta \
for $20 and a loaf of bread for $2. Elle and Andrea will split the cost for buying 4 cans of \
soda which cost $1.50 each, and chicken wings for $10. Joe will buy a cake that costs $5. How \
much more will Mary spend than the rest of the firm put together?
Answer: Mary will spend $20 + $2 = $<<20+2=22>>22.
Elle and Andrea will spend $1.5 x 4 = $<<1.5*4=6>>6 for the soda.
Elle and Andrea will spend $6 + $10 = $<<6+10=16>>16 for the soda and chicken wings.
Elle, Andrea, and Joe together will spend $16 + $5 = $<<16+5=21>>21.
So, Mary will spend $22 - $21 = $<<22-21=1>>1 more than all of them combined.
#### 1

Question: A charcoal grill burns fifteen coals to ash every twenty minutes of grilling. The \
grill ran for long enough to burn three bags of coals. Each bag of coal contains 60 coals. How \
long did the grill run?
Answer: The grill burned 3 * 60 = <<3*60=180>>180 coals.
It takes 20 minutes to burn 15 coals, so the grill ran for 180 / 15 * 20 = \
<<180/15*20=240>>240 minutes.
#### 240

Question: A bear is preparing to hibernate for the winter and needs to gain 1000 pounds. At \
the end of summer, the bear feasts on berries and small woodland animals. During autumn, it \
devours acorns and salmon. It gained a fifth of the weight it needed from berries during \
summer, and during autumn, it gained twice that amount from acorns. Salmon made up half of the \
remaining weight it had needed to gain. How many pounds did it gain eating small animals?
Answer: The bear gained 1 / 5 * 1000 = <<1/5*1000=200>>200 pounds from berries.
It gained 2 * 200 = <<2*200=400>>400 pounds from acorns.
It still needed 1000 - 200 - 400 = <<1000-200-400=400>>400 pounds.
Thus, it gained 400 / 2 = <<400/2=200>>200 pounds from salmon.
Therefore, the bear gained 400 - 200 = <<400-200=200>>200 pounds from small animals.
#### 200

Question: Brendan can cut 8 yards of grass per day, he bought a lawnmower and it helped him \
to cut more yards by Fifty percent per day. How many yards will Brendan be able to cut after a \
week?
Answer: The additional yard Brendan can cut after buying the lawnmower is 8 x 0.50 = \
<<8*0.50=4>>4 yards.
So, the total yards he can cut with the lawnmower is 8 + 4 = <<8+4=12>>12.
Therefore, the total number of yards he can cut in a week is 12 x 7 = <<12*7=84>>84 yards.
#### 84

Question: Tom has 3 apples and buys 2 more. How many apples does he have?
Answer:"""


def test_lm_eval_5shot_prompt_exact() -> None:
    assert build_prompt(PROBLEM, "lm-eval-5shot") == EXPECTED_LM_EVAL_PROMPT
    assert STOP_STRINGS["lm-eval-5shot"] == ("Question:", "</s>", "<|im_end|>")
    assert ADD_SPECIAL_TOKENS["lm-eval-5shot"] is False


def test_lm_eval_fewshot_is_lm_evals_first_draw() -> None:
    # lm-eval: random.Random(1234).sample(train, 5), one draw per evaluated document
    draws = lm_eval_fewshot_indices(n_train=7473, n_docs=2)
    assert draws[0] == [p.idx for p in LM_EVAL_FEWSHOT] == [6374, 3610, 957, 61, 742]
    assert draws[1] != draws[0]


def test_embedded_shots_match_train_file(shared_dir: Path) -> None:
    lines = (shared_dir / "data/gsm8k/train.jsonl").read_text(encoding="utf-8").splitlines()
    for shot in LM_EVAL_FEWSHOT:
        row = json.loads(lines[shot.idx])
        assert (row["question"], row["answer"]) == (shot.question, shot.answer)


def test_custom_fewshot() -> None:
    shot = Problem(idx=9, question="Q1?", answer="A1\n#### 1", gold="1")
    assert build_prompt(PROBLEM, "lm-eval-5shot", fewshot=[shot]) == (
        f"Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: {PROBLEM.question}\nAnswer:"
    )


def test_plain_prompt() -> None:
    assert build_prompt(PROBLEM, "plain") == (
        f"Question: {PROBLEM.question}\nAnswer: Let's think step by step."
    )


class _ChatTok:
    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"


class _PlainTok:
    chat_template = None


def test_chat_cot_and_default_protocol() -> None:
    prompt = build_prompt(PROBLEM, "chat-cot", tokenizer=_ChatTok())
    assert prompt.startswith("<|user|>") and prompt.endswith("<|assistant|>")
    assert PROBLEM.question in prompt and "#### N" in prompt
    assert default_protocol(_ChatTok()) == "chat-cot"
    assert default_protocol(_PlainTok()) == "plain"
    with pytest.raises(UserError, match="no(ne)? chat template|has none"):
        build_prompt(PROBLEM, "chat-cot", tokenizer=_PlainTok())
    with pytest.raises(UserError, match="unknown prompt protocol"):
        build_prompt(PROBLEM, "nope")
    assert set(STOP_STRINGS) == set(PROTOCOLS) == set(ADD_SPECIAL_TOKENS)


def test_chat_cot_with_a_real_transformers_tokenizer() -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        unk_token="[UNK]",
    )
    assert default_protocol(tok) == "plain"
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prompt = build_prompt(PROBLEM, "chat-cot", tokenizer=tok)
    assert isinstance(prompt, str)
    assert prompt.startswith("<|user|>Solve the following math word problem.")
    assert prompt.endswith(f"{PROBLEM.question}\n<|assistant|>")
