"""The terminal view of an analysis: one host line and one summary table, printed by the CLI.

The full tables live in report.md, written by the one report system
(:func:`shoestring.runs.compare.write_run_report`); this is only what ``analyze`` prints.
Every number comes from analysis.json; nothing is recomputed here except units.
"""

from __future__ import annotations

from typing import Any

from shoestring.runs.report import fmt, fmt_mib, fmt_millions

__all__ = ["host_line", "summary_table"]


def _size(b: float | None) -> str:
    """A cache size as KiB or MiB, the unit the vendor quotes."""
    if b is None:
        return "-"
    if b >= 2**20:
        return f"{b / 2**20:.1f} MiB"
    return f"{b / 2**10:.0f} KiB"


def _gflop(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def host_line(host: dict[str, Any]) -> str:
    """One line: the caches the fit column is judged against and the peaks MFU uses."""
    c = host.get("caches") or {}
    mm = host.get("matmul_gflops") or {}
    line = (
        f"caches ({c.get('source', '?')}): L1d {_size(c.get('L1d'))}, L2 {_size(c.get('L2'))} "
        f"per core, L3 {_size(c.get('L3'))}"
    )
    if mm:
        line += (
            f"; matmul peak fp32 {fmt(mm.get('fp32'), ',.0f')} / bf16 "
            f"{fmt(mm.get('bf16'), ',.0f')} GFLOP/s at {host.get('threads')} threads"
        )
    return line


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The one table ``analyze`` prints: a row per config with the headline numbers."""
    header = [
        "config",
        "params",
        "non-emb",
        "train GFLOP/tok (formula / counted)",
        "mem est MB",
        "peak RSS MB",
        "fits: d x seq / d_ff x seq / layer W",
        "tokens/s",
        "GFLOP/s",
        "MFU",
        "projected",
        "meas/proj",
    ]
    body = []
    for r in rows:
        f = r["flops"]
        mem = r["memory"]
        body.append(
            [
                r["label"],
                fmt_millions(r["params"]["total"]),
                fmt_millions(r["params"]["non_embedding"]),
                f"{_gflop(f['train']['full'])} / {_gflop(f['counted']['train'])} "
                f"({f['train_rel_error']:+.2%})",
                fmt_mib(mem["total_bytes"]),
                fmt_mib(mem.get("peak_rss_bytes")),
                " / ".join(
                    r["cache_fit"][k]["fits"]
                    for k in ("activation_block", "mlp_block", "layer_weights")
                ),
                fmt(r.get("tokens_per_second"), ",.0f"),
                fmt(r.get("achieved_gflops"), ",.1f"),
                fmt(r.get("mfu"), ".1%"),
                fmt(r.get("projected_tokens_per_second"), ",.0f"),
                fmt(r.get("measured_over_projected"), ".2f"),
            ]
        )
    return _table(header, body)
