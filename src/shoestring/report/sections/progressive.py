"""The progressive-training section: the accuracy at every stage gate, accepted or rolled back.

Why: it is ``progressive``'s own report as well as a part of every comparison, so it shows what
progressive's summary table showed: each stage's attempt, learning rate, accuracy with its 95%
interval, the distance to the best so far, McNemar's p against the model the stage started
from, the rollback rule and the best model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Bullets, Para, Section, Table, fmt, fmt_int
from shoestring.report.kinds import RunInfo
from shoestring.report.measures import acc_text, protocol_label, protocol_of, valid_eval
from shoestring.report.sections.common import SectionContext, cell, safe_name
from shoestring.util.stats import format_p, wilson_interval

__all__ = ["progressive_section"]


def _acc(e: Any) -> str:
    """An evaluation as ``14.0% [7.0, 26.2] (7/50)`` (progressive's gate reads correct/n)."""
    return acc_text(int(e["correct"]), int(e["n"])) if valid_eval(e) else "-"


def _rules_text(s: dict[str, Any]) -> str:
    """The rollback rule, where the run stopped, its best model, and how to read the columns."""
    threshold, alpha = s.get("threshold_points"), s.get("significance")
    rule = ""
    if isinstance(threshold, (int, float)):
        rule = f"Rollback rule: a stage more than {threshold:g} points below the best so far"
        if isinstance(alpha, (int, float)) and alpha < 1.0:
            rule += (
                f", with McNemar's exact p < {alpha:g} against the best model (a drop past "
                "the threshold that is not significant is kept and noted),"
            )
        rule += " is rolled back. "
    stopped = f" Stopped at {s['stopped_at']}." if s.get("stopped_at") else ""
    return (
        f"{rule}Rollbacks: {s.get('rollbacks', 0)}.{stopped} Best model: "
        f"{s.get('best_label', '-')} (`{s.get('best_model_dir', '-')}`). 'vs best' is in "
        "accuracy points against the best so far before the stage; 'p vs start' is McNemar's "
        "exact test against the model the stage started from (same problems)."
    )


def progressive_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    pr = [r for r in runs if r.kind == "progressive"]
    if not pr:
        return None
    blocks: list[Any] = []
    for r in pr:
        s = r.summary
        be = s.get("base_eval")
        base_seconds = be.get("seconds") if isinstance(be, dict) else None
        rows = [
            ["(base model)", "-", "measured", "-", _acc(be), "-", "-", "-"]
            + [
                fmt(base_seconds, ",.1f"),
                str(s.get("base_model") or r.config.get("base_model") or "-"),
            ]
        ]
        plot_rows = []
        if isinstance(be, dict) and be.get("n"):
            lo, hi = wilson_interval(int(be["correct"]), int(be["n"]))
            plot_rows.append(
                {
                    "label": "base",
                    "accuracy": be["correct"] / be["n"],
                    "lo": lo,
                    "hi": hi,
                    "color": "#7f7f7f",
                }
            )
        colors = {
            "accepted": "#2ca02c",
            "rolled_back": "#d62728",
            "retried": "#ff7f0e",
            "stopped": "#7f7f7f",
            "failed": "#d62728",
        }
        for st in s.get("stages", []):
            ev = st.get("eval")
            drop = st.get("drop_points")
            rows.append(
                [
                    str(st.get("label") or st.get("name")),
                    fmt_int(st.get("attempt")),
                    # "stopped" is a rollback that also ended the run
                    str(st.get("status"))
                    + (" (rolled back)" if st.get("status") == "stopped" else ""),
                    cell(st.get("learning_rate")),
                    _acc(ev),
                    fmt(st.get("best_so_far"), ".3f"),
                    f"{0.0 - drop + 0.0:+.1f}" if drop is not None else "-",
                    format_p(float(st["p_vs_start"])) if st.get("p_vs_start") is not None else "-",
                    fmt(st.get("seconds"), ",.1f"),
                    str(st.get("run_dir") or "-"),
                ]
            )
            if isinstance(ev, dict) and ev.get("n"):
                lo, hi = wilson_interval(int(ev["correct"]), int(ev["n"]))
                plot_rows.append(
                    {
                        "label": f"{st.get('name')} #{st.get('attempt', 1)} ({st.get('status')})",
                        "accuracy": ev["correct"] / ev["n"],
                        "lo": lo,
                        "hi": hi,
                        "color": colors.get(str(st.get("status")), "#1f77b4"),
                    }
                )
        state = "" if r.finished else f" - **{r.status_text()}**, not a result"
        blocks.append(
            Table(
                [
                    "stage",
                    "attempt",
                    "status",
                    "lr",
                    "accuracy [95% CI] (correct/n)",
                    "best so far",
                    "vs best (points)",
                    "McNemar p vs start",
                    "seconds",
                    "run dir",
                ],
                rows,
                ["l", "r", "l", "r", "l", "r", "r", "r", "r", "l"],
                caption=f"**{r.label}**: rollbacks {fmt_int(s.get('rollbacks'))}; "
                f"best model `{s.get('best_model_dir', '-')}`; scored under protocol "
                f"{protocol_label(*protocol_of(s))}{state}",
            )
        )
        blocks.append(Para(_rules_text(s)))
        if s.get("warnings"):
            blocks.append(Para(f"**Warnings of {r.label}:**"))
            blocks.append(Bullets([str(w) for w in s["warnings"]]))
        img = ctx.plot(
            f"progressive_{safe_name(r.label)}.png",
            lambda p, rows=plot_rows, r=r: plots.accuracy_intervals(
                rows, "accuracy (%), 95% Wilson interval", p, f"{r.label}: accuracy per stage"
            ),
            f"accuracy per stage of {r.label}",
        )
        # a run's own report shows the plot progressive drew into its directory
        img = img or ctx.own_image(r, s.get("plot"), f"accuracy per stage of {r.label}")
        if img:
            blocks.append(img)
    return Section("Progressive training: per-stage accuracy", blocks, "progressive")
