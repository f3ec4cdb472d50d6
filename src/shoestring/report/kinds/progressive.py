"""Progressive training runs (``shoestring progressive``): the accuracy at every stage gate,
accepted or rolled back, and whether an accepted stage's gain is more than noise.

Why: this is ``progressive``'s own report as well as a part of every comparison, so it shows its
summary table (attempt, learning rate, accuracy with 95% interval, distance to the best so far,
McNemar's p against the stage's start), the rollback rule and the best model.
"""

from __future__ import annotations

from typing import Any

from shoestring.report import accuracy, plots
from shoestring.report.accuracy import eval_text, interval_row, protocol_of, valid_eval
from shoestring.report.blocks import Bullets, Finding, Para, Section, Table, fmt, fmt_int
from shoestring.report.parts import Kind, SectionContext, cell, of_kind, safe_name
from shoestring.report.run import RunInfo
from shoestring.util.stats import format_p

__all__ = ["KIND"]

#: Plot colour of a stage by its gate's verdict.
STATUS_COLORS = {"accepted": "#2ca02c", "rolled_back": "#d62728", "retried": "#ff7f0e"}
STATUS_COLORS |= {"stopped": "#7f7f7f", "failed": "#d62728"}
HEADERS = ["stage", "attempt", "status", "lr", "accuracy [95% CI] (correct/n)", "best so far"]
HEADERS += ["vs best (points)", "McNemar p vs start", "seconds", "run dir"]


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


def _stage_row(st: dict[str, Any]) -> list[str]:
    drop, p = st.get("drop_points"), st.get("p_vs_start")
    # "stopped" is a rollback that also ended the run
    status = str(st.get("status")) + (" (rolled back)" if st.get("status") == "stopped" else "")
    return [
        str(st.get("label") or st.get("name")),
        fmt_int(st.get("attempt")),
        status,
        cell(st.get("learning_rate")),
        eval_text(st.get("eval")),
        fmt(st.get("best_so_far"), ".3f"),
        f"{0.0 - drop + 0.0:+.1f}" if drop is not None else "-",  # + 0.0: no "-0.0"
        format_p(float(p)) if p is not None else "-",
        fmt(st.get("seconds"), ",.1f"),
        str(st.get("run_dir") or "-"),
    ]


def _run_blocks(r: RunInfo, ctx: SectionContext) -> list[Any]:
    s, be = r.summary, r.summary.get("base_eval")
    base = ["(base model)", "-", "measured", "-", eval_text(be), "-", "-", "-"]
    base += [fmt(be.get("seconds") if isinstance(be, dict) else None, ",.1f")]
    base += [str(s.get("base_model") or r.config.get("base_model") or "-")]
    points = [interval_row("base", be["correct"], be["n"], "#7f7f7f")] if valid_eval(be) else []
    for st in s.get("stages", []):
        if valid_eval(ev := st.get("eval")):
            label = f"{st.get('name')} #{st.get('attempt', 1)} ({st.get('status')})"
            color = STATUS_COLORS.get(str(st.get("status")), "#1f77b4")
            points.append(interval_row(label, ev["correct"], ev["n"], color))
    state = "" if r.finished else f" - **{r.status_text()}**, not a result"
    caption = (
        f"**{r.label}**: rollbacks {fmt_int(s.get('rollbacks'))}; best model "
        f"`{s.get('best_model_dir', '-')}`; scored under protocol "
        f"{accuracy.protocol_label(*protocol_of(s))}{state}"
    )
    rows = [base] + [_stage_row(st) for st in s.get("stages", [])]
    blocks: list[Any] = [Table(HEADERS, rows, "lrlrlrrrrl", caption), Para(_rules_text(s))]
    if s.get("warnings"):
        blocks += [Para(f"**Warnings of {r.label}:**"), Bullets([str(w) for w in s["warnings"]])]
    alt = f"accuracy per stage of {r.label}"
    title = f"{r.label}: accuracy per stage"
    img = ctx.plot(
        f"progressive_{safe_name(r.label)}.png",
        lambda p: plots.intervals(points, plots.ACCURACY_AXIS, p, title, plots.ACCURACY_XLIM),
        alt,
    )
    # a run's own report shows the plot progressive drew into its directory
    own = ctx.own_image(r, s.get("plot"), alt)
    return blocks + (img or ([own] if own else []))


def progressive_sections(runs: list[RunInfo], ctx: SectionContext) -> list[Section]:
    blocks = [b for r in runs for b in _run_blocks(r, ctx)]
    return [Section("Progressive training: per-stage accuracy", blocks, "progressive")]


def _noise(runs: list[RunInfo]) -> list[Finding]:
    """Accepted stages whose gain over the model before them is within noise: McNemar's exact
    p where the gate recorded it, else overlapping Wilson intervals."""
    out = []
    for r in of_kind(runs, "progressive"):
        prev = r.summary.get("base_eval")
        for st in r.summary.get("stages", []):
            ev = st.get("eval")
            if st.get("status") != "accepted" or not (valid_eval(ev) and valid_eval(prev)):
                continue
            gain = ev["correct"] / ev["n"] > prev["correct"] / prev["n"]
            p = st.get("p_vs_start")
            within = float(p) >= 0.05 if p is not None else accuracy.evals_overlap(prev, ev)
            how = "the 95% intervals overlap"
            if p is not None:
                how = f"McNemar exact p={format_p(float(p))} on the same problems"
            if gain and within:
                text = (
                    f"progressive `{r.label}`: stage `{st.get('name')}` was accepted at "
                    f"{eval_text(ev)} over {eval_text(prev)}; {how}, so the gain is within noise."
                )
                out.append(Finding("noise", "caution", text, [r.label], {"p_value": p}))
            prev = ev
    return out


def _reports_accuracy(s: dict[str, Any]) -> bool:
    """Does the run hold an accuracy (the base evaluation or a stage gate)?"""
    stages = [st for st in s.get("stages") or [] if isinstance(st, dict)]
    return valid_eval(s.get("base_eval")) or any(valid_eval(st.get("eval")) for st in stages)


KIND = Kind(
    name="progressive",
    writer="`shoestring progressive` (summary.json kind 'progressive')",
    sections=progressive_sections,
    summary_kind="progressive",
    record=lambda r: {
        "base_eval": r.summary.get("base_eval"),
        "stages": r.summary.get("stages", []),
        "protocol_key": protocol_of(r.summary)[0],
    },
    findings=_noise,
    accuracies=lambda runs: [
        (r.label, *protocol_of(r.summary)) for r in runs if _reports_accuracy(r.summary)
    ],
)
