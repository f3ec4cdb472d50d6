"""The report's sections, one module per kind of run directory, all from the same parts.

Why one builder per kind over the loaded runs (:class:`~shoestring.report.kinds.RunInfo`): each
builder turns its kind's files into tables, paragraphs and plots of the intermediate report
(:mod:`shoestring.report.blocks`), so a new kind adds one module and is rendered to Markdown, HTML
and JSON for free. A run that did not finish is never put in a results table: it goes to a table
of its own that says what state it is in. The same sections are a comparison's report
(``shoestring compare``) and a command's own report.md (``compare.write_run_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report.blocks import Section
from shoestring.report.kinds import TRAINING_KINDS, RunInfo, last_step
from shoestring.report.measures import bench_models, protocol_of, training_measures
from shoestring.report.sections.analysis import analysis_section
from shoestring.report.sections.bench import bench_section
from shoestring.report.sections.common import SectionContext, overview_section
from shoestring.report.sections.grpo import grpo_section
from shoestring.report.sections.hybrid import hybrid_section
from shoestring.report.sections.hybrid_benchmark import hybrid_benchmark_section
from shoestring.report.sections.progressive import progressive_section
from shoestring.report.sections.study import study_section
from shoestring.report.sections.train import training_section

__all__ = ["build_sections", "run_record"]


BUILDERS = (
    training_section,
    hybrid_section,
    hybrid_benchmark_section,
    bench_section,
    grpo_section,
    progressive_section,
    study_section,
    analysis_section,
)


def build_sections(runs: Sequence[RunInfo], ctx: SectionContext) -> list[Section]:
    """The overview, then each kind's section(s) for the kinds present, in a fixed order.

    A builder returns None (its kind is absent), a section, or several: a report on one bench
    or one analysis adds the detail sections that command's own report showed."""
    out = [overview_section(runs)]
    for b in BUILDERS:
        made = b(runs, ctx)
        if isinstance(made, Section):
            out.append(made)
        elif made:
            out += made
    return out


def run_record(r: RunInfo) -> dict[str, Any]:
    """One run for ``--format json``: identity, status, and its headline numbers."""
    rec: dict[str, Any] = {
        "label": r.label,
        "kind": r.kind,
        "path": str(r.path),
        "status": r.status,
        "status_text": r.status_text(),
        "is_result": r.finished,
        "last_step": last_step(r),
    }
    if r.kind in TRAINING_KINDS:
        rec["measured"] = training_measures(r)
        rec["config"] = r.config
    elif r.kind == "bench":
        # bench_models reads every model of the summary, in order: one entry per model
        rec["models"] = [
            {
                "label": m.get("label"),
                "accuracy": (m.get("metrics") or {})
                .get("accuracy", {})
                .get(m.get("primary_extractor")),
                "protocol_key": bm.protocol_key,
                "tokens_per_second": (m.get("metrics") or {}).get("tokens_per_second"),
            }
            for m, bm in zip(r.summary.get("models", []), bench_models([r]), strict=True)
        ]
        rec["comparisons"] = r.summary.get("comparisons", [])
    elif r.kind == "grpo":
        keys = (
            "steps",
            "max_steps",
            "train_seconds",
            "seconds_per_step",
            "time_split",
            "final_reward_mean",
            "eval_before",
            "eval_after",
            "system",
        )
        rec["measured"] = {k: r.summary.get(k) for k in keys}
        rec["config"] = r.config
    elif r.kind == "progressive":
        rec["base_eval"] = r.summary.get("base_eval")
        rec["stages"] = r.summary.get("stages", [])
    elif r.kind == "study":
        rec["summary"] = (r.extra.get("results") or {}).get("summary", [])
    elif r.kind == "hybrid_benchmark":
        rec["benchmark"] = r.extra.get("benchmark")
    if r.kind == "hybrid":
        rec["hybrid"] = r.summary.get("hybrid")
    if r.kind in ("grpo", "progressive"):
        rec["protocol_key"] = protocol_of(r.summary)[0]
    return rec
