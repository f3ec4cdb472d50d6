"""Final-answer extraction and number normalisation for GSM8K-style math answers.

Why this module exists: an accuracy number is only as honest as the code that decides what a
model "answered". lm-evaluation-harness reports two filters for GSM8K (``strict-match`` on
``#### N`` and ``flexible-extract`` on the last number); chat models usually write "The answer
is N" or ``\\boxed{N}`` instead. We run every extractor on every response and record all of
them, so a report can say which protocol produced a number instead of silently picking one.

All extractors share one normaliser, :func:`normalize_number`, so "1,234", "$1,234.00" and
"1234" compare equal, and gold answers go through exactly the same code (:func:`parse_gold`).

Canonical form (a string, so it can be stored in JSON and compared by eye):

- integers without separators or sign noise: ``"12"``, ``"-3"``, ``"0"``;
- terminating decimals in minimal form: ``"12.5"`` (from ``"12.50"``), ``"0.75"`` (from ``"3/4"``);
- non-terminating fractions stay exact as a reduced fraction: ``"1/3"``.

Percent signs are dropped without scaling ("50%" -> "50") because GSM8K gold answers to
percentage questions are written as the bare number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction

__all__ = [
    "EXTRACTORS",
    "AnswerFormatError",
    "extract_all",
    "extract_answer_is",
    "extract_boxed",
    "extract_flexible",
    "extract_strict",
    "is_correct",
    "normalize_number",
    "parse_gold",
    "to_fraction",
]


class AnswerFormatError(ValueError):
    """A gold answer field has no usable ``#### N`` line (the data file is malformed)."""


# Unicode minus (U+2212) and en dash are written by some models and by LaTeX-to-text output.
_MINUS = "-\u2212\u2013"
_CURRENCY = "$\u20ac\u00a3\u00a5"  # $ EUR GBP YEN

# One number as people write it: optional sign and currency in either order, digits with
# optional comma groups (commas are dropped, as lm-eval's ``regexes_to_ignore`` does), an
# optional decimal part, an optional "/ denominator" and an optional percent sign. The sign is
# only a sign when it is not glued to a preceding word or digit ("3-4" is not "3" and "-4").
_NUMBER_RE = re.compile(
    rf"""
    (?<![0-9A-Za-z.])
    (?P<sign>[{_MINUS}])?
    (?:[{re.escape(_CURRENCY)}]\s?)?
    (?P<sign2>[{_MINUS}])?
    (?P<int>\d+(?:,\d+)*)?
    (?(int)(?:\.(?P<frac>\d+))?|\.(?P<frac_only>\d+))
    (?:\s?/\s?(?P<den>\d+(?:,\d+)*))?
    (?!\d)
    """,
    re.VERBOSE,
)
# LaTeX fractions inside \boxed{...} or "$\frac{3}{4}$".
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def _fraction_to_canonical(value: Fraction) -> str:
    """Render a Fraction exactly: integer, minimal terminating decimal, or reduced a/b."""
    if value.denominator == 1:
        return str(value.numerator)
    # a fraction terminates in base 10 exactly when its denominator is 2^a * 5^b
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:  # does not terminate in base 10: keep it exact
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)  # the smallest power of ten the denominator divides
    scaled = abs(value.numerator) * (10**places // value.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"-{text}" if value < 0 else text


def _match_to_fraction(m: re.Match[str]) -> Fraction | None:
    whole = m.group("int")
    frac = m.group("frac") or m.group("frac_only")
    if whole is None and frac is None:
        return None
    text = (whole or "0").replace(",", "") + (f".{frac}" if frac else "")
    value = Fraction(text)
    den = m.group("den")
    if den is not None:
        den_value = Fraction(den.replace(",", ""))
        if den_value == 0:
            return None
        value /= den_value
    negative = bool(m.group("sign")) != bool(m.group("sign2"))  # "-$-5": two signs cancel
    return -value if negative else value


def _find_numbers(text: str) -> list[tuple[re.Match[str], Fraction]]:
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    found = []
    for m in _NUMBER_RE.finditer(text):
        value = _match_to_fraction(m)
        if value is not None:
            found.append((m, value))
    return found


def to_fraction(s: str | None) -> Fraction | None:
    """The exact value of the first number in ``s`` (None if there is none)."""
    if not s:
        return None
    numbers = _find_numbers(s)
    return numbers[0][1] if numbers else None


def normalize_number(s: str | None) -> str | None:
    """Canonical string for the first number in ``s``; None when ``s`` holds no number.

    Handles thousands separators ("1,234"), currency ("$5", "€5"), percent ("50%" -> "50"),
    trailing periods ("18."), ASCII and Unicode minus ("-3", "−3"), trailing zeros
    ("12.0" -> "12", "12.50" -> "12.5"), simple and LaTeX fractions ("3/4", "\\frac{3}{4}" ->
    "0.75", computed exactly with :class:`fractions.Fraction`) and words around the number
    ("about 5 apples" -> "5"). When several numbers are present the first one wins: callers
    that want a different one (the last, the one after "####") select it first.
    """
    value = to_fraction(s)
    return None if value is None else _fraction_to_canonical(value)


# --- extractors -------------------------------------------------------------------------------

# lm-evaluation-harness gsm8k.yaml, filter "strict-match": first match of this regex.
_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm-evaluation-harness gsm8k.yaml, filter "flexible-extract": last match (group_select -1).
_FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_ANSWER_IS_RE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is)?)"
    r"[\s:*_=]*(?:\\\(|\\\[|\$|\\boxed\{|\\text\{)*\s*"
    rf"([{_MINUS}]?\s?[{re.escape(_CURRENCY)}]?\s?[{_MINUS}]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?\d+)?)",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")


def extract_strict(response: str) -> str | None:
    """The number after the first ``#### `` (lm-eval's strict-match), normalised.

    Exactly lm-eval's regex ``#### (\\-?[0-9\\.\\,]+)`` with take-first; a capture without
    digits (e.g. "#### ...") yields None where lm-eval would keep the junk and score it wrong.
    """
    m = _STRICT_RE.search(response)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(response: str) -> str | None:
    """The last number in the text (lm-eval's flexible-extract), normalised.

    Uses lm-eval's regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` and its last match, except that
    matches without any digit (an ellipsis "...", a lone "$,") are skipped: lm-eval would
    return "..." for "The answer is 5. Done..." and score it wrong. A Unicode minus right
    before the match counts as a sign (lm-eval's regex only knows "-").
    """
    for m in reversed(list(_FLEXIBLE_RE.finditer(response))):
        candidate = m.group(1) or m.group(2)
        if any(ch.isdigit() for ch in candidate):
            if m.start() > 0 and response[m.start() - 1] == "\u2212":  # Unicode minus
                candidate = "-" + candidate
            return normalize_number(candidate)
    return None


def extract_answer_is(response: str) -> str | None:
    """The number after the last "the answer is" / "final answer:" (case-insensitive)."""
    matches = list(_ANSWER_IS_RE.finditer(_LATEX_FRAC_RE.sub(r"\1/\2", response)))
    return normalize_number(matches[-1].group(1)) if matches else None


def extract_boxed(response: str) -> str | None:
    """The number inside the last ``\\boxed{...}`` (LaTeX ``\\frac`` allowed inside)."""
    matches = list(_BOXED_RE.finditer(response))
    return normalize_number(matches[-1].group(1)) if matches else None


Extractor = Callable[[str], "str | None"]

#: Every extractor by name; results files store one prediction per name.
EXTRACTORS: dict[str, Extractor] = {
    "strict": extract_strict,
    "flexible": extract_flexible,
    "answer-is": extract_answer_is,
    "boxed": extract_boxed,
}


def extract_all(response: str) -> dict[str, str | None]:
    """Run every registered extractor on one response: ``{name: canonical number or None}``."""
    return {name: fn(response) for name, fn in EXTRACTORS.items()}


def parse_gold(answer_field: str) -> str:
    """The canonical gold answer from a GSM8K ``answer`` field (its ``#### N`` line).

    Raises :class:`AnswerFormatError` when there is no ``####`` or it holds no number, so a
    loader can report the bad line instead of scoring against garbage.
    """
    marker = answer_field.rfind("####")  # GSM8K's final line; the last marker wins
    if marker < 0:
        raise AnswerFormatError("no '#### N' line in the answer")
    tail = answer_field[marker + 4 :].strip()
    gold = normalize_number(tail.splitlines()[0]) if tail else None
    if gold is None:
        raise AnswerFormatError(f"no number after '####': {answer_field[marker : marker + 40]!r}")
    return gold


def is_correct(pred: str | None, gold: str, rel_tol: float = 1e-4) -> bool:
    """Numeric equality of a prediction and a gold answer (both canonical or raw strings).

    Integers compare exactly. When either side has a fractional part, a relative tolerance
    (default 1e-4) absorbs a model writing 0.3333 for 1/3; exact fractions still compare
    exactly first. A missing prediction (None) is wrong.
    """
    p = to_fraction(pred)
    g = to_fraction(gold)
    if p is None or g is None:
        return False
    if p == g:
        return True
    if p.denominator == 1 and g.denominator == 1:
        return False
    return math.isclose(float(p), float(g), rel_tol=rel_tol, abs_tol=1e-12)
