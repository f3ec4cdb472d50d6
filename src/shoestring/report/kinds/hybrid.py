"""Hybrid training runs (``shoestring train --trainer hybrid``): where steps and time went, phase
by phase. Why: the hybrid trainer claims predicted steps are cheaper; the phase table, the skip
and rollback counts and the loss coloured by phase show whether the time went where the claim
needs it to. As training runs they are also in :mod:`shoestring.report.kinds.train`.
"""

from __future__ import annotations

from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Bullets, Section, Table, fmt, fmt_int
from shoestring.report.kinds.train import time_axis, train_record
from shoestring.report.parts import Kind, SectionContext, safe_name
from shoestring.report.run import RunInfo

__all__ = ["KIND"]


def _phases(r: RunInfo) -> dict[str, dict[str, Any]]:
    """Steps and seconds per phase from the summary; for a run still going, the phases of the
    steps it logged (no seconds yet)."""
    phases = dict((r.summary.get("hybrid") or {}).get("phases") or {})
    if not phases:
        for m in r.metrics:
            if m.get("phase") and m.get("loss") is not None:
                phases.setdefault(m["phase"], {"steps": 0, "seconds": None})["steps"] += 1
    return phases


def _phase_table(r: RunInfo, phases: dict[str, dict[str, Any]]) -> Table:
    h = r.summary.get("hybrid") or {}
    tot_steps = sum(int(p.get("steps") or 0) for p in phases.values()) or 1
    tot_sec = sum(float(p.get("seconds") or 0.0) for p in phases.values())
    rows = []
    for name in plots.phase_order(phases):
        steps, sec = phases[name].get("steps"), phases[name].get("seconds")
        share = f"{100 * float(sec) / tot_sec:.1f}%" if sec is not None and tot_sec else "-"
        pct = f"{100 * int(steps or 0) / tot_steps:.1f}%"
        rows.append([name, fmt_int(steps), pct, fmt(sec, ".1f"), share])
    state = "" if r.finished else f" - **{r.status_text()}**, not a result"
    caption = f"**{r.label}** (predictor `{h.get('predictor', '?')}`)" + state
    return Table(["phase", "steps", "% steps", "seconds", "% time"], rows, "lrrrr", caption)


def _counts(h: dict[str, Any]) -> Bullets:
    """Skips, rollbacks, divergences, and how well the predicted gradient matched."""
    divs = h.get("divergences") or []
    shown = "; ".join(f"step {d.get('step')}: {d.get('reason')}" for d in divs[:5])
    return Bullets(
        [
            f"skip rate {fmt(h.get('skip_rate'), '.3f')}; backward passes skipped "
            f"{fmt_int(h.get('backward_skipped'))}, forward skipped "
            f"{fmt_int(h.get('forward_skipped'))}; rollbacks {fmt_int(h.get('rollbacks'))}; "
            f"divergences {len(divs)}" + (f" ({shown})" if divs else ""),
            "mean cosine of predicted vs true gradient "
            f"{fmt(h.get('pred_cosine_mean'), '.3f')}; wall {fmt(h.get('wall_seconds'), '.1f')} s",
        ]
    )


def hybrid_sections(hy: list[RunInfo], ctx: SectionContext) -> list[Section]:
    blocks: list[Any] = []
    shares = []
    for r in hy:
        phases = _phases(r)
        blocks += [_phase_table(r, phases), _counts(r.summary.get("hybrid") or {})]
        if any(p.get("seconds") is not None for p in phases.values()):
            shares.append((r.label, {k: float(v.get("seconds") or 0.0) for k, v in phases.items()}))
        x, xlabel = time_axis([r])
        blocks += ctx.plot(
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
    if shares:
        blocks += ctx.plot(
            "hybrid_phase_time.png",
            lambda p: plots.phase_share_plot(shares, p, "seconds in each phase"),
            "time spent in each phase per hybrid run",
        )
    return [Section("Hybrid training: phases", blocks, "hybrid")]


KIND = Kind(
    name="hybrid",
    writer="`shoestring train --trainer hybrid` (summary.json kind 'train', trainer 'hybrid')",
    sections=hybrid_sections,
    summary_kind="train",
    claims=lambda summary: summary.get("trainer") == "hybrid",
    record=lambda r: {**train_record(r), "hybrid": r.summary.get("hybrid")},
)
