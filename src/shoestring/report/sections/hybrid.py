"""The hybrid-training section: where each hybrid run's steps and time went, phase by phase.

Why: the hybrid trainer's claim is that predicted steps are cheaper; the phase table (steps and
seconds per phase with their shares), the skip and rollback counts, and the loss coloured by
phase show whether the run spent its time where the claim needs it to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Bullets, Section, Table, fmt, fmt_int
from shoestring.report.kinds import RunInfo
from shoestring.report.sections.common import SectionContext, safe_name
from shoestring.report.sections.train import time_axis

__all__ = ["hybrid_section"]


def hybrid_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    hy = [r for r in runs if r.kind == "hybrid"]
    if not hy:
        return None
    blocks: list[Any] = []
    shares = []
    for r in hy:
        h = r.summary.get("hybrid") or {}
        phases = h.get("phases") or {}
        if not phases:  # still running: count the phases of the logged steps
            for m in r.metrics:
                if m.get("phase") and m.get("loss") is not None:
                    p = phases.setdefault(m["phase"], {"steps": 0, "seconds": None})
                    p["steps"] += 1
        tot_steps = sum(int(p.get("steps") or 0) for p in phases.values()) or 1
        tot_sec = sum(float(p.get("seconds") or 0.0) for p in phases.values())
        rows = []
        for name in [p for p in plots.PHASE_COLORS if p in phases] + sorted(
            set(phases) - set(plots.PHASE_COLORS)
        ):
            p = phases[name]
            sec = p.get("seconds")
            rows.append(
                [
                    name,
                    fmt_int(p.get("steps")),
                    f"{100 * int(p.get('steps') or 0) / tot_steps:.1f}%",
                    fmt(sec, ".1f"),
                    f"{100 * float(sec) / tot_sec:.1f}%" if sec is not None and tot_sec else "-",
                ]
            )
        state = "" if r.finished else f" - **{r.status_text()}**, not a result"
        blocks.append(
            Table(
                ["phase", "steps", "% steps", "seconds", "% time"],
                rows,
                ["l", "r", "r", "r", "r"],
                caption=f"**{r.label}** (predictor `{h.get('predictor', '?')}`)" + state,
            )
        )
        divs = h.get("divergences") or []
        blocks.append(
            Bullets(
                [
                    f"skip rate {fmt(h.get('skip_rate'), '.3f')}; backward passes skipped "
                    f"{fmt_int(h.get('backward_skipped'))}, forward skipped "
                    f"{fmt_int(h.get('forward_skipped'))}; "
                    f"rollbacks {fmt_int(h.get('rollbacks'))}; "
                    f"divergences {len(divs)}"
                    + (
                        " ("
                        + "; ".join(f"step {d.get('step')}: {d.get('reason')}" for d in divs[:5])
                        + ")"
                        if divs
                        else ""
                    ),
                    "mean cosine of predicted vs true gradient "
                    f"{fmt(h.get('pred_cosine_mean'), '.3f')}; "
                    f"wall {fmt(h.get('wall_seconds'), '.1f')} s",
                ]
            )
        )
        if any(p.get("seconds") is not None for p in phases.values()):
            shares.append((r.label, {k: float(v.get("seconds") or 0.0) for k, v in phases.items()}))
        x, xlabel = time_axis([r])
        img = ctx.plot(
            f"hybrid_phases_{safe_name(r.label)}.png",
            lambda p, r=r, x=x, xlabel=xlabel: plots.phase_loss_plot(
                [m for m in r.metrics if not m.get("event")],
                x,
                xlabel,
                f"{r.label}: training loss by phase",
                p,
            ),
            f"training loss against time coloured by phase for {r.label}",
        )
        if img:
            blocks.append(img)
    if shares:
        img = ctx.plot(
            "hybrid_phase_time.png",
            lambda p: plots.phase_share_plot(shares, p, "seconds in each phase"),
            "time spent in each phase per hybrid run",
        )
        if img:
            blocks.append(img)
    return Section("Hybrid training: phases", blocks, "hybrid")
