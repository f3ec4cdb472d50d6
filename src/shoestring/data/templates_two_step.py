"""Level 2 of the synthetic problems: two or three chained calculator steps each.

Why: the middle rung of the curriculum, where a result has to be carried into the next step
(GSM8K's core skill) but no sentence is there to mislead. The order of the templates is part of
what a seed means.
"""

from __future__ import annotations

from typing import Any

from shoestring.data.problem_engine import Ctx, Step, Template
from shoestring.data.problem_words import (
    JOBS,
    PASTRIES,
    PLANTS,
    SHOP_ITEMS,
    SNACKS,
    THINGS,
    VEHICLES,
)


def _two_items(c: Ctx) -> dict[str, Any]:
    n = c.name()
    i1, i2 = c.rng.sample(SHOP_ITEMS, 2)
    return dict(n=n, i1=i1, i2=i2, q1=c.num(2, 9), p1=c.num(2, 12), q2=c.num(2, 9), p2=c.num(2, 12))


def _change(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), item=c.pick(SHOP_ITEMS), qty=c.num(2, 8), price=c.num(2, 12))
    cost = v["qty"] * v["price"]
    return {**v, "bill": next(b for b in (20, 50, 100) if b >= cost)}


def _baking(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), p=c.pick(PASTRIES), trays=c.num(2, 6), per=c.num(6, 16))
    return {**v, "eaten": c.num(1, v["trays"] * v["per"] - 1)}


def _travel(c: Ctx) -> dict[str, Any]:
    who = dict(n=c.name(), v=c.pick(VEHICLES))  # "v" is the vehicle in the sentences
    return {
        **who,
        "s1": 5 * c.num(6, 14),
        "h1": c.num(1, 4),
        "s2": 5 * c.num(4, 12),
        "h2": c.num(1, 4),
    }


def _savings(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), thing=c.pick(THINGS), per=c.num(3, 20), weeks=c.num(3, 12))
    return {**v, "cost": c.num(1, v["per"] * v["weeks"] - 1)}


def _ages(c: Ctx) -> dict[str, Any]:
    v = dict(a=c.name(), b=c.name(), d=c.name(), age=c.num(4, 30))
    return {**v, "diff": c.num(1, 2 * v["age"] - 1)}


def _vans(c: Ctx) -> dict[str, Any]:
    classes, seats = c.num(2, 6), c.rng.choice([4, 5, 6, 8, 10])
    per = seats * c.num(2, 4) if c.rng.random() < 0.5 else c.num(12, 30)
    while (classes * per) % seats:  # every van full: the division must be exact
        per += 1
    return dict(classes=classes, seats=seats, per=per)


def _garden(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), plant=c.pick(PLANTS), rows=c.num(3, 10), per=c.num(4, 12))
    return {**v, "eaten": c.num(1, v["rows"] * v["per"] - 1)}


def _bags(c: Ctx) -> dict[str, Any]:
    n, snack, kids = c.name(), c.pick(SNACKS), c.num(2, 6)
    # either the bags or the bag size is a multiple of the children, so the share is exact
    if c.rng.random() < 0.5:
        bags, per = kids * c.num(1, 3), c.num(3, 12)
    else:
        bags, per = c.num(2, 6), kids * c.num(1, 4)
    return dict(n=n, snack=snack, kids=kids, bags=bags, per=per)


def _half(c: Ctx) -> dict[str, Any]:
    v = dict(n=c.name(), thing=c.pick(THINGS), item=c.pick(SHOP_ITEMS), have=2 * c.num(10, 60))
    return {**v, "spend": c.num(1, v["have"] // 2 - 1)}


TEMPLATES = (
    Template(
        "shopping-two-items",
        _two_items,
        (
            Step("a", "{q1} * {p1}", "The {i1} cost {t}.", money=True),
            Step("b", "{q2} * {p2}", "The {i2} cost {t}.", money=True),
            Step("total", "{a} + {b}", "{n} spends {t} in total.", money=True),
        ),
        ("{n} buys {q1} {i1} for ${p1} each and {q2} {i2} for ${p2} each.",),
        "How much does {n} spend in total?",
    ),
    Template(
        "shopping-change",
        _change,
        (
            Step("a", "{qty} * {price}", "The {item} cost {t}.", money=True),
            Step("change", "{bill} - {a}", "{n} gets {t} in change.", money=True),
        ),
        ("{n} buys {qty} {item} at ${price} each and pays with a ${bill} bill.",),
        "How much change does {n} get?",
    ),
    Template(
        "baking-leftover",
        _baking,
        (
            Step("total", "{trays} * {per}", "{n} bakes {t} {p}."),
            Step("left", "{total} - {eaten}", "There are {t} {p} left."),
        ),
        (
            "{n} bakes {trays} trays of {p} with {per} {p} on each tray.",
            "The family eats {eaten} of them.",
        ),
        "How many {p} are left?",
    ),
    Template(
        "travel-two-legs",
        _travel,
        (
            Step("a", "{s1} * {h1}", "First {n} drives {t} miles."),
            Step("b", "{s2} * {h2}", "Then {n} drives {t} miles."),
            Step("total", "{a} + {b}", "In total {n} drives {t} miles."),
        ),
        (
            "{n} drives a {v} at {s1} miles per hour for {h1} hours, then at {s2} miles "
            "per hour for {h2} hours.",
        ),
        "How many miles does {n} drive in total?",
    ),
    Template(
        "savings-weeks",
        _savings,
        (
            Step("total", "{per} * {weeks}", "{n} saves {t}.", money=True),
            Step(
                "left",
                "{total} - {cost}",
                "After buying the {thing}, {n} has {t} left.",
                money=True,
            ),
        ),
        (
            "{n} saves ${per} every week for {weeks} weeks.",
            "Then {n} buys a {thing} that costs ${cost}.",
        ),
        "How much money does {n} have left?",
    ),
    Template(
        "ages-twice",
        _ages,
        (
            Step("older", "2 * {age}", "{b} is {t} years old."),
            Step("younger", "{older} - {diff}", "{d} is {t} years old."),
        ),
        (
            "{a} is {age} years old.",
            "{b} is twice as old as {a}.",
            "{d} is {diff} years younger than {b}.",
        ),
        "How old is {d}?",
    ),
    Template(
        "classroom-vans",
        _vans,
        (
            Step("total", "{classes} * {per}", "There are {t} students."),
            Step("vans", "{total} / {seats}", "They need {t} vans."),
        ),
        (
            "A school has {classes} classes with {per} students in each class.",
            "For a field trip the students ride in vans with {seats} seats each, and every "
            "van is full.",
        ),
        "How many vans do they need?",
    ),
    Template(
        "garden-rabbits",
        _garden,
        (
            Step("total", "{rows} * {per}", "{n} has {t} {plant} plants."),
            Step("left", "{total} - {eaten}", "{t} {plant} plants are left."),
        ),
        (
            "{n} has {rows} rows of {plant} plants with {per} plants in each row.",
            "Rabbits eat {eaten} of the plants.",
        ),
        "How many {plant} plants are left?",
    ),
    Template(
        "sharing-bags",
        _bags,
        (
            Step("total", "{bags} * {per}", "There are {t} {snack}."),
            Step("each", "{total} / {kids}", "Each child gets {t} {snack}."),
        ),
        (
            "{n} has {bags} bags with {per} {snack} in each bag.",
            "{n} shares all of them equally among {kids} children.",
        ),
        "How many {snack} does each child get?",
    ),
    Template(
        "work-pay",
        lambda c: dict(
            n=c.name(), job=c.pick(JOBS), hours=c.num(2, 8), days=c.num(2, 6), wage=c.num(8, 20)
        ),
        (
            Step("total_h", "{hours} * {days}", "{n} works {t} hours."),
            Step("pay", "{total_h} * {wage}", "{n} earns {t}.", money=True),
        ),
        ("{n} works {job} for {hours} hours a day on {days} days and is paid ${wage} per hour.",),
        "How much money does {n} earn?",
    ),
    Template(
        "half-spend",
        _half,
        (
            Step(
                "half",
                "{have} / 2",
                "{n} spends {t} on the {thing}, so {n} has ${half} left.",
                money=True,
            ),
            Step("left", "{half} - {spend}", "After buying {item}, {n} has {t} left.", money=True),
        ),
        ("{n} has ${have}.", "{n} spends half of it on a {thing} and then ${spend} on {item}."),
        "How much money does {n} have left?",
    ),
)
