"""What a run measured, read from its files: the numbers both the sections and the findings use.

Why a module of its own: a report's tables (:mod:`shoestring.report.sections`) and its rules
(:mod:`shoestring.report.findings`) must cite the same numbers. Reading a training run's
throughput, a bench model's accuracy or the scoring protocol of an accuracy in one place keeps
a table and the finding next to it from disagreeing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shoestring.report.kinds import RunInfo
from shoestring.util.stats import mcnemar_exact, wilson_interval

__all__ = [
    "NOT_RECORDED",
    "BenchModel",
    "acc_text",
    "bench_models",
    "bench_pair",
    "eval_cell",
    "evals_overlap",
    "protocol_label",
    "protocol_of",
    "training_measures",
    "valid_eval",
]

#: Shown for an accuracy whose run recorded no scoring protocol (written before protocols).
NOT_RECORDED = "not recorded"
# An older bench recorded only its protocol's name, not what the protocol was.
NAME_ONLY = "(name only)"


def protocol_of(rec: dict[str, Any]) -> tuple[str | None, str]:
    """(identity, name) of the scoring protocol ``rec`` (a summary or a bench model) names.

    The identity is ``protocol_key`` when recorded (e.g. ``qa@de7c6963``: name and a hash of
    everything that decides a score); a protocol dict without a key is identified by its
    content; an older bench's bare protocol name by that name alone. None: nothing recorded.
    """
    key, proto = rec.get("protocol_key"), rec.get("protocol")
    name = proto.get("name") if isinstance(proto, dict) else proto
    if key:
        return str(key), str(name or str(key).split("@")[0])
    if isinstance(proto, dict):
        return f"{name}#" + json.dumps(proto, sort_keys=True, default=str), str(name or "?")
    if proto:
        return f"{proto} {NAME_ONLY}", str(proto)
    return None, NOT_RECORDED


def protocol_label(key: str | None, name: str) -> str:
    """How a finding names a protocol: its key where one was recorded, else what is known."""
    if key is None:
        return NOT_RECORDED
    if key.endswith(NAME_ONLY):
        return f"{name} (name only, its definition not recorded)"
    return name if "#" in key else key


def training_measures(run: RunInfo) -> dict[str, Any]:
    """The measured results of a training run, from its summary (None where not recorded)."""
    s, system = run.summary, run.summary.get("system") or {}
    rt = s.get("runtime") or {}
    return {
        "wall_seconds": s.get("session_wall_seconds"),
        "train_seconds": s.get("train_seconds"),
        "tokens_per_second": s.get("tokens_per_second"),
        "samples_per_second": s.get("samples_per_second"),
        "cpu_percent_mean": system.get("cpu_percent_mean"),
        "cpu_percent_peak": system.get("cpu_percent_peak"),
        "host_cpu_percent_mean": system.get("host_cpu_percent_mean"),
        "peak_rss_mb": system.get("peak_rss_mb"),
        "cuda_peak_allocated_mb": system.get("cuda_peak_allocated_mb"),
        "final_val_loss": s.get("final_val_loss"),
        "best_val_loss": s.get("best_val_loss"),
        "best_step": s.get("best_step"),
        "final_train_loss": s.get("final_train_loss"),
        "steps": s.get("steps"),
        "max_steps": s.get("max_steps"),
        "device": rt.get("device"),
        "dtype": rt.get("dtype"),
        "threads": rt.get("threads"),
        "n_params": s.get("n_params"),
    }


# ----------------------------------------------------------------------------- accuracies


def acc_text(k: int, n: int) -> str:
    """``20.0% [11.2, 33.0] (10/50)``: an accuracy with its 95% Wilson interval."""
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def valid_eval(e: Any) -> bool:
    """An evaluation record (``{"correct", "n", ...}``) with something in it."""
    return isinstance(e, dict) and bool(e.get("n")) and e.get("correct") is not None


def eval_cell(e: Any) -> str:
    """An evaluation record as a table cell: ``12.0% [5.6, 23.8] (n=50)``, or a dash."""
    if not valid_eval(e):
        return "-"
    k, n = int(e["correct"]), int(e["n"])
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


def evals_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do the 95% Wilson intervals of two evaluation records overlap?"""
    la, ha = wilson_interval(int(a["correct"]), int(a["n"]))
    lb, hb = wilson_interval(int(b["correct"]), int(b["n"]))
    return not (ha < lb or hb < la)


@dataclass
class BenchModel:
    """One model's result in one bench directory."""

    label: str  # unique over the report
    bench: str
    source: str | None
    extractor: str
    correct: int
    n: int
    records: dict[int, dict[str, Any]]
    tokens_per_second: float | None
    seconds: float | None
    name_text: str
    protocol_key: str | None = None  # identity of the scoring protocol (see protocol_of)
    protocol: str = NOT_RECORDED  # its name


def bench_models(runs: list[RunInfo]) -> list[BenchModel]:
    """Every model result of every bench directory, labelled uniquely across directories."""
    benches = [r for r in runs if r.kind == "bench"]
    out = []
    for r in benches:
        for m in r.summary.get("models", []):
            ext = m.get("primary_extractor") or "flexible"
            acc = (m.get("metrics") or {}).get("accuracy", {}).get(ext) or {}
            label = m["label"] if len(benches) == 1 else f"{r.label}:{m['label']}"
            mm = m.get("metrics") or {}
            # a model's own protocol record wins; else the bench's (one protocol for all)
            key, shown = protocol_of(m)
            if key is None:
                key, shown = protocol_of(r.summary)
            out.append(
                BenchModel(
                    label=label,
                    bench=r.label,
                    source=str((r.summary.get("data") or {}).get("source")),
                    extractor=ext,
                    correct=int(acc.get("correct", 0)),
                    n=int(acc.get("n", 0)),
                    records=r.extra.get("problems", {}).get(m["label"], {}),
                    tokens_per_second=mm.get("tokens_per_second"),
                    seconds=mm.get("seconds_per_problem"),
                    name_text=f"{m['label']} {m.get('model', '')}",
                    protocol_key=key,
                    protocol=shown,
                )
            )
    return out


def bench_pair(a: BenchModel, b: BenchModel) -> dict[str, Any] | None:
    """McNemar on common problems when both have per-problem records of the same data; else
    the unpaired view (do the Wilson intervals overlap?). None when either scored nothing."""
    if a.n == 0 or b.n == 0:
        return None
    common = sorted(set(a.records) & set(b.records)) if a.source == b.source else []
    if common:
        res = mcnemar_exact(
            [bool(a.records[i]["correct"].get(a.extractor)) for i in common],
            [bool(b.records[i]["correct"].get(b.extractor)) for i in common],
            a_name=a.label,
            b_name=b.label,
        )
        return {
            "paired": True,
            "n": len(common),
            "p_value": res.p_value,
            "significant": res.significant,
            "statement": res.statement,
            "a_right_b_wrong": res.b10,
            "a_wrong_b_right": res.b01,
        }
    la, ha = wilson_interval(a.correct, a.n)
    lb, hb = wilson_interval(b.correct, b.n)
    overlap = not (ha < lb or hb < la)
    return {
        "paired": False,
        "overlap": overlap,
        "significant": not overlap,
        "ci_a": [la, ha],
        "ci_b": [lb, hb],
    }
