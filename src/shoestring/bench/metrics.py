"""A bench model's numbers from its problem records: accuracy per extractor with 95% Wilson
intervals, speed and memory summed over its sessions, and McNemar's exact test between models.

Why separate: these are pure functions of the records and state.json, so a resumed or an
interrupted benchmark reports exactly what is on disk, computed the same way every time.
"""

from __future__ import annotations

from typing import Any

from shoestring.data.answers import EXTRACTORS
from shoestring.util.stats import format_accuracy, mcnemar_exact, wilson_interval

__all__ = ["EXTRACTOR_NAMES", "accuracy_by_extractor", "compare_models", "model_metrics"]

EXTRACTOR_NAMES: tuple[str, ...] = tuple(EXTRACTORS)


def accuracy_by_extractor(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Correct, n, accuracy, 95% Wilson interval and its text, for every extractor."""
    n = len(records)
    out: dict[str, dict[str, Any]] = {}
    for name in EXTRACTOR_NAMES:
        k = sum(1 for r in records if r["correct"].get(name))
        lo, hi = wilson_interval(k, n)
        out[name] = {
            "correct": k,
            "n": n,
            "accuracy": k / n if n else None,
            "ci95": [lo, hi],
            "text": format_accuracy(k, n),
        }
    return out


def model_metrics(records: list[dict[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of the selected problems, and speed summed over every session that generated
    lines for these settings (a resumed benchmark's throughput covers all of its work)."""
    sessions = state.get("sessions", [])
    gen_tokens = sum(s.get("generated_tokens", 0) for s in sessions)
    gen_seconds = sum(s.get("generation_seconds", 0.0) for s in sessions)
    gen_problems = sum(s.get("generated_problems", 0) for s in sessions)
    finish: dict[str, int] = {}
    for r in records:
        finish[r.get("finish_reason", "?")] = finish.get(r.get("finish_reason", "?"), 0) + 1
    loaded = [s for s in sessions if s.get("loaded")]
    last = loaded[-1] if loaded else {}
    peaks = [s["peak_rss_mb"] for s in loaded if s.get("peak_rss_mb") is not None]
    cuda = [s["cuda_peak_allocated_mb"] for s in loaded if s.get("cuda_peak_allocated_mb")]
    n = len(records)
    return {
        "n": n,
        "accuracy": accuracy_by_extractor(records),
        "generated_tokens": gen_tokens,
        "generation_seconds": round(gen_seconds, 3),
        "tokens_per_second": gen_tokens / gen_seconds if gen_seconds > 0 else None,
        "seconds_per_problem": gen_seconds / gen_problems if gen_problems else None,
        "mean_latency_seconds": (sum(r.get("seconds", 0.0) for r in records) / n) if n else None,
        "mean_tokens_per_problem": (sum(r.get("tokens", 0) for r in records) / n) if n else None,
        "finish_reasons": finish,
        "load_seconds": last.get("load_seconds"),
        "peak_rss_mb": max(peaks) if peaks else None,
        "rss_before_load_mb": last.get("rss_before_load_mb"),
        "cuda_peak_allocated_mb": max(cuda) if cuda else None,
        "sessions": len(sessions),
        "throughput_note": "generated tokens (EOS included) / generation wall time of every "
        "session, model loading and scoring excluded",
    }


def compare_models(
    results: list[dict[str, Any]], by_model: dict[str, dict[int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """McNemar's exact test for every pair of models on the problems both have scored, each
    with its own primary extractor (the number each row of the table reports)."""
    out = []
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            ra, rb = by_model[a["label"]], by_model[b["label"]]
            common = sorted(set(ra) & set(rb))
            ea, eb = a["primary_extractor"], b["primary_extractor"]
            res = mcnemar_exact(
                [bool(ra[k]["correct"][ea]) for k in common],
                [bool(rb[k]["correct"][eb]) for k in common],
                a_name=a["label"],
                b_name=b["label"],
            )
            out.append(
                {
                    "a": a["label"],
                    "b": b["label"],
                    "extractor_a": ea,
                    "extractor_b": eb,
                    "n": len(common),
                    "a_right_b_wrong": res.b10,
                    "a_wrong_b_right": res.b01,
                    "p_value": res.p_value,
                    "significant": res.significant,
                    "statement": res.statement,
                }
            )
    return out
