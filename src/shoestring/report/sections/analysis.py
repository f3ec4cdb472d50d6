"""The analysis section: an ``analyze`` run's host, and its configurations' cost and speed.

Why: it is ``analyze``'s own report as well as a part of every comparison, so it shows what
analysis.md showed: the host (CPU, measured matmul peaks, memory bandwidth, caches), the summary
table, then the detail sections of :mod:`shoestring.report.sections.analysis_tables`. Every number
comes from analysis.json; nothing is recomputed here except ratios and units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report.blocks import Para, Section, Table, fmt, fmt_mib, fmt_millions, fmt_size
from shoestring.report.kinds import RunInfo
from shoestring.report.sections.analysis_tables import detail_sections, gflop
from shoestring.report.sections.common import SectionContext, dig, status_cell

__all__ = ["SUMMARY_HEADERS", "analysis_section", "summary_row"]


def _host_text(label: str, status: str, host: dict[str, Any]) -> str:
    """The host the analysis measured: CPU, threads, ISA, matmul peaks, bandwidth, caches."""
    cpu = host.get("cpu") if isinstance(host.get("cpu"), dict) else {"model": host.get("cpu")}
    mm = host.get("matmul_gflops") or {}
    caches = host.get("caches") or {}
    text = (
        f"**{label}** (status {status}): host {cpu.get('model') or '-'} "
        f"({cpu.get('physical_cores', '-')} cores), {host.get('threads', '-')} threads, ISA "
        f"{', '.join(cpu.get('isa') or []) or '-'}; measured matmul peak fp32 "
        f"{fmt(mm.get('fp32'), ',.0f')} / bf16 {fmt(mm.get('bf16'), ',.0f')} GFLOP/s; memory "
        f"copy {fmt(host.get('memory_bandwidth_gbs'), ',.1f')} GB/s; "
        f"torch {host.get('torch', '-')}."
    )
    if caches:
        text += (
            f" Caches ({caches.get('source', '?')}): L1d {fmt_size(caches.get('L1d'))}, "
            f"L2 {fmt_size(caches.get('L2'))} (per core), L3 {fmt_size(caches.get('L3'))} (shared)."
        )
    return text


def _fits(c: dict[str, Any]) -> str:
    """Which cache level holds the activation block, the MLP block and a layer's weights."""
    keys = ("activation_block", "mlp_block", "layer_weights")
    fits = [dig(c, "cache_fit", k, "fits") for k in keys]
    return " / ".join(str(f) for f in fits) if any(f is not None for f in fits) else "-"


def summary_row(c: dict[str, Any]) -> list[str]:
    """One configuration's headline numbers (the table ``analyze`` prints)."""
    formula, counted = dig(c, "flops", "train", "full"), dig(c, "flops", "counted", "train")
    err = dig(c, "flops", "train_rel_error")
    flops = f"{gflop(formula)} / {gflop(counted)}" + (f" ({err:+.2%})" if err is not None else "")
    return [
        str(c.get("label") or c.get("name") or "?"),
        fmt_millions(dig(c, "params", "total")),
        fmt_millions(dig(c, "params", "non_embedding")),
        flops,
        fmt_mib(dig(c, "memory", "total_bytes")),
        fmt_mib(dig(c, "memory", "peak_rss_bytes")),
        _fits(c),
        fmt(c.get("tokens_per_second"), ",.0f"),
        fmt(c.get("achieved_gflops"), ",.1f"),
        fmt(c.get("mfu"), ".1%") + (" (bad peak)" if c.get("mfu_flag") else ""),
        fmt(c.get("projected_tokens_per_second"), ",.0f"),
        fmt(c.get("measured_over_projected"), ".2f"),
    ]


SUMMARY_HEADERS = [
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


def analysis_section(runs: Sequence[RunInfo], ctx: SectionContext) -> list[Section] | None:
    an = [r for r in runs if r.kind == "analysis"]
    if not an:
        return None
    blocks: list[Any] = []
    details: list[Section] = []
    for r in an:
        data = r.extra.get("analysis") or {}
        host = data.get("host") if isinstance(data.get("host"), dict) else {}
        blocks.append(Para(_host_text(r.label, status_cell(r), host)))
        configs = [c for c in data.get("configs") or [] if isinstance(c, dict)]
        if configs:
            blocks.append(
                Table(
                    SUMMARY_HEADERS,
                    [summary_row(c) for c in configs],
                    ["l"] + ["r"] * (len(SUMMARY_HEADERS) - 1),
                    caption="Summary:",
                )
            )
            # the detail sections are long: only in a report on one analysis (its own report.md)
            if len(an) == 1:
                details = detail_sections(data, configs, r.summary.get("best"))
        img = ctx.own_image(r, r.summary.get("plot"), "tokens/s against FLOPs/token")
        if img:
            blocks.append(img)
    return [Section("Analyses", blocks, "analysis"), *details]
