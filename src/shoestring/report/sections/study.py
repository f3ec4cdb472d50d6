"""The study section: a search study's configurations ranked by validation loss over seeds.

Why: it is ``search``'s own report as well as a part of every comparison, so it shows what the
study's summary table showed - rank, configuration, parameters, seeds, the loss mean and spread,
validation accuracy, the difference from the baseline with its test - and how many trials
finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Bullets, Para, Section, Table, fmt, fmt_int, fmt_millions
from shoestring.report.kinds import RunInfo
from shoestring.report.sections.common import SectionContext, cell, safe_name
from shoestring.util.stats import format_p

__all__ = ["study_section"]


def _variant_name(row: dict[str, Any]) -> str:
    """The variant, with the extra parameters that set it apart from its namesakes."""
    extra = row.get("extra_params")
    return str(row.get("variant")) + (" " + json.dumps(extra, sort_keys=True) if extra else "")


def _loss_text(mean: Any, std: Any) -> str:
    if mean is None:
        return "no finished trial"
    if std is None:
        return f"{mean:.4f} (n=1, no spread)"
    return f"{mean:.4f} +- {std:.4f}"


def _vs_baseline(row: dict[str, Any]) -> str:
    """The difference from the baseline and what its test says (the study's note)."""
    note = row.get("note")
    p = row.get("p_vs_baseline")
    if not note:
        return format_p(float(p)) if p is not None else "-"
    delta = row.get("delta_vs_baseline")
    if delta is not None and row.get("variant") != "baseline":
        return f"{delta:+.4f}, {note}"
    return str(note)


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


def study_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    st = [r for r in runs if r.kind == "study"]
    if not st:
        return None
    blocks: list[Any] = []
    for r in st:
        res = r.extra.get("results") or {}
        summ = res.get("summary") or []
        trials = res.get("trials") or []
        counts: dict[str, int] = {}
        for t in trials:
            counts[str(t.get("status"))] = counts.get(str(t.get("status")), 0) + 1
        state = "" if r.finished else f" - **{r.status_text()}**: partial"
        blocks.append(
            Para(
                f"**{r.label}**: {len(trials)} trials ("
                + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                + f"){state}."
            )
        )
        rows = []
        plot_rows = []
        for row in summ:
            mean, std = row.get("val_loss_mean"), row.get("val_loss_std")
            acc = row.get("val_accuracy_mean")
            rows.append(
                [
                    cell(row.get("rank")),
                    str(row.get("size")),
                    _variant_name(row),
                    fmt_millions(row.get("params")) if row.get("params") else "-",
                    fmt_int(row.get("n")),
                    _loss_text(mean, std),
                    "-" if acc is None else f"{100 * acc:.1f}%",
                    _vs_baseline(row),
                    fmt(row.get("tokens_per_second_mean"), ",.0f"),
                ]
            )
            plot_rows.append(
                {"label": f"{row.get('size')}/{row.get('variant')}", "mean": mean, "std": std}
            )
        if rows:
            blocks.append(
                Table(
                    [
                        "rank",
                        "size",
                        "variant",
                        "params",
                        "seeds",
                        "val loss mean +- std",
                        "val acc",
                        "vs baseline",
                        "tokens/s mean",
                    ],
                    rows,
                    ["r", "l", "l", "r", "r", "r", "r", "l", "r"],
                )
            )
        extra = _success_and_validation(res)
        if extra:
            blocks.append(Bullets(extra))
        img = ctx.plot(
            f"study_{safe_name(r.label)}.png",
            lambda p, rows=plot_rows, r=r: plots.study_plot(rows, p, r.label),
            f"validation loss per configuration of {r.label}",
        )
        if img:
            blocks.append(img)
    return Section("Studies", blocks, "study")
