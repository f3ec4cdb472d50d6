"""The hybrid-vs-baseline benchmark section (benchmarks/hybrid_vs_baseline.py results).

Why: the benchmark's arms ran over several seeds; its table is shown as means with 95%
t-intervals, so a speed-up is read with its uncertainty, next to where the hybrid arm's time
went.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report.blocks import Para, Section, Table, fmt, fmt_int
from shoestring.report.kinds import RunInfo
from shoestring.report.sections.common import SectionContext, ci_text

__all__ = ["hybrid_benchmark_section"]


HB_COLUMNS = (
    ("steps", "steps", 0),
    ("train_seconds", "train s", 1),
    ("final_val_loss", "final val loss", 4),
    ("time_to_target", "s to target loss", 1),
    ("speedup_vs_baseline", "speed-up vs baseline", 3),
    ("val_at_equal_time", "val loss at equal time", 4),
    ("val_at_equal_tokens", "val loss at equal tokens", 4),
)


def hybrid_benchmark_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    hb = [r for r in runs if r.kind == "hybrid_benchmark"]
    if not hb:
        return None
    blocks: list[Any] = [
        Para(
            "Means over seeds with 95% t-intervals (a single seed has no interval). The arms' "
            "run directories are also in the training and hybrid sections."
        )
    ]
    for r in hb:
        data = r.extra.get("benchmark", {})
        arms = data.get("arms") or {}
        seeds = sorted({s for a in arms.values() if isinstance(a, dict) for s in a})
        blocks.append(
            Para(
                f"**{r.label}**: arms "
                + ", ".join(f"`{a}`" for a in arms)
                + f"; seeds {', '.join(seeds) or '-'}; "
                f"wall {fmt(data.get('wall_seconds'), ',.0f')} s"
            )
        )
        table = data.get("table")
        if isinstance(table, list) and table and isinstance(table[0], dict):
            cols = [c for c in HB_COLUMNS if any(c[0] in row for row in table)]
            rows = [
                [str(row.get("arm", "?"))] + [ci_text(row.get(k), d) for k, _, d in cols]
                for row in table
            ]
            blocks.append(Table(["arm"] + [c[1] for c in cols], rows, ["l"] + ["r"] * len(cols)))
        phases = data.get("hybrid_time_by_phase") or {}
        if isinstance(phases, dict) and phases:
            rows = [
                [
                    name,
                    fmt_int(v.get("steps")),
                    fmt(v.get("seconds"), ",.1f"),
                    fmt(v.get("seconds_per_step"), ".4f"),
                    fmt(100 * v["share_of_time"], ".1f", "%")
                    if v.get("share_of_time") is not None
                    else "-",
                ]
                for name, v in phases.items()
                if isinstance(v, dict)
            ]
            blocks.append(
                Table(
                    ["hybrid phase", "steps", "seconds", "s/step", "share of time"],
                    rows,
                    ["l", "r", "r", "r", "r"],
                    caption="Where the hybrid arm's training time went (all seeds); baseline "
                    f"{fmt(data.get('baseline_seconds_per_step'), '.4f')} s/step; skip rate "
                    f"{ci_text(data.get('skip_rate'))}.",
                )
            )
    return Section("Hybrid vs baseline benchmark", blocks, "hybrid-benchmark")
