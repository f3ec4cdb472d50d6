"""How a synthetic word problem is built: exact arithmetic, templates as data, one filler.

Why templates are data: every template does the same four things - draw its numbers and
words, compute a chain of calculator steps (each stated in a sentence of the worked solution),
state the facts of the question, and ask. So a template is a :class:`Template` record (a
``draw`` function plus format strings) and :func:`fill` is the one function that turns any of
them into text, which keeps the arithmetic and the prose from ever disagreeing: every value the
solution states is computed by :meth:`Work.calc` from its expression, never typed in.

:func:`evaluate` recomputes a calculator annotation without ``eval`` so tests (and users) can
check every generated problem.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from shoestring.data.problem_words import NAMES

_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
}


def evaluate(expr: str) -> int:
    """Evaluate a calculator annotation such as ``3*4+2`` exactly, without ``eval``.

    Only integer literals and ``+ - * /`` are accepted; a division must be exact and no value
    may be negative, because that is the contract every generated problem keeps. Raises
    ``ValueError`` otherwise, so a checker can use it on untrusted text.
    """

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div):
                if b == 0 or a % b:
                    raise ValueError(f"inexact division in {expr!r}")
                out = a // b
            elif type(node.op) in _BINOPS:
                out = _BINOPS[type(node.op)](a, b)
            else:
                raise ValueError(f"operator not allowed in {expr!r}")
            if out < 0:
                raise ValueError(f"negative intermediate value in {expr!r}")
            return out
        raise ValueError(f"not an integer expression: {expr!r}")

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an integer expression: {expr!r}") from exc
    return walk(tree.body)


class Work:
    """The worked solution of one problem: prose lines plus the calculator record."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ops: list[list[Any]] = []

    def calc(self, expr: str, money: bool = False) -> tuple[str, int]:
        """Compute ``expr`` and return its GSM8K rendering ``3 * 4 = <<3*4=12>>12`` and value."""
        value = evaluate(expr)
        compact = expr.replace(" ", "")
        self.ops.append([compact, value])
        dollar = "$" if money else ""
        return f"{expr} = {dollar}<<{compact}={value}>>{value}", value

    def say(self, line: str) -> None:
        self.lines.append(line)

    def answer(self, final: int) -> str:
        return "\n".join(self.lines) + f"\n#### {final}"


class Ctx:
    """Per-problem random choices (names, words, numbers) from the shared generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used_names: list[str] = []

    def name(self) -> str:
        """A character name not used yet in this problem."""
        while True:
            n = self.rng.choice(NAMES)
            if n not in self.used_names:
                self.used_names.append(n)
                return n

    def pick(self, options: list[str]) -> str:
        return self.rng.choice(options)

    def num(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class Step(NamedTuple):
    """One calculator step: ``expr`` is computed, its value stored as ``result``, then ``say``
    (which may use ``{t}``, the rendered calculation) becomes a line of the worked solution."""

    result: str
    expr: str
    say: str
    money: bool = False


class Distractor(NamedTuple):
    """A sentence with a number the solution never uses (level 3 only).

    ``{x}`` in ``text`` is a fresh random number mapped to a plausible range:
    ``(x % mod if mod else x) * mul + add``.
    """

    text: str
    mod: int = 0
    add: int = 0
    mul: int = 1

    def number(self, x: int) -> int:
        return (x % self.mod if self.mod else x) * self.mul + self.add


# Sentences about the main character (``{who}``) that hold numbers the solution never uses.
GENERIC_DISTRACTORS = (
    Distractor("{who} is {x} years old."),
    Distractor("{who} has {x} cousins."),
    Distractor("It takes {who} {x} minutes to walk to the park."),
    Distractor("{who}'s house has {x} windows."),
    Distractor("{who} has read {x} books this year."),
)


@dataclass(frozen=True)
class Template:
    """One kind of word problem; every text field is a ``str.format`` string over the drawn
    variables and the step results.

    ``draw`` makes all the random choices (in a fixed order: the order is part of what a seed
    means), ``steps`` the worked solution, ``facts`` the question's sentences and ``ask`` its
    final question. ``about`` names the variable holding the main character when the generic
    distractors apply to this template.
    """

    name: str
    draw: Callable[[Ctx], dict[str, Any]]
    steps: tuple[Step, ...]
    facts: tuple[str, ...]
    ask: str
    distractors: tuple[Distractor, ...] = ()
    about: str | None = None


MakeSentence = Callable[[int], str]


def fill(template: Template, ctx: Ctx, work: Work) -> tuple[list[str], str, list[MakeSentence]]:
    """Draw, compute and write one problem: (question sentences, final question, distractors).

    The distractors are callables taking a fresh number and returning a sentence, in the
    template's order followed by the generic ones; only level 3 uses them.
    """
    v = template.draw(ctx)
    for step in template.steps:
        # the value is stored before the sentence is written: a sentence may state it
        rendered, v[step.result] = work.calc(step.expr.format(**v), money=step.money)
        work.say(step.say.format(**v, t=rendered))
    facts = [f.format(**v) for f in template.facts]
    pool = list(template.distractors)
    if template.about is not None:
        v["who"] = v[template.about]  # the generic distractors speak of ``{who}``
        pool += GENERIC_DISTRACTORS

    # a factory, not a lambda in the comprehension: each closure must bind its own ``d``
    def sentence(d: Distractor) -> MakeSentence:
        return lambda x: d.text.format(**v, x=d.number(x))

    return facts, template.ask.format(**v), [sentence(d) for d in pool]
