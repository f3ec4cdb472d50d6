"""Answer extraction and normalisation: the code that decides what a model "answered"."""

from __future__ import annotations

import pytest

from shoestring.data.answers import (
    EXTRACTORS,
    AnswerFormatError,
    extract_all,
    is_correct,
    normalize_number,
    parse_gold,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("1,000,000.00", "1000000"),
        ("$5", "5"),
        ("\u20ac5", "5"),
        ("5 dollars", "5"),
        ("50%", "50"),
        ("18.", "18"),
        ("-3", "-3"),
        ("\u22123", "-3"),  # Unicode minus
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("12.0", "12"),
        ("12.50", "12.5"),
        ("0.10", "0.1"),
        (".5", "0.5"),
        ("3/4", "0.75"),
        ("1/3", "1/3"),  # non-terminating: stays an exact fraction
        ("6/3", "2"),
        (r"\frac{3}{4}", "0.75"),
        ("about 5 apples", "5"),
        ("3-4", "3"),  # a range, not "3" and "-4"
        ("-0", "0"),
        ("10/0", None),
        ("no number", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_number(text: str | None, expected: str | None) -> None:
    assert normalize_number(text) == expected


# response, then expected {strict, flexible, answer-is, boxed}
RESPONSES = [
    # the GSM8K reference format
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", ("72", "72", None, None)),
    # thousands separators and dollars
    (
        "She pays $1,234.50 in total. The answer is $1,234.50.",
        (None, "1234.5", "1234.5", None),
    ),
    ("#### 1,000", ("1000", "1000", None, None)),
    # negatives
    ("The temperature drops to -3 degrees.\n#### -3", ("-3", "-3", None, None)),
    ("The answer is \u22127", (None, "-7", "-7", None)),
    # decimals with trailing zeros
    ("Each costs 2.50 so the final answer: 12.50", (None, "12.5", "12.5", None)),
    # several numbers: flexible takes the last, answer-is the one after the phrase
    ("The answer is 5, because 2 + 3 = 5 and 10 - 5 = 5.", (None, "5", "5", None)),
    ("First 3, then 4, then 9 apples", (None, "9", None, None)),
    # no number at all
    ("I cannot solve this.", (None, None, None, None)),
    # #### in the middle, followed by more text: strict takes the first ####
    ("So #### 42\nQuestion: next problem has 7 and 8", ("42", "8", None, None)),
    # percent
    ("Sales grew by 50%.", (None, "50", None, None)),
    # fractions: flexible keeps lm-eval's behaviour (last integer); boxed understands \frac
    (r"The final answer is \boxed{\frac{3}{4}}", (None, "4", "0.75", "0.75")),
    (r"So the total is $\boxed{18}$ dollars.", (None, "18", None, "18")),
    (r"\boxed{1,200} and later \boxed{$30}", (None, "30", None, "30")),
    # trailing period
    ("The answer is 18.", (None, "18", "18", None)),
    # case-insensitive, last occurrence, markdown bold
    ("the answer is 3. Wait. The Answer Is **4**", (None, "4", "4", None)),
    # ellipsis after the number: lm-eval's regex would pick "..."
    ("The answer is 5. Done...", (None, "5", "5", None)),
    # strict needs "#### " with a space, exactly like lm-eval
    ("####72", (None, "72", None, None)),
]


@pytest.mark.parametrize(("response", "expected"), RESPONSES)
def test_extractors_on_tricky_responses(response: str, expected: tuple) -> None:
    got = extract_all(response)
    assert tuple(got[name] for name in ("strict", "flexible", "answer-is", "boxed")) == expected


def test_extractor_registry_is_complete() -> None:
    assert set(EXTRACTORS) == {"strict", "flexible", "answer-is", "boxed"}
    assert set(extract_all("#### 1")) == set(EXTRACTORS)


def test_parse_gold() -> None:
    assert parse_gold("Step one <<2*3=6>>6.\n#### 1,000") == "1000"
    assert parse_gold("Half is 0.5\n#### 0.50") == "0.5"
    assert parse_gold("#### -12") == "-12"
    with pytest.raises(AnswerFormatError):
        parse_gold("no final answer line")
    with pytest.raises(AnswerFormatError):
        parse_gold("#### none")


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("1,234", "1234", True),
        ("17", "18", False),
        ("10000", "10001", False),  # integers compare exactly, no tolerance
        ("0.75", "3/4", True),
        ("0.3333", "1/3", True),  # within the relative tolerance for decimals
        ("0.33", "1/3", False),
        ("-3", "3", False),
        (None, "18", False),
    ],
)
def test_is_correct(pred: str | None, gold: str, ok: bool) -> None:
    assert is_correct(pred, gold) is ok
