"""Turn a study into results.json, results.csv and the ranked summary table it prints.

Rows come from the storage (each trial's result row is a trial user attribute), not from the
trial directories, so a study whose workers ran on other machines still reports every trial.
The summary ranks configurations by mean validation loss over seeds, shows the spread, and says
whether each one differs from ``baseline`` of the same size by a Welch t-test - or that n is too
small to tell, instead of naming a winner inside the noise.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from shoestring.report.blocks import fmt
from shoestring.rundir.directory import atomic_write_json, atomic_write_text
from shoestring.search import grid
from shoestring.search.worker import ROW_ATTR
from shoestring.util.stats import format_p, mean_std, welch_t_test

__all__ = [
    "CSV_FIELDS",
    "format_success",
    "format_table",
    "success",
    "summarize",
    "trial_rows",
    "validation_check",
    "write_results",
]

CSV_FIELDS = [
    "trial",
    "size",
    "variant",
    "seed",
    "params",
    "val_loss",
    "val_accuracy",
    "perplexity",
    "tokens_per_second",
    "wall_seconds",
    "peak_rss_mb",
    "status",
    "error",
    "run_dir",
    "peak_memory_mb",
    "train_seed",
    "micro_batch",
    "grad_accum",
    "batch_size_asked",
    "eval_batches",
    "val_sequences",
    "oom_retries",
    "worker",
    "host",
    "extra_params",
]


def trial_rows(study: optuna.Study) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per counting trial that finished; plus counts of what was not a result."""
    trials = study.get_trials(deepcopy=False)
    live = grid.counting(trials)
    rows = []
    for t in sorted(live, key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        row = t.user_attrs.get(ROW_ATTR)
        if row is None:  # a trial whose worker died more often than the re-queue allows
            p = t.params
            row = {
                "trial": t.number,
                "size": p.get("size"),
                "variant": p.get("variant"),
                "seed": p.get("seed"),
                "status": "failed",
                "error": "its worker died on every attempt (heartbeat stopped); see the log",
            }
        rows.append(dict(row))
    counts = {
        "trials_in_storage": len(trials),
        "skipped_duplicates": sum(1 for t in trials if grid.SKIPPED in t.user_attrs),
        "requeued_after_crash": len(grid.superseded_numbers(trials)),
        "unfinished": sum(1 for t in live if not t.state.is_finished()),
    }
    return rows, counts


def _config_key(row: dict[str, Any]) -> tuple[str, str, str]:
    extra = json.dumps(row.get("extra_params") or {}, sort_keys=True)
    return (str(row["size"]), str(row["variant"]), extra)


def _finished_losses(rows: Sequence[dict[str, Any]]) -> list[float]:
    return [
        r["val_loss"] for r in rows if r["status"] == "finished" and r.get("val_loss") is not None
    ]


def summarize(rows: Sequence[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Per configuration: n, mean +- std of validation loss, rank, Welch test vs baseline."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[_config_key(r)].append(r)
    out = []
    for key, rs in groups.items():
        losses = [
            r["val_loss"] for r in rs if r["status"] == "finished" and r.get("val_loss") is not None
        ]
        accs = [r["val_accuracy"] for r in rs if r.get("val_accuracy") is not None]
        mean, std = mean_std(losses) if losses else (None, None)
        acc_mean = mean_std(accs)[0] if accs else None
        entry: dict[str, Any] = {
            "size": key[0],
            "variant": key[1],
            "n": len(losses),
            "trials": len(rs),
            "failed": sum(1 for r in rs if r["status"] == "failed"),
            "pruned": sum(1 for r in rs if r["status"] == "pruned"),
            "val_loss_mean": mean,
            "val_loss_std": std,
            "val_losses": losses,
            "val_accuracy_mean": acc_mean,
            "params": next((r.get("params") for r in rs if r.get("params")), None),
            "tokens_per_second_mean": _mean([r.get("tokens_per_second") for r in rs]),
            "wall_seconds_mean": _mean([r.get("wall_seconds") for r in rs]),
            "peak_memory_mb_mean": _mean([r.get("peak_memory_mb") for r in rs]),
        }
        if key[2] != "{}":
            entry["extra_params"] = json.loads(key[2])
        out.append(entry)
    ranked = sorted(
        (e for e in out if e["val_loss_mean"] is not None), key=lambda e: e["val_loss_mean"]
    )
    for i, e in enumerate(ranked, 1):
        e["rank"] = i
    for e in out:
        e.setdefault("rank", None)
        _compare_to_baseline(e, groups, alpha)
    out.sort(key=lambda e: (e["rank"] is None, e["rank"] or 0))
    return out


def _mean(xs: Sequence[Any]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, (int, float))]
    return sum(vals) / len(vals) if vals else None


def _compare_to_baseline(
    e: dict[str, Any], groups: dict[tuple[str, str, str], list[dict[str, Any]]], alpha: float
) -> None:
    extra = json.dumps(e.get("extra_params") or {}, sort_keys=True)
    e["p_vs_baseline"] = None
    e["delta_vs_baseline"] = None
    if e["variant"] == "baseline":
        e["note"] = "baseline"
        return
    base = groups.get((e["size"], "baseline", extra))
    if not base:
        e["note"] = "no baseline with the same size and settings"
        return
    b = _finished_losses(base)
    if b and e["val_loss_mean"] is not None:
        e["delta_vs_baseline"] = e["val_loss_mean"] - mean_std(b)[0]
    test = welch_t_test(e["val_losses"], b)
    if test is None:
        e["note"] = "n too small"
        return
    e["p_vs_baseline"] = test.p
    e["t_vs_baseline"] = test.t
    if test.p < alpha:
        e["note"] = ("better" if test.t < 0 else "worse") + f" than baseline (p={format_p(test.p)})"
    else:
        e["note"] = f"no significant difference (p={format_p(test.p)})"


def success(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """How many trials finished, failed or were pruned, and what the OOM retries saved."""
    total = len(rows)
    done = sum(1 for r in rows if r["status"] == "finished")
    return {
        "mode": mode,
        "finished": done,
        "failed": sum(1 for r in rows if r["status"] == "failed"),
        "pruned": sum(1 for r in rows if r["status"] == "pruned"),
        "total": total,
        "rate": done / total if total else None,
        "oom_retries": sum(int(r.get("oom_retries") or 0) for r in rows),
        "recovered_by_oom_retry": sum(
            1 for r in rows if r["status"] == "finished" and (r.get("oom_retries") or 0) > 0
        ),
    }


def validation_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Did every trial evaluate on the same validation sequences? (Stated, not assumed.)"""
    seqs = sorted({r.get("val_sequences") for r in rows if r.get("val_sequences") is not None})
    return {
        "val_sequences": seqs[0] if len(seqs) == 1 else seqs,
        "identical_for_all_trials": len(seqs) <= 1,
        "note": "the first eval_batches x batch_size non-overlapping windows of the "
        "document-split validation shard; an OOM retry doubles eval_batches as it halves the "
        "micro-batch so the sequences stay the same",
    }


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table, best configuration first (printed at the end)."""
    lines = [
        "| rank | size | variant | params | n | val loss mean +- std | val acc | vs baseline |",
        "|---:|---|---|---:|---:|---|---:|---|",
    ]
    for e in summary:
        if e["val_loss_mean"] is None:
            loss = "no finished trial"
        elif e["val_loss_std"] is None:
            loss = f"{e['val_loss_mean']:.4f} (n=1, no spread)"
        else:
            loss = f"{e['val_loss_mean']:.4f} +- {e['val_loss_std']:.4f}"
        params = f"{e['params'] / 1e6:.2f}M" if e.get("params") else "-"
        acc = e.get("val_accuracy_mean")
        name = e["variant"] + (
            " " + json.dumps(e["extra_params"], sort_keys=True) if e.get("extra_params") else ""
        )
        note = e["note"]
        if e.get("delta_vs_baseline") is not None and e["variant"] != "baseline":
            note = f"{e['delta_vs_baseline']:+.4f}, {note}"
        lines.append(
            f"| {fmt(e['rank'], 'd')} | {e['size']} | {name} | {params} | {e['n']} | {loss} | "
            f"{'-' if acc is None else f'{100 * acc:.1f}%'} | {note} |"
        )
    return "\n".join(lines)


def format_success(s: dict[str, Any]) -> str:
    """The success rate as the one line logged at the end of a study."""
    if not s["total"]:
        return f"success rate ({s['mode']} mode): no trials"
    return (
        f"success rate ({s['mode']} mode): {s['finished']}/{s['total']} trials finished "
        f"({100 * s['rate']:.0f}%), {s['failed']} failed, {s['pruned']} pruned; "
        f"{s['oom_retries']} OOM retries, {s['recovered_by_oom_retry']} trials saved by them"
    )


def write_results(
    study_dir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, str]:
    """results.json ({"trials", "summary", ...}) and results.csv in ``study_dir``."""
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study_dir / "results.json", {"trials": rows, "summary": summary, **meta})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                for k, v in r.items()
                if k in CSV_FIELDS
            }
        )
    atomic_write_text(study_dir / "results.csv", buf.getvalue())
    return {
        "results_json": str(study_dir / "results.json"),
        "results_csv": str(study_dir / "results.csv"),
    }
