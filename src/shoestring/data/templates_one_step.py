"""Level 1 of the synthetic problems: one calculator step each.

Why: the easiest rung of the curriculum (and of the quickstart's data) is a single operation,
so a small model can learn the answer format before it has to chain steps. The order of the
templates is part of what a seed means.
"""

from __future__ import annotations

from typing import Any

from shoestring.data.problem_engine import Ctx, Step, Template
from shoestring.data.problem_words import (
    COLLECTIBLES,
    PASTRIES,
    PLANTS,
    SHOP_ITEMS,
    SNACKS,
    THINGS,
    VEHICLES,
)

_LEADERS = [
    ("teacher", "students"),
    ("coach", "players"),
    ("camp leader", "campers"),
    ("librarian", "children"),
]


def _sharing(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), snack=c.pick(SNACKS), k=c.num(2, 8), each=c.num(2, 12))
    return {**v, "total": v["k"] * v["each"]}


def _savings(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), thing=c.pick(THINGS), have=c.num(20, 120))
    return {**v, "cost": c.num(5, v["have"] - 1)}


def _classroom(c: Ctx) -> dict[str, Any]:
    who, kids = c.rng.choice(_LEADERS)
    g, groups = c.num(2, 8), c.num(2, 12)
    return dict(who=who, kids=kids, g=g, total=g * groups)


def _reading(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), pages=c.num(60, 400))
    return {**v, "read": c.num(10, v["pages"] - 5)}


def _collection(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), m=c.name(), thing=c.pick(COLLECTIBLES), have=c.num(15, 90))
    return {**v, "give": c.num(2, v["have"] - 3)}


TEMPLATES = (
    Template(
        "shopping",
        lambda c: dict(n=c.name(), item=c.pick(SHOP_ITEMS), qty=c.num(2, 12), price=c.num(2, 15)),
        (Step("total", "{qty} * {price}", "{n} spends {t} on {item}.", money=True),),
        ("{n} buys {qty} {item} that cost ${price} each.",),
        "How much money does {n} spend?",
    ),
    Template(
        "sharing",
        _sharing,
        (Step("each", "{total} / {k}", "Each friend gets {t} {snack}."),),
        ("{n} has {total} {snack} and shares them equally among {k} friends.",),
        "How many {snack} does each friend get?",
    ),
    Template(
        "baking",
        lambda c: dict(n=c.name(), p=c.pick(PASTRIES), a=c.num(5, 40), b=c.num(5, 40)),
        (Step("total", "{a} + {b}", "{n} bakes {t} {p} in total."),),
        ("{n} baked {a} {p} in the morning and {b} {p} in the afternoon.",),
        "How many {p} did {n} bake in total?",
    ),
    Template(
        "travel",
        lambda c: dict(v=c.pick(VEHICLES), speed=5 * c.num(4, 14), hours=c.num(2, 6)),
        (Step("miles", "{speed} * {hours}", "The {v} travels {t} miles."),),
        ("A {v} travels at {speed} miles per hour.",),
        "How many miles does it travel in {hours} hours?",
    ),
    Template(
        "savings",
        _savings,
        (Step("left", "{have} - {cost}", "{n} has {t} left.", money=True),),
        ("{n} had ${have} in a piggy bank and spent ${cost} on a {thing}.",),
        "How much money does {n} have left?",
    ),
    Template(
        "ages",
        lambda c: dict(n=c.name(), m=c.name(), age=c.num(5, 40), diff=c.num(2, 30)),
        (Step("older", "{age} + {diff}", "{m} is {t} years old."),),
        ("{n} is {age} years old.", "{m} is {diff} years older than {n}."),
        "How old is {m}?",
    ),
    Template(
        "classroom",
        _classroom,
        (Step("groups", "{total} / {g}", "There are {t} groups."),),
        ("A {who} splits {total} {kids} into groups of {g}.",),
        "How many groups are there?",
    ),
    Template(
        "garden",
        lambda c: dict(n=c.name(), plant=c.pick(PLANTS), rows=c.num(2, 12), per=c.num(3, 15)),
        (Step("total", "{rows} * {per}", "{n} plants {t} {plant} plants."),),
        ("{n} plants {rows} rows of {plant} plants with {per} plants in each row.",),
        "How many {plant} plants does {n} plant?",
    ),
    Template(
        "reading",
        _reading,
        (Step("left", "{pages} - {read}", "{n} has {t} pages left to read."),),
        ("A book has {pages} pages.", "{n} has already read {read} pages."),
        "How many pages are left to read?",
    ),
    Template(
        "collection",
        _collection,
        (Step("left", "{have} - {give}", "{n} has {t} {thing} now."),),
        ("{n} collected {have} {thing} and gave {give} of them to {m}.",),
        "How many {thing} does {n} have now?",
    ),
)
