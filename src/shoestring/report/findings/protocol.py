"""The ``protocol`` rule: accuracies scored under different protocols are not comparable.

Why: an accuracy is a property of a model *and* of the protocol that asked and judged it
(prompt, few-shot examples, stop strings, the extractor that decides "correct"; see
:mod:`shoestring.scoring.protocols`). Every run directory that reports an accuracy records its
protocol (``summary.json["protocol"]`` and ``["protocol_key"]``; bench per model); older ones
record none. When the accuracies in one report - bench models, GRPO evaluations, progressive
stage gates - were scored under different protocols, or some recorded one and some did not,
this rule says so, and the paired tests between them are left out.
"""

from __future__ import annotations

from shoestring.report.blocks import Finding
from shoestring.report.kinds import RunInfo
from shoestring.report.measures import (
    NOT_RECORDED,
    bench_models,
    protocol_label,
    protocol_of,
    valid_eval,
)

__all__ = ["accuracy_protocols", "protocol_findings"]


def _reports_accuracy(run: RunInfo) -> bool:
    """Does a GRPO or progressive run hold an accuracy (an evaluation or a stage gate)?"""
    s = run.summary
    if run.kind == "grpo":
        return valid_eval(s.get("eval_before")) or valid_eval(s.get("eval_after"))
    if run.kind == "progressive":
        return valid_eval(s.get("base_eval")) or any(
            valid_eval(st.get("eval")) for st in s.get("stages") or [] if isinstance(st, dict)
        )
    return False


def accuracy_protocols(runs: list[RunInfo]) -> list[tuple[str, str | None, str]]:
    """(label, protocol identity, protocol name) of every accuracy source among ``runs``."""
    out = [(m.label, m.protocol_key, m.protocol) for m in bench_models(runs) if m.n]
    for r in runs:
        if r.kind in ("grpo", "progressive") and _reports_accuracy(r):
            key, shown = protocol_of(r.summary)
            out.append((r.label, key, shown))
    return out


def protocol_findings(runs: list[RunInfo]) -> list[Finding]:
    """One warning when the report's accuracies were scored under more than one protocol."""
    sources = accuracy_protocols(runs)
    # group the sources by protocol identity; an unrecorded protocol is a group of its own
    groups: dict[str | None, tuple[str, list[str]]] = {}
    for label, key, name in sources:
        groups.setdefault(key, (name, []))[1].append(label)
    if len(groups) < 2:
        return []
    text = "; ".join(
        f"{protocol_label(key, name)}: " + ", ".join(f"`{x}`" for x in labels)
        for key, (name, labels) in groups.items()
    )
    return [
        Finding(
            "protocol",
            "warning",
            f"The accuracies compared here were scored under different protocols ({text}): "
            "a prompt, shots, stop strings or extractor of its own makes each a different "
            "measurement, so these accuracies are not comparable and no paired or noise test "
            "is made between them.",
            [label for label, _, _ in sources],
            {"protocols": {(k or NOT_RECORDED): v[1] for k, v in groups.items()}},
        )
    ]
