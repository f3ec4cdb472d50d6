"""Scoring protocols as data: exact prompts, stop strings, and one verdict per response."""

from __future__ import annotations

import pytest

from shoestring.data.gsm8k import Problem
from shoestring.errors import UserError
from shoestring.scoring.protocols import PROTOCOLS, get_protocol, resolve_protocol

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
    assert PROTOCOLS["lm-eval-5shot"].prompt(PROBLEM.question) == EXPECTED_LM_EVAL_PROMPT
    assert PROTOCOLS["lm-eval-5shot"].stop_strings == ("Question:", "</s>", "<|im_end|>")
    # lm-eval 0.4.13's HF backend leaves special tokens to the tokenizer's default (a BOS
    # for Llama-style tokenizers); tests/test_lm_eval_agreement.py checks it on real runs.
    assert PROTOCOLS["lm-eval-5shot"].add_special_tokens is True
    fewshot = PROTOCOLS["lm-eval-5shot"].to_dict()["fewshot"]
    assert fewshot["first_draw"] == [6374, 3610, 957, 61, 742] and fewshot["seed"] == 1234


def test_custom_fewshot() -> None:
    shot = Problem(idx=9, question="Q1?", answer="A1\n#### 1", gold="1")
    assert PROTOCOLS["lm-eval-5shot"].prompt(PROBLEM.question, fewshot=[shot]) == (
        f"Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: {PROBLEM.question}\nAnswer:"
    )


def test_plain_prompt() -> None:
    assert PROTOCOLS["plain"].prompt(PROBLEM.question) == (
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
    prompt = PROTOCOLS["chat-cot"].prompt(PROBLEM.question, _ChatTok())
    assert prompt.startswith("<|user|>") and prompt.endswith("<|assistant|>")
    assert PROBLEM.question in prompt and "#### N" in prompt
    assert resolve_protocol("auto", _ChatTok()).name == "chat-cot"
    assert resolve_protocol("auto", _PlainTok()).name == "plain"
    with pytest.raises(UserError, match="no(ne)? chat template|has none"):
        PROTOCOLS["chat-cot"].prompt(PROBLEM.question, _PlainTok())
    with pytest.raises(UserError, match="unknown scoring protocol 'chat-cat'.*chat-cot"):
        get_protocol("chat-cat")
    assert resolve_protocol("auto", _PlainTok(), fallback="qa").name == "qa"


def test_chat_cot_with_a_real_transformers_tokenizer() -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        unk_token="[UNK]",
    )
    assert resolve_protocol("auto", tok).name == "plain"
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prompt = PROTOCOLS["chat-cot"].prompt(PROBLEM.question, tok)
    assert isinstance(prompt, str)
    assert prompt.startswith("<|user|>Solve the following math word problem.")
    assert prompt.endswith(f"{PROBLEM.question}\n<|assistant|>")


def test_qa_protocol_is_the_synthetic_corpus_layout() -> None:
    qa = PROTOCOLS["qa"]
    assert qa.prompt("What is 2 + 3?") == "Question: What is 2 + 3?\nAnswer:"
    assert qa.stop_strings == ("Question:",) and qa.add_special_tokens is True


def test_primary_extractor_decides_and_every_extractor_is_recorded() -> None:
    response = " 2 + 3 = 5. The answer is 5.\n#### 6"
    strict = PROTOCOLS["qa"].score(response, "6")
    assert strict.ok and strict.pred == "6"
    assert strict.extracted["answer-is"] == "5" and strict.correct["answer-is"] is False
    flexible = PROTOCOLS["plain"].score(response, "5")
    assert flexible.pred == "6" and not flexible.ok  # plain judges the last number
    assert PROTOCOLS["qa"].score("no answer here", "6").pred is None


def test_protocol_key_changes_with_anything_that_decides_a_score() -> None:
    from dataclasses import replace

    qa = PROTOCOLS["qa"]
    assert qa.key() == PROTOCOLS["qa"].key() and qa.key().startswith("qa@")
    assert replace(qa, primary="flexible").key() != qa.key()
    assert replace(qa, stop_strings=()).key() != qa.key()
    assert len({p.key() for p in PROTOCOLS.values()}) == len(PROTOCOLS)
