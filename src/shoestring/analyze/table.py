"""The terminal view of an analysis: one host line and the summary table, printed by the CLI.

The table is the analysis section's own summary table (the same rows, built by the same code
as report.md's, :mod:`shoestring.report.kinds.analysis`), rendered as Markdown; the host line
is the short form of the section's host paragraph. Every number comes from analysis.json.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Table, fmt, fmt_size, md_table
from shoestring.report.kinds.analysis import SUMMARY_HEADERS, summary_row

__all__ = ["host_line", "summary_table"]


def host_line(host: dict[str, Any]) -> str:
    """One line: the caches the fit column is judged against and the peaks MFU uses."""
    c = host.get("caches") or {}
    mm = host.get("matmul_gflops") or {}
    line = (
        f"caches ({c.get('source', '?')}): L1d {fmt_size(c.get('L1d'))}, "
        f"L2 {fmt_size(c.get('L2'))} per core, L3 {fmt_size(c.get('L3'))}"
    )
    if mm:
        line += (
            f"; matmul peak fp32 {fmt(mm.get('fp32'), ',.0f')} / bf16 "
            f"{fmt(mm.get('bf16'), ',.0f')} GFLOP/s at {host.get('threads')} threads"
        )
    return line


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The one table ``analyze`` prints: a row per config with the headline numbers."""
    return "\n".join(md_table(Table(SUMMARY_HEADERS, [summary_row(r) for r in rows])))
