"""Seeded grade-school arithmetic word problems in GSM8K's format.

Why synthetic problems: the quickstart, the tests and the progressive (curriculum) RL runs need
math data that is small, free of licences, exactly checkable and graded by difficulty. Each
problem is a dict ``{"question", "answer", "level", "template", "ops"}`` where ``answer`` is
written like GSM8K's: worked lines with calculator annotations
(``Tom buys 3 * 4 = <<3*4=12>>12 apples.``) and a final ``#### 12`` line, so the same reward
and benchmark code reads GSM8K and this data alike.

Levels:

1. one operation;
2. two to three operations;
3. four or more operations, with distractors (sentences holding numbers that the solution
   does not use), which is what makes GSM8K hard for small models.

Everything draws from one ``random.Random(seed)``; nothing touches global random state or
iterates a ``set``, so a seed gives the same problems on every machine and Python run. Numbers
are chosen so that every division is exact and every intermediate value is a non-negative
integer; :func:`evaluate` recomputes each annotation so tests (and users) can check that.
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from shoestring.runs.rundir import atomic_open

__all__ = [
    "LEVELS",
    "evaluate",
    "generate_problems",
    "iter_problems",
    "problems_to_text",
    "template_names",
    "write_corpus",
    "write_jsonl",
]

LEVELS = (1, 2, 3)

# fmt: off
NAMES = [
    "Tom", "Maria", "Liam", "Aisha", "Noah", "Sofia", "Ethan", "Mei", "Lucas", "Fatima",
    "Oliver", "Priya", "James", "Yuki", "Mateo", "Chloe", "Omar", "Hannah", "Diego", "Grace",
    "Kofi", "Elena", "Ravi", "Zoe", "Samuel", "Ingrid", "Jamal", "Lena", "Hiro", "Amara",
    "Ben", "Carmen", "Felix", "Nadia", "Pablo", "Rosa", "Theo", "Uma", "Victor", "Wendy",
]
SHOP_ITEMS = [
    "notebooks", "pencils", "apples", "stickers", "comic books", "bottles of juice",
    "packs of gum", "oranges", "toy cars", "markers", "erasers", "cupcakes", "candles",
    "socks", "postcards", "bananas", "batteries", "paintbrushes",
]
SNACKS = ["cookies", "grapes", "candies", "crackers", "strawberries", "pretzels", "almonds",
          "cherries", "chocolates", "marshmallows"]
PASTRIES = ["muffins", "cookies", "cupcakes", "rolls", "brownies", "scones", "bagels", "pies",
            "croissants", "tarts"]
VEHICLES = ["bus", "train", "truck", "car", "ferry", "van", "motorbike", "tractor"]
THINGS = ["book", "board game", "scarf", "kite", "puzzle", "water bottle", "backpack", "hat",
          "lamp", "football"]
COLLECTIBLES = ["seashells", "marbles", "stamps", "trading cards", "coins", "buttons", "rocks",
                "feathers", "badges"]
PLANTS = ["tomato", "pepper", "lettuce", "carrot", "bean", "sunflower", "cabbage", "onion",
          "strawberry"]
CROPS = ["tomatoes", "peppers", "cucumbers", "zucchinis", "apples", "lemons", "plums", "pears"]
JOBS = ["at a cafe", "at the library", "at a bike shop", "as a dog walker", "at a bakery",
        "as a tutor", "at the farm stand", "at a bookstore"]
# fmt: on


# ----------------------------------------------------------------------------- arithmetic

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


class _Work:
    """The worked solution of one problem: prose lines plus the calculator record.

    Every value the solution states is computed here from its expression (never typed in by a
    template), so the text and the arithmetic cannot disagree.
    """

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


class _Ctx:
    """Per-problem random choices (names, numbers, distractors) from the shared generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used_names: list[str] = []

    def name(self) -> str:
        while True:
            n = self.rng.choice(NAMES)
            if n not in self.used_names:
                self.used_names.append(n)
                return n

    def pick(self, options: list[str]) -> str:
        return self.rng.choice(options)

    def num(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


# A template fills a _Work and returns (question sentences, the final question, distractors).
# Distractors are callables taking a fresh number and returning a sentence; they are only
# used at level 3.
_Distractor = Callable[[int], str]
_Result = tuple[list[str], str, list[_Distractor]]
_Template = Callable[[_Ctx, _Work], _Result]

_TEMPLATES: dict[int, dict[str, _Template]] = {1: {}, 2: {}, 3: {}}


def _template(level: int, name: str) -> Callable[[_Template], _Template]:
    def register(fn: _Template) -> _Template:
        _TEMPLATES[level][name] = fn
        return fn

    return register


def template_names(level: int | None = None) -> list[str]:
    """Names of the templates of one level (or all), in registration order."""
    levels = LEVELS if level is None else (level,)
    return [n for lv in levels for n in _TEMPLATES[lv]]


# ----------------------------------------------------------------------------- level 1


@_template(1, "shopping")
def _l1_shopping(c: _Ctx, w: _Work) -> _Result:
    n, item, qty, price = c.name(), c.pick(SHOP_ITEMS), c.num(2, 12), c.num(2, 15)
    t, total = w.calc(f"{qty} * {price}", money=True)
    w.say(f"{n} spends {t} on {item}.")
    return (
        [f"{n} buys {qty} {item} that cost ${price} each."],
        f"How much money does {n} spend?",
        [],
    )


@_template(1, "sharing")
def _l1_sharing(c: _Ctx, w: _Work) -> _Result:
    n, snack, k, each = c.name(), c.pick(SNACKS), c.num(2, 8), c.num(2, 12)
    t, _ = w.calc(f"{k * each} / {k}")
    w.say(f"Each friend gets {t} {snack}.")
    return (
        [f"{n} has {k * each} {snack} and shares them equally among {k} friends."],
        f"How many {snack} does each friend get?",
        [],
    )


@_template(1, "baking")
def _l1_baking(c: _Ctx, w: _Work) -> _Result:
    n, p, a, b = c.name(), c.pick(PASTRIES), c.num(5, 40), c.num(5, 40)
    t, _ = w.calc(f"{a} + {b}")
    w.say(f"{n} bakes {t} {p} in total.")
    return (
        [f"{n} baked {a} {p} in the morning and {b} {p} in the afternoon."],
        f"How many {p} did {n} bake in total?",
        [],
    )


@_template(1, "travel")
def _l1_travel(c: _Ctx, w: _Work) -> _Result:
    v, speed, hours = c.pick(VEHICLES), 5 * c.num(4, 14), c.num(2, 6)
    t, _ = w.calc(f"{speed} * {hours}")
    w.say(f"The {v} travels {t} miles.")
    return (
        [f"A {v} travels at {speed} miles per hour."],
        f"How many miles does it travel in {hours} hours?",
        [],
    )


@_template(1, "savings")
def _l1_savings(c: _Ctx, w: _Work) -> _Result:
    n, thing, have = c.name(), c.pick(THINGS), c.num(20, 120)
    cost = c.num(5, have - 1)
    t, _ = w.calc(f"{have} - {cost}", money=True)
    w.say(f"{n} has {t} left.")
    return (
        [f"{n} had ${have} in a piggy bank and spent ${cost} on a {thing}."],
        f"How much money does {n} have left?",
        [],
    )


@_template(1, "ages")
def _l1_ages(c: _Ctx, w: _Work) -> _Result:
    n, m, age, diff = c.name(), c.name(), c.num(5, 40), c.num(2, 30)
    t, _ = w.calc(f"{age} + {diff}")
    w.say(f"{m} is {t} years old.")
    return (
        [f"{n} is {age} years old.", f"{m} is {diff} years older than {n}."],
        f"How old is {m}?",
        [],
    )


@_template(1, "classroom")
def _l1_classroom(c: _Ctx, w: _Work) -> _Result:
    who, kids = c.rng.choice(
        [
            ("teacher", "students"),
            ("coach", "players"),
            ("camp leader", "campers"),
            ("librarian", "children"),
        ]
    )
    g, groups = c.num(2, 8), c.num(2, 12)
    t, _ = w.calc(f"{g * groups} / {g}")
    w.say(f"There are {t} groups.")
    return (
        [f"A {who} splits {g * groups} {kids} into groups of {g}."],
        "How many groups are there?",
        [],
    )


@_template(1, "garden")
def _l1_garden(c: _Ctx, w: _Work) -> _Result:
    n, plant, rows, per = c.name(), c.pick(PLANTS), c.num(2, 12), c.num(3, 15)
    t, _ = w.calc(f"{rows} * {per}")
    w.say(f"{n} plants {t} {plant} plants.")
    return (
        [f"{n} plants {rows} rows of {plant} plants with {per} plants in each row."],
        f"How many {plant} plants does {n} plant?",
        [],
    )


@_template(1, "reading")
def _l1_reading(c: _Ctx, w: _Work) -> _Result:
    n, pages = c.name(), c.num(60, 400)
    read = c.num(10, pages - 5)
    t, _ = w.calc(f"{pages} - {read}")
    w.say(f"{n} has {t} pages left to read.")
    return (
        [f"A book has {pages} pages.", f"{n} has already read {read} pages."],
        "How many pages are left to read?",
        [],
    )


@_template(1, "collection")
def _l1_collection(c: _Ctx, w: _Work) -> _Result:
    n, m, thing, have = c.name(), c.name(), c.pick(COLLECTIBLES), c.num(15, 90)
    give = c.num(2, have - 3)
    t, _ = w.calc(f"{have} - {give}")
    w.say(f"{n} has {t} {thing} now.")
    return (
        [f"{n} collected {have} {thing} and gave {give} of them to {m}."],
        f"How many {thing} does {n} have now?",
        [],
    )


# ----------------------------------------------------------------------------- level 2


@_template(2, "shopping-two-items")
def _l2_two_items(c: _Ctx, w: _Work) -> _Result:
    n = c.name()
    i1, i2 = c.rng.sample(SHOP_ITEMS, 2)
    q1, p1, q2, p2 = c.num(2, 9), c.num(2, 12), c.num(2, 9), c.num(2, 12)
    t1, a = w.calc(f"{q1} * {p1}", money=True)
    w.say(f"The {i1} cost {t1}.")
    t2, b = w.calc(f"{q2} * {p2}", money=True)
    w.say(f"The {i2} cost {t2}.")
    t3, _ = w.calc(f"{a} + {b}", money=True)
    w.say(f"{n} spends {t3} in total.")
    return (
        [f"{n} buys {q1} {i1} for ${p1} each and {q2} {i2} for ${p2} each."],
        f"How much does {n} spend in total?",
        [],
    )


@_template(2, "shopping-change")
def _l2_change(c: _Ctx, w: _Work) -> _Result:
    n, item, qty, price = c.name(), c.pick(SHOP_ITEMS), c.num(2, 8), c.num(2, 12)
    cost = qty * price
    bill = next(b for b in (20, 50, 100) if b >= cost)
    t1, a = w.calc(f"{qty} * {price}", money=True)
    w.say(f"The {item} cost {t1}.")
    t2, _ = w.calc(f"{bill} - {a}", money=True)
    w.say(f"{n} gets {t2} in change.")
    return (
        [f"{n} buys {qty} {item} at ${price} each and pays with a ${bill} bill."],
        f"How much change does {n} get?",
        [],
    )


@_template(2, "baking-leftover")
def _l2_baking(c: _Ctx, w: _Work) -> _Result:
    n, p, trays, per = c.name(), c.pick(PASTRIES), c.num(2, 6), c.num(6, 16)
    eaten = c.num(1, trays * per - 1)
    t1, total = w.calc(f"{trays} * {per}")
    w.say(f"{n} bakes {t1} {p}.")
    t2, _ = w.calc(f"{total} - {eaten}")
    w.say(f"There are {t2} {p} left.")
    return (
        [
            f"{n} bakes {trays} trays of {p} with {per} {p} on each tray.",
            f"The family eats {eaten} of them.",
        ],
        f"How many {p} are left?",
        [],
    )


@_template(2, "travel-two-legs")
def _l2_travel(c: _Ctx, w: _Work) -> _Result:
    n, v = c.name(), c.pick(VEHICLES)
    s1, h1, s2, h2 = 5 * c.num(6, 14), c.num(1, 4), 5 * c.num(4, 12), c.num(1, 4)
    t1, a = w.calc(f"{s1} * {h1}")
    w.say(f"First {n} drives {t1} miles.")
    t2, b = w.calc(f"{s2} * {h2}")
    w.say(f"Then {n} drives {t2} miles.")
    t3, _ = w.calc(f"{a} + {b}")
    w.say(f"In total {n} drives {t3} miles.")
    return (
        [
            f"{n} drives a {v} at {s1} miles per hour for {h1} hours, then at {s2} miles "
            f"per hour for {h2} hours."
        ],
        f"How many miles does {n} drive in total?",
        [],
    )


@_template(2, "savings-weeks")
def _l2_savings(c: _Ctx, w: _Work) -> _Result:
    n, thing, per, weeks = c.name(), c.pick(THINGS), c.num(3, 20), c.num(3, 12)
    cost = c.num(1, per * weeks - 1)
    t1, total = w.calc(f"{per} * {weeks}", money=True)
    w.say(f"{n} saves {t1}.")
    t2, _ = w.calc(f"{total} - {cost}", money=True)
    w.say(f"After buying the {thing}, {n} has {t2} left.")
    return (
        [
            f"{n} saves ${per} every week for {weeks} weeks.",
            f"Then {n} buys a {thing} that costs ${cost}.",
        ],
        f"How much money does {n} have left?",
        [],
    )


@_template(2, "ages-twice")
def _l2_ages(c: _Ctx, w: _Work) -> _Result:
    a, b, d = c.name(), c.name(), c.name()
    age = c.num(4, 30)
    diff = c.num(1, 2 * age - 1)
    t1, older = w.calc(f"2 * {age}")
    w.say(f"{b} is {t1} years old.")
    t2, _ = w.calc(f"{older} - {diff}")
    w.say(f"{d} is {t2} years old.")
    return (
        [
            f"{a} is {age} years old.",
            f"{b} is twice as old as {a}.",
            f"{d} is {diff} years younger than {b}.",
        ],
        f"How old is {d}?",
        [],
    )


@_template(2, "classroom-vans")
def _l2_vans(c: _Ctx, w: _Work) -> _Result:
    classes, seats = c.num(2, 6), c.rng.choice([4, 5, 6, 8, 10])
    per = seats * c.num(2, 4) if c.rng.random() < 0.5 else c.num(12, 30)
    while (classes * per) % seats:
        per += 1
    t1, total = w.calc(f"{classes} * {per}")
    w.say(f"There are {t1} students.")
    t2, _ = w.calc(f"{total} / {seats}")
    w.say(f"They need {t2} vans.")
    return (
        [
            f"A school has {classes} classes with {per} students in each class.",
            f"For a field trip the students ride in vans with {seats} seats each, and every "
            "van is full.",
        ],
        "How many vans do they need?",
        [],
    )


@_template(2, "garden-rabbits")
def _l2_garden(c: _Ctx, w: _Work) -> _Result:
    n, plant, rows, per = c.name(), c.pick(PLANTS), c.num(3, 10), c.num(4, 12)
    eaten = c.num(1, rows * per - 1)
    t1, total = w.calc(f"{rows} * {per}")
    w.say(f"{n} has {t1} {plant} plants.")
    t2, _ = w.calc(f"{total} - {eaten}")
    w.say(f"{t2} {plant} plants are left.")
    return (
        [
            f"{n} has {rows} rows of {plant} plants with {per} plants in each row.",
            f"Rabbits eat {eaten} of the plants.",
        ],
        f"How many {plant} plants are left?",
        [],
    )


@_template(2, "sharing-bags")
def _l2_bags(c: _Ctx, w: _Work) -> _Result:
    n, snack, kids = c.name(), c.pick(SNACKS), c.num(2, 6)
    if c.rng.random() < 0.5:
        bags, per = kids * c.num(1, 3), c.num(3, 12)
    else:
        bags, per = c.num(2, 6), kids * c.num(1, 4)
    t1, total = w.calc(f"{bags} * {per}")
    w.say(f"There are {t1} {snack}.")
    t2, _ = w.calc(f"{total} / {kids}")
    w.say(f"Each child gets {t2} {snack}.")
    return (
        [
            f"{n} has {bags} bags with {per} {snack} in each bag.",
            f"{n} shares all of them equally among {kids} children.",
        ],
        f"How many {snack} does each child get?",
        [],
    )


@_template(2, "work-pay")
def _l2_work(c: _Ctx, w: _Work) -> _Result:
    n, job, hours, days, wage = c.name(), c.pick(JOBS), c.num(2, 8), c.num(2, 6), c.num(8, 20)
    t1, total_h = w.calc(f"{hours} * {days}")
    w.say(f"{n} works {t1} hours.")
    t2, _ = w.calc(f"{total_h} * {wage}", money=True)
    w.say(f"{n} earns {t2}.")
    return (
        [f"{n} works {job} for {hours} hours a day on {days} days and is paid ${wage} per hour."],
        f"How much money does {n} earn?",
        [],
    )


@_template(2, "half-spend")
def _l2_half(c: _Ctx, w: _Work) -> _Result:
    n, thing, item = c.name(), c.pick(THINGS), c.pick(SHOP_ITEMS)
    have = 2 * c.num(10, 60)
    spend = c.num(1, have // 2 - 1)
    t1, half = w.calc(f"{have} / 2", money=True)
    w.say(f"{n} spends {t1} on the {thing}, so {n} has ${half} left.")
    t2, _ = w.calc(f"{half} - {spend}", money=True)
    w.say(f"After buying {item}, {n} has {t2} left.")
    return (
        [f"{n} has ${have}.", f"{n} spends half of it on a {thing} and then ${spend} on {item}."],
        f"How much money does {n} have left?",
        [],
    )


# ----------------------------------------------------------------------------- level 3


def _generic_distractors(c: _Ctx, n: str) -> list[_Distractor]:
    """Sentences about the main character that hold numbers the solution never uses."""
    return [
        lambda x: f"{n} is {x} years old.",
        lambda x: f"{n} has {x} cousins.",
        lambda x: f"It takes {n} {x} minutes to walk to the park.",
        lambda x: f"{n}'s house has {x} windows.",
        lambda x: f"{n} has read {x} books this year.",
    ]


@_template(3, "shopping-three-items")
def _l3_shopping(c: _Ctx, w: _Work) -> _Result:
    n = c.name()
    items = c.rng.sample(SHOP_ITEMS, 3)
    qs = [c.num(2, 6) for _ in items]
    ps = [c.num(2, 9) for _ in items]
    costs = []
    for item, q, p in zip(items, qs, ps, strict=True):
        t, v = w.calc(f"{q} * {p}", money=True)
        w.say(f"The {item} cost {t}.")
        costs.append(v)
    t, total = w.calc(" + ".join(map(str, costs)), money=True)
    w.say(f"Altogether {n} spends {t}.")
    bill = next(b for b in (50, 100, 200) if b >= total)
    t, _ = w.calc(f"{bill} - {total}", money=True)
    w.say(f"{n} gets {t} in change.")
    parts = [f"{q} {i} at ${p} each" for i, q, p in zip(items, qs, ps, strict=True)]
    return (
        [
            f"{n} goes to the store and buys {parts[0]}, {parts[1]} and {parts[2]}.",
            f"{n} pays with a ${bill} bill.",
        ],
        f"How much change does {n} get?",
        [
            lambda x: f"The store is {x} blocks from {n}'s home.",
            lambda x: f"{n} also has {x} coupons, but they have all expired.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "baking-sale")
def _l3_baking(c: _Ctx, w: _Work) -> _Result:
    n, p = c.name(), c.pick(PASTRIES)
    batches, per = c.num(3, 6), c.num(8, 16)
    total = batches * per
    friends = c.num(2, 6)
    rest = friends * c.num(1, max(1, (total - 2) // friends))
    while total - rest < 2:
        rest -= friends
    sold = total - rest
    s1 = c.num(1, sold - 1)
    s2 = sold - s1
    t, total = w.calc(f"{batches} * {per}")
    w.say(f"{n} bakes {t} {p}.")
    t, sold = w.calc(f"{s1} + {s2}")
    w.say(f"{n} sells {t} {p}.")
    t, rest = w.calc(f"{total} - {sold}")
    w.say(f"{t} {p} are left.")
    t, _ = w.calc(f"{rest} / {friends}")
    w.say(f"Each friend gets {t} {p}.")
    return (
        [
            f"{n} bakes {batches} batches of {p} with {per} {p} in each batch.",
            f"{n} sells {s1} {p} to a neighbor and {s2} {p} at the bake sale.",
            f"{n} shares the rest equally among {friends} friends.",
        ],
        f"How many {p} does each friend get?",
        [
            lambda x: f"The oven is set to {x * 5 + 200} degrees.",
            lambda x: f"Each {p[:-1]} sells for ${x}.",
            lambda x: f"The bake sale starts at {x % 12 + 1} o'clock.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "road-trip-fuel")
def _l3_road_trip(c: _Ctx, w: _Work) -> _Result:
    n, v = c.name(), c.pick(["car", "van", "truck", "camper"])
    mpg, price = c.rng.choice([10, 15, 20, 25, 30]), c.num(3, 5)
    while True:
        s1, h1, s2, h2 = 10 * c.num(3, 7), c.num(1, 4), 10 * c.num(3, 7), c.num(1, 4)
        if (s1 * h1 + s2 * h2) % mpg == 0:
            break
    t, a = w.calc(f"{s1} * {h1}")
    w.say(f"On the first part {n} drives {t} miles.")
    t, b = w.calc(f"{s2} * {h2}")
    w.say(f"On the second part {n} drives {t} miles.")
    t, dist = w.calc(f"{a} + {b}")
    w.say(f"The whole trip is {t} miles.")
    t, gallons = w.calc(f"{dist} / {mpg}")
    w.say(f"The {v} uses {t} gallons of gas.")
    t, _ = w.calc(f"{gallons} * {price}", money=True)
    w.say(f"The gas costs {t}.")
    return (
        [
            f"{n} drives a {v} at {s1} miles per hour for {h1} hours and then at {s2} miles "
            f"per hour for {h2} hours.",
            f"The {v} goes {mpg} miles on one gallon of gas.",
            f"Gas costs ${price} per gallon.",
        ],
        f"How much does {n} spend on gas?",
        [
            lambda x: f"There are {x % 4 + 2} passengers in the {v}.",
            lambda x: f"{n} leaves home at {x % 12 + 1} o'clock.",
            lambda x: f"The {v} is {x} years old.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "savings-job")
def _l3_savings(c: _Ctx, w: _Work) -> _Result:
    n, job, thing = c.name(), c.pick(JOBS), c.pick(THINGS)
    wage, hours, weeks = c.num(8, 15), c.num(3, 10), c.num(2, 6)
    total = wage * hours * weeks
    cost = c.num(5, total - 2)
    if (total - cost) % 2:
        cost += 1
    t, weekly = w.calc(f"{wage} * {hours}", money=True)
    w.say(f"Each week {n} earns {t}.")
    t, total = w.calc(f"{weekly} * {weeks}", money=True)
    w.say(f"In {weeks} weeks {n} earns {t}.")
    t, rest = w.calc(f"{total} - {cost}", money=True)
    w.say(f"After buying the {thing}, {n} has {t}.")
    t, _ = w.calc(f"{rest} / 2", money=True)
    w.say(f"{n} puts {t} into savings.")
    return (
        [
            f"{n} works {job} and earns ${wage} per hour.",
            f"{n} works {hours} hours each week for {weeks} weeks.",
            f"Then {n} buys a {thing} for ${cost} and puts half of the remaining money into "
            "a savings account.",
        ],
        f"How much money does {n} put into savings?",
        [
            lambda x: f"{n}'s friend works {x} hours each week.",
            lambda x: f"The savings account already has {x} other customers in {n}'s town.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "ages-family")
def _l3_ages(c: _Ctx, w: _Work) -> _Result:
    a, b, d = c.name(), c.name(), c.name()
    age, times, years = c.num(3, 12), c.num(3, 5), c.num(2, 10)
    diff = c.num(1, times * age - 1)
    t, older = w.calc(f"{times} * {age}")
    w.say(f"{b} is {t} years old.")
    t, younger = w.calc(f"{older} - {diff}")
    w.say(f"{d} is {t} years old.")
    t, fa = w.calc(f"{age} + {years}")
    w.say(f"In {years} years {a} will be {t}.")
    t, fd = w.calc(f"{younger} + {years}")
    w.say(f"In {years} years {d} will be {t}.")
    t, _ = w.calc(f"{fa} + {fd}")
    w.say(f"The sum of their ages will be {t}.")
    return (
        [
            f"{a} is {age} years old.",
            f"{b} is {times} times as old as {a}.",
            f"{d} is {diff} years younger than {b}.",
        ],
        f"What will be the sum of {a}'s and {d}'s ages in {years} years?",
        [
            lambda x: f"{a}'s dog is {x % 14 + 1} years old.",
            lambda x: f"{b} has lived in the same town for {x} years.",
        ]
        + _generic_distractors(c, a),
    )


@_template(3, "school-pencils")
def _l3_school(c: _Ctx, w: _Work) -> _Result:
    box = c.rng.choice([10, 12, 20, 24])
    while True:
        grades, classes, students, pens = c.num(2, 5), c.num(2, 4), c.num(15, 30), c.num(2, 5)
        if (grades * classes * students * pens) % box == 0:
            break
    t, cls = w.calc(f"{grades} * {classes}")
    w.say(f"There are {t} classes.")
    t, kids = w.calc(f"{cls} * {students}")
    w.say(f"There are {t} students.")
    t, total = w.calc(f"{kids} * {pens}")
    w.say(f"They need {t} pencils.")
    t, _ = w.calc(f"{total} / {box}")
    w.say(f"The school buys {t} boxes.")
    return (
        [
            f"A school has {grades} grades with {classes} classes in each grade.",
            f"Every class has {students} students, and every student gets {pens} pencils.",
            f"Pencils come in boxes of {box}.",
        ],
        "How many boxes of pencils does the school buy?",
        [
            lambda x: f"The school has {x} teachers.",
            lambda x: f"Each box of pencils costs ${x}.",
            lambda x: f"The school was built {x} years ago.",
        ],
    )


@_template(3, "garden-harvest")
def _l3_garden(c: _Ctx, w: _Work) -> _Result:
    n, crop = c.name(), c.pick(CROPS)
    rows, per, each, box = c.num(2, 6), c.num(3, 8), c.num(4, 12), c.rng.choice([5, 6, 8, 10])
    total = rows * per * each
    # total >= 24 >= 2 * box, so some count with (total - spoiled) % box == 0 fits below total
    spoiled = c.rng.choice([s for s in (total % box + box * j for j in range(3)) if 0 < s < total])
    t, plants = w.calc(f"{rows} * {per}")
    w.say(f"{n} has {t} plants.")
    t, total = w.calc(f"{plants} * {each}")
    w.say(f"They grow {t} {crop}.")
    t, good = w.calc(f"{total} - {spoiled}")
    w.say(f"{t} {crop} are good.")
    t, _ = w.calc(f"{good} / {box}")
    w.say(f"{n} fills {t} boxes.")
    return (
        [
            f"{n} has {rows} rows of plants with {per} plants in each row.",
            f"Each plant grows {each} {crop}.",
            f"{spoiled} of the {crop} spoil, and {n} packs the rest in boxes of {box}.",
        ],
        f"How many boxes does {n} fill?",
        [
            lambda x: f"The garden is {x} feet long.",
            lambda x: f"{n} waters the garden {x % 5 + 2} times a week.",
            lambda x: f"{n} also grows {x} flowers by the fence.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "farm-eggs")
def _l3_eggs(c: _Ctx, w: _Work) -> _Result:
    n = c.name()
    while True:
        hens, eggs, days, price = c.num(3, 12), c.num(1, 2), c.num(3, 12), c.num(2, 5)
        if (hens * eggs * days) % 12 == 0:
            break
    t, per_day = w.calc(f"{hens} * {eggs}")
    w.say(f"The hens lay {t} eggs a day.")
    t, total = w.calc(f"{per_day} * {days}")
    w.say(f"In {days} days they lay {t} eggs.")
    t, cartons = w.calc(f"{total} / 12")
    w.say(f"That fills {t} cartons.")
    t, _ = w.calc(f"{cartons} * {price}", money=True)
    w.say(f"{n} earns {t}.")
    return (
        [
            f"{n} has {hens} hens, and each hen lays {eggs} eggs a day.",
            f"{n} collects the eggs for {days} days and packs them in cartons of 12.",
            f"{n} sells each carton for ${price}.",
        ],
        f"How much money does {n} earn?",
        [
            lambda x: f"{n} also has {x % 6 + 2} goats.",
            lambda x: f"The farm is {x} miles from town.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "pizza-party")
def _l3_party(c: _Ctx, w: _Work) -> _Result:
    n = c.name()
    slices = c.rng.choice([6, 8, 10, 12])
    while True:
        guests, each, price, drink = c.num(4, 20), c.num(2, 4), c.num(8, 15), c.num(1, 3)
        if (guests * each) % slices == 0:
            break
    t, total = w.calc(f"{guests} * {each}")
    w.say(f"The guests eat {t} slices.")
    t, pizzas = w.calc(f"{total} / {slices}")
    w.say(f"{n} needs {t} pizzas.")
    t, pz = w.calc(f"{pizzas} * {price}", money=True)
    w.say(f"The pizzas cost {t}.")
    t, dr = w.calc(f"{guests} * {drink}", money=True)
    w.say(f"The drinks cost {t}.")
    t, _ = w.calc(f"{pz} + {dr}", money=True)
    w.say(f"The party costs {t}.")
    return (
        [
            f"{n} invites {guests} guests to a party.",
            f"Each guest eats {each} slices of pizza, and each pizza has {slices} slices.",
            f"A pizza costs ${price}, and {n} also buys one drink for each guest at ${drink} each.",
        ],
        f"How much does {n} spend on pizza and drinks?",
        [lambda x: f"The party lasts {x % 4 + 2} hours.", lambda x: f"{n} hangs up {x} balloons."]
        + _generic_distractors(c, n),
    )


@_template(3, "reading-plan")
def _l3_reading(c: _Ctx, w: _Work) -> _Result:
    n = c.name()
    wd, we, weeks = c.num(5, 20), c.num(10, 40), c.num(2, 4)
    read = (wd * 5 + we * 2) * weeks
    total = read + c.num(0, 150)
    t, a = w.calc(f"{wd} * 5")
    w.say(f"On weekdays {n} reads {t} pages a week.")
    t, b = w.calc(f"{we} * 2")
    w.say(f"On the weekend {n} reads {t} pages.")
    t, week = w.calc(f"{a} + {b}")
    w.say(f"So {n} reads {t} pages a week.")
    t, read = w.calc(f"{week} * {weeks}")
    w.say(f"In {weeks} weeks {n} reads {t} pages.")
    t, _ = w.calc(f"{total} - {read}")
    w.say(f"{t} pages are left.")
    return (
        [
            f"{n} is reading a book series with {total} pages in all.",
            f"{n} reads {wd} pages on each of the 5 weekdays and {we} pages on each of the 2 "
            "weekend days.",
        ],
        f"How many pages are left after {weeks} weeks?",
        [
            lambda x: f"The series has {x % 7 + 3} books.",
            lambda x: f"{n}'s library is open {x % 10 + 40} hours a week.",
        ]
        + _generic_distractors(c, n),
    )


@_template(3, "fundraiser")
def _l3_fundraiser(c: _Ctx, w: _Work) -> _Result:
    clubs = c.num(2, 5)
    while True:
        tickets, tp, cakes, cp = c.num(20, 80), c.num(2, 6), c.num(5, 20), c.num(5, 12)
        income = tickets * tp + cakes * cp
        supplies = c.num(10, income // 2)
        if (income - supplies) % clubs == 0:
            break
    t, a = w.calc(f"{tickets} * {tp}", money=True)
    w.say(f"The tickets bring in {t}.")
    t, b = w.calc(f"{cakes} * {cp}", money=True)
    w.say(f"The cakes bring in {t}.")
    t, inc = w.calc(f"{a} + {b}", money=True)
    w.say(f"Together that is {t}.")
    t, profit = w.calc(f"{inc} - {supplies}", money=True)
    w.say(f"After supplies there is {t}.")
    t, _ = w.calc(f"{profit} / {clubs}", money=True)
    w.say(f"Each club gets {t}.")
    return (
        [
            f"A class sells {tickets} raffle tickets for ${tp} each and {cakes} cakes for "
            f"${cp} each.",
            f"The supplies cost ${supplies}.",
            f"The money left is shared equally among {clubs} school clubs.",
        ],
        "How much money does each club get?",
        [
            lambda x: f"The class has {x % 15 + 15} students.",
            lambda x: f"The fundraiser was held on day {x % 28 + 1} of the month.",
        ],
    )


# ----------------------------------------------------------------------------- generation


def _numbers(text: str) -> list[int]:
    out, cur = [], ""
    for ch in text + " ":
        if ch.isdigit():
            cur += ch
        elif cur:
            out.append(int(cur))
            cur = ""
    return out


def _make(rng: random.Random, level: int) -> dict[str, Any]:
    names = list(_TEMPLATES[level])
    name = rng.choice(names)
    ctx, work = _Ctx(rng), _Work()
    sentences, ask, distractors = _TEMPLATES[level][name](ctx, work)
    final = work.ops[-1][1]
    if level == 3:
        # numbers a distractor may not use: anything the solution or question already holds
        used = {v for expr, val in work.ops for v in [*_numbers(expr), val]}
        used.update(_numbers(" ".join(sentences) + ask))
        want = rng.choice((1, 2, 2))
        placed = 0
        for make in rng.sample(distractors, k=len(distractors)):
            for _ in range(50):
                sentence = make(rng.randint(3, 60))
                if not set(_numbers(sentence)) & used:
                    used.update(_numbers(sentence))
                    sentences.insert(rng.randint(1, len(sentences)), sentence)
                    placed += 1
                    break
            if placed == want:
                break
    question = " ".join([*sentences, ask])
    return {
        "question": question,
        "answer": work.answer(final),
        "level": level,
        "template": f"L{level}-{name}",
        "ops": work.ops,
    }


def iter_problems(n: int, level: int | None = None, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield ``n`` problems lazily (same sequence as :func:`generate_problems`)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")
    rng = random.Random(seed)
    for _ in range(n):
        yield _make(rng, level if level is not None else rng.choice(LEVELS))


def generate_problems(n: int, level: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` problems of one level (or a uniform mix of levels when ``level`` is None).

    Each dict has ``question``, ``answer`` (GSM8K style, ending ``#### N``), ``level``, plus
    ``template`` and ``ops`` (the ``[expression, value]`` calculator record) for checking.
    """
    return list(iter_problems(n, level, seed))


def problems_to_text(problems: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Each problem as one pretraining document ``Question: ...\\nAnswer: ...``.

    The same layout is used by ``prepare`` for GSM8K-like JSONL rows, so a model pretrained on
    it sees questions and answers the way the benchmark prompts them.
    """
    for p in problems:
        yield f"Question: {p['question']}\nAnswer: {p['answer']}"


def write_jsonl(problems: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line to a temporary file, then rename it into place.

    The rename makes the write atomic: a killed run never leaves a half-written file that a
    later command would read as a (shorter) data set.
    """
    path = Path(path)
    with atomic_open(path) as f:
        for p in problems:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path


def write_corpus(
    out_dir: str | Path, n_train: int, n_test: int, seed: int = 0, level: int | None = None
) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` with no question shared between them.

    Both come from one seeded stream: the first ``n_train`` problems are the training set and
    the following problems whose question does not occur in it form the test set, so a test
    score never rewards memorising a training question.
    """
    out = Path(out_dir)
    stream = iter_problems(10 * (n_train + n_test) + 1000, level, seed)
    train = [next(stream) for _ in range(n_train)]
    seen = {p["question"] for p in train}
    test: list[dict[str, Any]] = []
    for p in stream:
        if len(test) == n_test:
            break
        if p["question"] not in seen:
            seen.add(p["question"])
            test.append(p)
    if len(test) < n_test:
        raise ValueError(f"could only make {len(test)} distinct test problems")
    return {
        "train": write_jsonl(train, out / "train.jsonl"),
        "test": write_jsonl(test, out / "test.jsonl"),
    }
