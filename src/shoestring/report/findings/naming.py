"""The ``naming`` rule: a run whose name claims speed must be the fastest by what was measured.

Why: the hand-written comparisons this project grew from called a variant "extreme fast" that
measured slowest. A name that claims speed (fast, optimized, turbo, ...) is checked against the
measured throughput and wall time of the runs it is compared with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from shoestring.report.blocks import Finding
from shoestring.report.kinds import TRAINING_KINDS, RunInfo
from shoestring.report.measures import bench_models

__all__ = ["SPEED_WORDS", "SpeedItem", "naming_findings", "speed_items", "speed_words_in"]


# Word stems that claim speed. Matched against the words of a name (split at anything that is
# not a letter or digit, and at camelCase), so "wiki_cache_optimized" and "TurboNet" match and
# "breakfast" does not.
SPEED_WORDS = (
    "fast",
    "faster",
    "fastest",
    "quick",
    "turbo",
    "speed",
    "speedy",
    "rapid",
    "accelerated",
    "accel",
    "optimized",
    "optimised",
    "optimal",
    "tuned",
    "performance",
    "perf",
    "boost",
    "boosted",
    "lightning",
    "swift",
)


def speed_words_in(name: str) -> list[str]:
    """The speed-claiming words of ``name`` (see :data:`SPEED_WORDS`)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    found = []
    for w in words:
        stem = w.rstrip("0123456789")
        if stem in SPEED_WORDS and stem not in found:
            found.append(stem)
    return found


@dataclass
class SpeedItem:
    """One thing with a name and measured speed: ``rate`` higher is faster, ``wall`` lower."""

    label: str
    name_text: str
    rate: float | None
    rate_unit: str
    wall: float | None
    wall_what: str = "wall time"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def naming_findings(items: list[SpeedItem], group: str) -> list[Finding]:
    """A name that claims speed must be the fastest by the rate or by the wall time."""
    rated = [i for i in items if i.rate is not None]
    walled = [i for i in items if i.wall is not None]
    if len(rated) < 2 and len(walled) < 2:
        return []
    best_rate = max(rated, key=lambda i: i.rate or 0.0) if len(rated) >= 2 else None
    best_wall = min(walled, key=lambda i: i.wall or 0.0) if len(walled) >= 2 else None
    out = []
    for it in items:
        words = speed_words_in(it.name_text)
        if not words:
            continue
        fast_rate = best_rate is None or it.rate is None or it is best_rate
        fast_wall = best_wall is None or it.wall is None or it is best_wall
        facts = []
        if best_rate is not None and it.rate is not None:
            rank = 1 + sum(1 for o in rated if (o.rate or 0.0) > it.rate)
            fact = f"{it.rate:,.0f} {it.rate_unit} (rank {rank} of {len(rated)})"
            if it is not best_rate:
                fact += (
                    f", while `{best_rate.label}` measured {best_rate.rate:,.0f} "
                    f"({_ratio(it.rate, best_rate.rate or 0.0)} of it)"
                )
            facts.append(fact)
        if best_wall is not None and it.wall is not None:
            fact = f"{it.wall_what} {it.wall:,.1f} s"
            if it is not best_wall:
                fact += f" vs {best_wall.wall:,.1f} s for `{best_wall.label}`"
            facts.append(fact)
        quoted = "/".join(f"'{w}'" for w in words)
        nums = {"rate": it.rate, "wall": it.wall, "words": words, "group": group}
        if not fast_rate and not fast_wall:
            out.append(
                Finding(
                    "naming",
                    "warning",
                    f"`{it.label}` is named {quoted} but is not the fastest of the {group}: "
                    + "; ".join(facts)
                    + ".",
                    [it.label],
                    nums,
                )
            )
        elif not fast_rate or not fast_wall:
            which = "wall time" if fast_wall else f"{it.rate_unit}"
            out.append(
                Finding(
                    "naming",
                    "info",
                    f"`{it.label}` is named {quoted}: it is the fastest of the {group} by "
                    f"{which} only: " + "; ".join(facts) + ".",
                    [it.label],
                    nums,
                )
            )
    return out


def speed_items(runs: list[RunInfo]) -> Iterable[tuple[list[SpeedItem], str]]:
    tr = [r for r in runs if r.kind in TRAINING_KINDS and r.finished]
    yield (
        [
            SpeedItem(
                r.label,
                r.name_text,
                r.summary.get("tokens_per_second"),
                "tokens/s",
                r.summary.get("session_wall_seconds"),
            )
            for r in tr
        ],
        "training runs",
    )
    grpo = [r for r in runs if r.kind == "grpo" and r.finished]
    yield (
        [
            SpeedItem(
                r.label,
                r.name_text,
                (1.0 / r.summary["seconds_per_step"]) * 60
                if r.summary.get("seconds_per_step")
                else None,
                "steps/min",
                r.summary.get("train_seconds"),
                "training time",
            )
            for r in grpo
        ],
        "GRPO runs",
    )
    for r in runs:
        if r.kind != "analysis":
            continue
        cfgs = [
            c for c in (r.extra.get("analysis") or {}).get("configs") or [] if isinstance(c, dict)
        ]
        yield (
            [
                SpeedItem(
                    str(c.get("label")),
                    f"{c.get('label')} {c.get('preset') or ''} {c.get('variant') or ''}",
                    c.get("tokens_per_second"),
                    "tokens/s",
                    None,
                )
                for c in cfgs
            ],
            f"configurations measured by analysis `{r.label}`",
        )
    bm = bench_models(runs)
    yield (
        [
            SpeedItem(m.label, m.name_text, m.tokens_per_second, "generated tokens/s", None)
            for m in bm
        ],
        "benchmarked models",
    )
