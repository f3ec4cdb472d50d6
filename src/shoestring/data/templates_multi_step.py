"""Level 3 of the synthetic problems: four or more calculator steps, plus distractors.

Why: GSM8K is hard for small models less because of the arithmetic than because of long chains
and sentences holding numbers the solution does not use. Each template here lists its own
distractor sentences; ``about`` adds the generic ones about the main character. Numbers are
redrawn until every division is exact. The order of the templates is part of what a seed means.
"""

from __future__ import annotations

from typing import Any

from shoestring.data.problem_engine import Ctx, Distractor, Step, Template
from shoestring.data.problem_words import CROPS, JOBS, PASTRIES, SHOP_ITEMS, THINGS


def _shopping(c: Ctx) -> dict[str, Any]:
    n = c.name()
    items = c.rng.sample(SHOP_ITEMS, 3)
    qs = [c.num(2, 6) for _ in items]
    ps = [c.num(2, 9) for _ in items]
    total = sum(q * p for q, p in zip(qs, ps, strict=True))
    v: dict[str, Any] = dict(n=n, bill=next(b for b in (50, 100, 200) if b >= total))
    for i, (item, q, p) in enumerate(zip(items, qs, ps, strict=True)):
        v.update({f"i{i}": item, f"q{i}": q, f"p{i}": p})
    return v


def _baking(c: Ctx) -> dict[str, Any]:
    n, p = c.name(), c.pick(PASTRIES)
    batches, per = c.num(3, 6), c.num(8, 16)
    total = batches * per
    friends = c.num(2, 6)
    # what is left after the sales is shared exactly, and at least 2 are sold (in two sales)
    rest = friends * c.num(1, max(1, (total - 2) // friends))
    while total - rest < 2:
        rest -= friends
    sold = total - rest
    s1 = c.num(1, sold - 1)
    return dict(
        n=n, p=p, one=p[:-1], batches=batches, per=per, friends=friends, s1=s1, s2=sold - s1
    )


def _road_trip(c: Ctx) -> dict[str, Any]:
    n, v = c.name(), c.pick(["car", "van", "truck", "camper"])
    mpg, price = c.rng.choice([10, 15, 20, 25, 30]), c.num(3, 5)
    while True:  # the trip must use a whole number of gallons
        s1, h1, s2, h2 = 10 * c.num(3, 7), c.num(1, 4), 10 * c.num(3, 7), c.num(1, 4)
        if (s1 * h1 + s2 * h2) % mpg == 0:
            break
    return dict(n=n, v=v, mpg=mpg, price=price, s1=s1, h1=h1, s2=s2, h2=h2)


def _savings(c: Ctx) -> dict[str, Any]:
    n, job, thing = c.name(), c.pick(JOBS), c.pick(THINGS)
    wage, hours, weeks = c.num(8, 15), c.num(3, 10), c.num(2, 6)
    cost = c.num(5, wage * hours * weeks - 2)
    if (wage * hours * weeks - cost) % 2:  # half of the rest must be whole dollars
        cost += 1
    return dict(n=n, job=job, thing=thing, wage=wage, hours=hours, weeks=weeks, cost=cost)


def _ages(c: Ctx) -> dict[str, Any]:
    a, b, d = c.name(), c.name(), c.name()
    age, times, years = c.num(3, 12), c.num(3, 5), c.num(2, 10)
    return dict(a=a, b=b, d=d, age=age, times=times, years=years, diff=c.num(1, times * age - 1))


def _school(c: Ctx) -> dict[str, Any]:
    box = c.rng.choice([10, 12, 20, 24])
    while True:  # whole boxes only
        grades, classes, students, pens = c.num(2, 5), c.num(2, 4), c.num(15, 30), c.num(2, 5)
        if (grades * classes * students * pens) % box == 0:
            break
    return dict(box=box, grades=grades, classes=classes, students=students, pens=pens)


def _garden(c: Ctx) -> dict[str, Any]:
    n, crop = c.name(), c.pick(CROPS)
    rows, per, each, box = c.num(2, 6), c.num(3, 8), c.num(4, 12), c.rng.choice([5, 6, 8, 10])
    total = rows * per * each
    # total >= 24 >= 2 * box, so some count with (total - spoiled) % box == 0 fits below total
    spoiled = c.rng.choice([s for s in (total % box + box * j for j in range(3)) if 0 < s < total])
    return dict(n=n, crop=crop, rows=rows, per=per, each=each, box=box, spoiled=spoiled)


def _eggs(c: Ctx) -> dict[str, Any]:
    n = c.name()
    while True:  # whole cartons of 12 only
        hens, eggs, days, price = c.num(3, 12), c.num(1, 2), c.num(3, 12), c.num(2, 5)
        if (hens * eggs * days) % 12 == 0:
            break
    return dict(n=n, hens=hens, eggs=eggs, days=days, price=price)


def _party(c: Ctx) -> dict[str, Any]:
    n = c.name()
    slices = c.rng.choice([6, 8, 10, 12])
    while True:  # whole pizzas only
        guests, each, price, drink = c.num(4, 20), c.num(2, 4), c.num(8, 15), c.num(1, 3)
        if (guests * each) % slices == 0:
            break
    return dict(n=n, slices=slices, guests=guests, each=each, price=price, drink=drink)


def _reading(c: Ctx) -> dict[str, Any]:
    n = c.name()
    wd, we, weeks = c.num(5, 20), c.num(10, 40), c.num(2, 4)
    total = (wd * 5 + we * 2) * weeks + c.num(0, 150)
    return dict(n=n, wd=wd, we=we, weeks=weeks, total=total)


def _fundraiser(c: Ctx) -> dict[str, Any]:
    clubs = c.num(2, 5)
    while True:  # the profit must split evenly among the clubs
        tickets, tp, cakes, cp = c.num(20, 80), c.num(2, 6), c.num(5, 20), c.num(5, 12)
        income = tickets * tp + cakes * cp
        supplies = c.num(10, income // 2)
        if (income - supplies) % clubs == 0:
            break
    return dict(clubs=clubs, tickets=tickets, tp=tp, cakes=cakes, cp=cp, supplies=supplies)


TEMPLATES = (
    Template(
        "shopping-three-items",
        _shopping,
        (
            Step("c0", "{q0} * {p0}", "The {i0} cost {t}.", money=True),
            Step("c1", "{q1} * {p1}", "The {i1} cost {t}.", money=True),
            Step("c2", "{q2} * {p2}", "The {i2} cost {t}.", money=True),
            Step("total", "{c0} + {c1} + {c2}", "Altogether {n} spends {t}.", money=True),
            Step("change", "{bill} - {total}", "{n} gets {t} in change.", money=True),
        ),
        (
            "{n} goes to the store and buys {q0} {i0} at ${p0} each, {q1} {i1} at ${p1} each "
            "and {q2} {i2} at ${p2} each.",
            "{n} pays with a ${bill} bill.",
        ),
        "How much change does {n} get?",
        (
            Distractor("The store is {x} blocks from {n}'s home."),
            Distractor("{n} also has {x} coupons, but they have all expired."),
        ),
        about="n",
    ),
    Template(
        "baking-sale",
        _baking,
        (
            Step("total", "{batches} * {per}", "{n} bakes {t} {p}."),
            Step("sold", "{s1} + {s2}", "{n} sells {t} {p}."),
            Step("rest", "{total} - {sold}", "{t} {p} are left."),
            Step("each", "{rest} / {friends}", "Each friend gets {t} {p}."),
        ),
        (
            "{n} bakes {batches} batches of {p} with {per} {p} in each batch.",
            "{n} sells {s1} {p} to a neighbor and {s2} {p} at the bake sale.",
            "{n} shares the rest equally among {friends} friends.",
        ),
        "How many {p} does each friend get?",
        (
            Distractor("The oven is set to {x} degrees.", mul=5, add=200),
            Distractor("Each {one} sells for ${x}."),
            Distractor("The bake sale starts at {x} o'clock.", mod=12, add=1),
        ),
        about="n",
    ),
    Template(
        "road-trip-fuel",
        _road_trip,
        (
            Step("a", "{s1} * {h1}", "On the first part {n} drives {t} miles."),
            Step("b", "{s2} * {h2}", "On the second part {n} drives {t} miles."),
            Step("dist", "{a} + {b}", "The whole trip is {t} miles."),
            Step("gallons", "{dist} / {mpg}", "The {v} uses {t} gallons of gas."),
            Step("cost", "{gallons} * {price}", "The gas costs {t}.", money=True),
        ),
        (
            "{n} drives a {v} at {s1} miles per hour for {h1} hours and then at {s2} miles "
            "per hour for {h2} hours.",
            "The {v} goes {mpg} miles on one gallon of gas.",
            "Gas costs ${price} per gallon.",
        ),
        "How much does {n} spend on gas?",
        (
            Distractor("There are {x} passengers in the {v}.", mod=4, add=2),
            Distractor("{n} leaves home at {x} o'clock.", mod=12, add=1),
            Distractor("The {v} is {x} years old."),
        ),
        about="n",
    ),
    Template(
        "savings-job",
        _savings,
        (
            Step("weekly", "{wage} * {hours}", "Each week {n} earns {t}.", money=True),
            Step("total", "{weekly} * {weeks}", "In {weeks} weeks {n} earns {t}.", money=True),
            Step("rest", "{total} - {cost}", "After buying the {thing}, {n} has {t}.", money=True),
            Step("saved", "{rest} / 2", "{n} puts {t} into savings.", money=True),
        ),
        (
            "{n} works {job} and earns ${wage} per hour.",
            "{n} works {hours} hours each week for {weeks} weeks.",
            "Then {n} buys a {thing} for ${cost} and puts half of the remaining money into "
            "a savings account.",
        ),
        "How much money does {n} put into savings?",
        (
            Distractor("{n}'s friend works {x} hours each week."),
            Distractor("The savings account already has {x} other customers in {n}'s town."),
        ),
        about="n",
    ),
    Template(
        "ages-family",
        _ages,
        (
            Step("older", "{times} * {age}", "{b} is {t} years old."),
            Step("younger", "{older} - {diff}", "{d} is {t} years old."),
            Step("fa", "{age} + {years}", "In {years} years {a} will be {t}."),
            Step("fd", "{younger} + {years}", "In {years} years {d} will be {t}."),
            Step("sum", "{fa} + {fd}", "The sum of their ages will be {t}."),
        ),
        (
            "{a} is {age} years old.",
            "{b} is {times} times as old as {a}.",
            "{d} is {diff} years younger than {b}.",
        ),
        "What will be the sum of {a}'s and {d}'s ages in {years} years?",
        (
            Distractor("{a}'s dog is {x} years old.", mod=14, add=1),
            Distractor("{b} has lived in the same town for {x} years."),
        ),
        about="a",
    ),
    Template(
        "school-pencils",
        _school,
        (
            Step("cls", "{grades} * {classes}", "There are {t} classes."),
            Step("kids", "{cls} * {students}", "There are {t} students."),
            Step("total", "{kids} * {pens}", "They need {t} pencils."),
            Step("boxes", "{total} / {box}", "The school buys {t} boxes."),
        ),
        (
            "A school has {grades} grades with {classes} classes in each grade.",
            "Every class has {students} students, and every student gets {pens} pencils.",
            "Pencils come in boxes of {box}.",
        ),
        "How many boxes of pencils does the school buy?",
        (
            Distractor("The school has {x} teachers."),
            Distractor("Each box of pencils costs ${x}."),
            Distractor("The school was built {x} years ago."),
        ),
    ),
    Template(
        "garden-harvest",
        _garden,
        (
            Step("plants", "{rows} * {per}", "{n} has {t} plants."),
            Step("total", "{plants} * {each}", "They grow {t} {crop}."),
            Step("good", "{total} - {spoiled}", "{t} {crop} are good."),
            Step("boxes", "{good} / {box}", "{n} fills {t} boxes."),
        ),
        (
            "{n} has {rows} rows of plants with {per} plants in each row.",
            "Each plant grows {each} {crop}.",
            "{spoiled} of the {crop} spoil, and {n} packs the rest in boxes of {box}.",
        ),
        "How many boxes does {n} fill?",
        (
            Distractor("The garden is {x} feet long."),
            Distractor("{n} waters the garden {x} times a week.", mod=5, add=2),
            Distractor("{n} also grows {x} flowers by the fence."),
        ),
        about="n",
    ),
    Template(
        "farm-eggs",
        _eggs,
        (
            Step("per_day", "{hens} * {eggs}", "The hens lay {t} eggs a day."),
            Step("total", "{per_day} * {days}", "In {days} days they lay {t} eggs."),
            Step("cartons", "{total} / 12", "That fills {t} cartons."),
            Step("earned", "{cartons} * {price}", "{n} earns {t}.", money=True),
        ),
        (
            "{n} has {hens} hens, and each hen lays {eggs} eggs a day.",
            "{n} collects the eggs for {days} days and packs them in cartons of 12.",
            "{n} sells each carton for ${price}.",
        ),
        "How much money does {n} earn?",
        (
            Distractor("{n} also has {x} goats.", mod=6, add=2),
            Distractor("The farm is {x} miles from town."),
        ),
        about="n",
    ),
    Template(
        "pizza-party",
        _party,
        (
            Step("total", "{guests} * {each}", "The guests eat {t} slices."),
            Step("pizzas", "{total} / {slices}", "{n} needs {t} pizzas."),
            Step("pz", "{pizzas} * {price}", "The pizzas cost {t}.", money=True),
            Step("dr", "{guests} * {drink}", "The drinks cost {t}.", money=True),
            Step("cost", "{pz} + {dr}", "The party costs {t}.", money=True),
        ),
        (
            "{n} invites {guests} guests to a party.",
            "Each guest eats {each} slices of pizza, and each pizza has {slices} slices.",
            "A pizza costs ${price}, and {n} also buys one drink for each guest at ${drink} each.",
        ),
        "How much does {n} spend on pizza and drinks?",
        (
            Distractor("The party lasts {x} hours.", mod=4, add=2),
            Distractor("{n} hangs up {x} balloons."),
        ),
        about="n",
    ),
    Template(
        "reading-plan",
        _reading,
        (
            Step("a", "{wd} * 5", "On weekdays {n} reads {t} pages a week."),
            Step("b", "{we} * 2", "On the weekend {n} reads {t} pages."),
            Step("week", "{a} + {b}", "So {n} reads {t} pages a week."),
            Step("read", "{week} * {weeks}", "In {weeks} weeks {n} reads {t} pages."),
            Step("left", "{total} - {read}", "{t} pages are left."),
        ),
        (
            "{n} is reading a book series with {total} pages in all.",
            "{n} reads {wd} pages on each of the 5 weekdays and {we} pages on each of the 2 "
            "weekend days.",
        ),
        "How many pages are left after {weeks} weeks?",
        (
            Distractor("The series has {x} books.", mod=7, add=3),
            Distractor("{n}'s library is open {x} hours a week.", mod=10, add=40),
        ),
        about="n",
    ),
    Template(
        "fundraiser",
        _fundraiser,
        (
            Step("a", "{tickets} * {tp}", "The tickets bring in {t}.", money=True),
            Step("b", "{cakes} * {cp}", "The cakes bring in {t}.", money=True),
            Step("inc", "{a} + {b}", "Together that is {t}.", money=True),
            Step("profit", "{inc} - {supplies}", "After supplies there is {t}.", money=True),
            Step("each", "{profit} / {clubs}", "Each club gets {t}.", money=True),
        ),
        (
            "A class sells {tickets} raffle tickets for ${tp} each and {cakes} cakes for "
            "${cp} each.",
            "The supplies cost ${supplies}.",
            "The money left is shared equally among {clubs} school clubs.",
        ),
        "How much money does each club get?",
        (
            Distractor("The class has {x} students.", mod=15, add=15),
            Distractor("The fundraiser was held on day {x} of the month.", mod=28, add=1),
        ),
    ),
)
