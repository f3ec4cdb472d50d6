"""Search studies (``shoestring search``): configurations ranked by validation loss over seeds,
and which of them do not differ from the baseline beyond seed noise.

Why: this is ``search``'s own report as well as a part of every comparison, so it shows the
study's summary table and how many trials finished, and names each configuration whose Welch
test against the baseline is not significant or that has too few seeds for a test.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import (
    Bullets,
    Finding,
    Para,
    Section,
    Table,
    fmt,
    fmt_int,
    fmt_millions,
)
from shoestring.report.parts import Kind, SectionContext, cell, of_kind, safe_name
from shoestring.report.run import RunInfo
from shoestring.util.stats import format_p

__all__ = ["KIND"]

HEADERS = ["rank", "size", "variant", "params", "seeds", "val loss mean +- std", "val acc"]
HEADERS += ["vs baseline", "tokens/s mean"]
LOSS_AXIS = "validation loss, mean +- std over seeds (grey: one seed)"


def _variant_name(row: dict[str, Any]) -> str:
    """The variant, with the extra parameters that set it apart from its namesakes."""
    extra = row.get("extra_params")
    return str(row.get("variant")) + (" " + json.dumps(extra, sort_keys=True) if extra else "")


def _loss_text(mean: Any, std: Any) -> str:
    if mean is None:
        return "no finished trial"
    return f"{mean:.4f} (n=1, no spread)" if std is None else f"{mean:.4f} +- {std:.4f}"


def _vs_baseline(row: dict[str, Any]) -> str:
    """The difference from the baseline and what its test says (the study's note)."""
    note, p, delta = row.get("note"), row.get("p_vs_baseline"), row.get("delta_vs_baseline")
    if not note:
        return format_p(float(p)) if p is not None else "-"
    if delta is not None and row.get("variant") != "baseline":
        return f"{delta:+.4f}, {note}"
    return str(note)


def _row(row: dict[str, Any]) -> list[str]:
    acc = row.get("val_accuracy_mean")
    return [
        cell(row.get("rank")),
        str(row.get("size")),
        _variant_name(row),
        fmt_millions(row.get("params")) if row.get("params") else "-",
        fmt_int(row.get("n")),
        _loss_text(row.get("val_loss_mean"), row.get("val_loss_std")),
        "-" if acc is None else f"{100 * acc:.1f}%",
        _vs_baseline(row),
        fmt(row.get("tokens_per_second_mean"), ",.0f"),
    ]


def _success_and_validation(res: dict[str, Any]) -> list[str]:
    """The study's success rate and whether every trial evaluated on the same sequences."""
    out = []
    succ = res.get("success")
    if isinstance(succ, dict) and succ.get("total"):
        out.append(
            f"success rate ({succ.get('mode')} mode): {succ.get('finished')}/{succ['total']} "
            f"trials finished ({fmt(100 * float(succ.get('rate') or 0.0), '.0f')}%), "
            f"{succ.get('failed')} failed, {succ.get('pruned')} pruned; "
            f"{succ.get('oom_retries')} OOM retries, "
            f"{succ.get('recovered_by_oom_retry')} trials saved by them"
        )
    val = res.get("validation")
    if isinstance(val, dict) and "identical_for_all_trials" in val:
        same = val["identical_for_all_trials"]
        out.append(
            f"validation sequences: {val.get('val_sequences')} - "
            + ("the same for every trial" if same else "**not the same for every trial**")
        )
    return out


def study_sections(st: list[RunInfo], ctx: SectionContext) -> list[Section]:
    blocks: list[Any] = []
    for r in st:
        res = r.result or {}
        summ, trials = res.get("summary") or [], res.get("trials") or []
        counts = Counter(str(t.get("status")) for t in trials)
        state = "" if r.finished else f" - **{r.status_text()}**: partial"
        shown = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        blocks.append(Para(f"**{r.label}**: {len(trials)} trials ({shown}){state}."))
        if summ:
            blocks.append(Table(HEADERS, [_row(row) for row in summ], "rllrrrrlr"))
        if extra := _success_and_validation(res):
            blocks.append(Bullets(extra))
        # +- one seed std; grey without a bar: a configuration of one seed
        losses = [(x, x.get("val_loss_mean"), x.get("val_loss_std") or 0.0) for x in summ]
        points = [
            {"label": f"{x.get('size')}/{x.get('variant')}", "x": m, "lo": m - sd, "hi": m + sd}
            | {"color": "#999999" if x.get("val_loss_std") is None else "#1f77b4"}
            for x, m, sd in losses
            if m is not None
        ]
        blocks += ctx.plot(
            f"study_{safe_name(r.label)}.png",
            lambda p, points=points, r=r: plots.intervals(points, LOSS_AXIS, p, r.label),
            f"validation loss per configuration of {r.label}",
        )
    return [Section("Studies", blocks, "study")]


def _noise(runs: list[RunInfo]) -> list[Finding]:
    """Configurations within seed noise of the baseline, and those too small for a test."""
    out = []
    for r in of_kind(runs, "study"):
        within, small = [], []
        for row in (r.result or {}).get("summary", []):
            name, p = f"{row.get('size')}/{row.get('variant')}", row.get("p_vs_baseline")
            if p is None and row.get("note") and "baseline" not in str(row["note"]):
                small.append(f"{name} ({row['note']})")
            elif p is not None and p >= 0.05:
                within.append(f"{name} (p={format_p(float(p))})")
        if within:
            text = (
                f"study `{r.label}`: {len(within)} configuration(s) do not differ from the "
                "baseline beyond seed noise (Welch t-test over seeds): " + ", ".join(within) + "."
            )
            out.append(Finding("noise", "caution", text, [r.label], {"configs": within}))
        if small:
            text = f"study `{r.label}`: no test possible for " + ", ".join(small)
            out.append(
                Finding("noise", "info", text + "; run more seeds to compare them.", [r.label], {})
            )
    return out


KIND = Kind(
    name="study",
    writer="`shoestring search` studies (summary.json kind 'study' or results.json with trials)",
    sections=study_sections,
    summary_kind="study",
    result_file="results.json",
    result_key="trials",
    record=lambda r: {"summary": (r.result or {}).get("summary", [])},
    findings=_noise,
)
