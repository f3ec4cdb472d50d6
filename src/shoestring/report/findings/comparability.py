"""The ``comparable`` rule: training runs on different data, tokenizers, lengths or hosts.

Why: a loss in nats per token is only comparable on the same text with the same tokenizer, and
a speed only on the same machine; the report says so before any difference is read.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Finding
from shoestring.report.kinds import TRAINING_KINDS, RunInfo, flatten

__all__ = ["comparable_findings", "data_key"]


def data_key(r: RunInfo) -> dict[str, Any]:
    d = r.summary.get("data") or {}
    c = flatten(r.config)
    return {
        "data": d.get("path") or c.get("data.path"),
        "vocab": d.get("vocab_size") or c.get("model.vocab_size"),
        "tokenizer": d.get("tokenizer_sha256"),
        "seq_len": c.get("train.seq_len"),
        "steps": r.summary.get("max_steps") or c.get("train.max_steps"),
        "val_sequences": d.get("val_sequences"),
        "host": (r.summary.get("host") or {}).get("hostname"),
        "cpu": (r.summary.get("host") or {}).get("cpu"),
    }


def _differs(runs: list[RunInfo], key: str) -> dict[str, list[str]] | None:
    vals: dict[str, list[str]] = {}
    for r in runs:
        v = data_key(r)[key]
        if v is None:
            continue
        vals.setdefault(str(v), []).append(r.label)
    return vals if len(vals) > 1 else None


def _groups_text(groups: dict[str, list[str]]) -> str:
    return "; ".join(f"{v}: " + ", ".join(f"`{x}`" for x in labels) for v, labels in groups.items())


def comparable_findings(runs: list[RunInfo]) -> list[Finding]:
    tr = [r for r in runs if r.kind in TRAINING_KINDS]
    out = []
    if len(tr) < 2:
        return out
    checks = (
        (
            "data",
            "warning",
            "different data",
            "their losses are on different text and do not compare",
        ),
        (
            "vocab",
            "warning",
            "different vocabularies",
            "losses in nats per token of different tokenizers do not compare",
        ),
        (
            "tokenizer",
            "warning",
            "different tokenizers",
            "losses in nats per token of different tokenizers do not compare",
        ),
        (
            "seq_len",
            "info",
            "different context lengths",
            "validation loss is averaged over different context lengths",
        ),
        (
            "steps",
            "info",
            "different numbers of steps",
            "losses are compared at different points of training",
        ),
        (
            "val_sequences",
            "info",
            "different validation sets",
            "validation losses are means over different sequences",
        ),
        ("cpu", "caution", "different CPUs", "their speeds measure different machines"),
    )
    for key, sev, what, why in checks:
        groups = _differs(tr, key)
        if groups:
            out.append(
                Finding(
                    "comparable",
                    sev,  # type: ignore[arg-type]
                    f"The training runs use {what} ({_groups_text(groups)}): {why}.",
                    [r.label for r in tr],
                    {key: list(groups)},
                )
            )
    grpo = [r for r in runs if r.kind == "grpo"]
    if len(grpo) > 1:
        vals: dict[str, list[str]] = {}
        for r in grpo:
            vals.setdefault(str(r.config.get("dataset")), []).append(r.label)
        if len(vals) > 1:
            out.append(
                Finding(
                    "comparable",
                    "warning",
                    f"The GRPO runs train on different datasets ({_groups_text(vals)})"
                    ": their rewards are not on the same task.",
                    [r.label for r in grpo],
                    {},
                )
            )
    return out
