"""Render an analysis as Markdown tables (analysis.md) and the one summary table printed.

Every number comes from analysis.json; nothing is recomputed here except ratios and units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["host_line", "render_markdown", "summary_table"]


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.1f}"


def _size(b: float | None) -> str:
    if b is None:
        return "-"
    if b >= 2**20:
        return f"{b / 2**20:.1f} MiB"
    return f"{b / 2**10:.0f} KiB"


def _m(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _g(n: float | None, digits: int = 4) -> str:
    return "-" if n is None else f"{n / 1e9:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


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
            f"; matmul peak fp32 {_num(mm.get('fp32'))} / bf16 {_num(mm.get('bf16'))} GFLOP/s "
            f"at {host.get('threads')} threads"
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
                _m(r["params"]["total"]),
                _m(r["params"]["non_embedding"]),
                f"{_g(f['train']['full'])} / {_g(f['counted']['train'])} "
                f"({f['train_rel_error']:+.2%})",
                _mb(mem["total_bytes"]),
                _mb(mem.get("peak_rss_bytes")),
                " / ".join(
                    r["cache_fit"][k]["fits"]
                    for k in ("activation_block", "mlp_block", "layer_weights")
                ),
                _num(r.get("tokens_per_second")),
                _num(r.get("achieved_gflops"), ",.1f"),
                _pct(r.get("mfu")),
                _num(r.get("projected_tokens_per_second")),
                _num(r.get("measured_over_projected"), ".2f"),
            ]
        )
    return _table(header, body)


def render_markdown(analysis: dict[str, Any], plot: Path | None) -> str:
    rows = analysis["configs"]
    host = analysis.get("host") or {}
    caches = host.get("caches") or {}
    parts = ["# Analysis", ""]
    cpu = host.get("cpu") or {}
    if cpu:
        mm = host.get("matmul_gflops") or {}
        parts += [
            f"Host: {cpu.get('model')} ({cpu.get('physical_cores')} cores), "
            f"{host.get('threads')} threads, ISA {', '.join(cpu.get('isa') or []) or '-'}; "
            f"measured matmul peak fp32 {_num(mm.get('fp32'), ',.0f')} / "
            f"bf16 {_num(mm.get('bf16'), ',.0f')} GFLOP/s; memory copy "
            f"{_num(host.get('memory_bandwidth_gbs'), ',.1f')} GB/s; torch {host.get('torch')}.",
            "",
        ]
    if caches:
        parts += [
            f"Caches ({caches.get('source')}): L1d {_size(caches.get('L1d'))}, "
            f"L2 {_size(caches.get('L2'))} (per core), L3 {_size(caches.get('L3'))} (shared).",
            "",
        ]
    parts += ["## Summary", "", summary_table(rows), ""]

    ratios = analysis.get("speed_ratios") or []
    if ratios:
        parts += [
            "## Speed against FLOPs",
            "",
            f"Relative to {ratios[0]['reference']}. If FLOPs explained speed, the measured speed "
            "ratio would equal the predicted one (beyond FLOPs = 1.00).",
            "",
            _table(
                [
                    "config",
                    "FLOPs/token ratio",
                    "predicted speed ratio",
                    "measured speed ratio",
                    "beyond FLOPs",
                ],
                [
                    [
                        x["label"],
                        f"{x['flops_ratio']:.2f}",
                        f"{x['predicted_speed_ratio']:.2f}",
                        f"{x['measured_speed_ratio']:.2f}",
                        f"{x['beyond_flops']:.2f}",
                    ]
                    for x in ratios
                ],
            ),
            "",
        ]

    parts += [
        "## Parameters",
        "",
        "Embedding = token table + learned positions; the LM head is 0 when tied (counted once, "
        "as the embedding). Non-embedding = total - embedding - head. Formula checked against "
        "the built model.",
        "",
        _table(
            [
                "config",
                "total",
                "embedding",
                "lm_head",
                "non-embedding",
                "per layer: attention",
                "per layer: MLP",
                "per layer: norms",
                "formula = model",
            ],
            [
                [
                    r["label"],
                    f"{r['params']['total']:,}",
                    f"{r['params']['embedding']:,}",
                    f"{r['params']['lm_head']:,}",
                    f"{r['params']['non_embedding']:,}",
                    f"{r['params']['per_layer']['attention']:,}",
                    f"{r['params']['per_layer']['mlp']:,}",
                    f"{r['params']['per_layer']['other']:,}",
                    "yes" if r["params"]["match"] else "NO",
                ]
                for r in rows
            ],
        ),
        "",
        "## FLOPs per token (GFLOP)",
        "",
        "Multiply-add = 2 FLOPs; matmuls only; the LM head included; training = 3 x forward. "
        "6N = Kaplan (non-embedding N, no head, no attention). Causal counts the (T+1)/2 keys a "
        "query sees on average, full every key; FlopCounterMode (MATH attention backend) counts "
        "full.",
        "",
        _table(
            [
                "config",
                "seq",
                "6N",
                "matmul (6 x weights)",
                "+ attention causal",
                "+ attention full",
                "counted (train)",
                "formula vs counted",
                "forward counted",
            ],
            [
                [
                    r["label"],
                    str(r["flops"]["seq_len"]),
                    _g(r["flops"]["six_n"]),
                    _g(r["flops"]["train"]["matmul"]),
                    _g(r["flops"]["train"]["causal"]),
                    _g(r["flops"]["train"]["full"]),
                    _g(r["flops"]["counted"]["train"]),
                    f"{r['flops']['train_rel_error']:+.3%}",
                    _g(r["flops"]["counted"]["forward"]),
                ]
                for r in rows
            ],
        ),
        "",
        "## Memory (MiB)",
        "",
        "fp32 weights, gradients and AdamW moments (4 + 4 + 8 bytes per parameter, also under "
        "bf16 autocast); activations = what autograd keeps for one micro-batch (estimated from "
        "the layout, and measured as the saved tensors of a real step); peak RSS = the process's "
        "resident peak during the measured steps, and its rise over the RSS before the model "
        "was built.",
        "",
        _table(
            [
                "config",
                "weights",
                "grads",
                "AdamW",
                "activations est",
                "activations saved",
                "total est",
                "peak RSS",
                "peak RSS rise",
                "activation bytes/token",
            ],
            [
                [
                    r["label"],
                    _mb(r["memory"]["weights_bytes"]),
                    _mb(r["memory"]["gradients_bytes"]),
                    _mb(r["memory"]["optimizer_bytes"]),
                    _mb(r["memory"]["activations_bytes"]),
                    _mb(r["memory"].get("activations_saved_bytes")),
                    _mb(r["memory"]["total_bytes"]),
                    _mb(r["memory"].get("peak_rss_bytes")),
                    _mb(r["memory"].get("peak_rss_over_baseline_bytes")),
                    _num(r["memory"]["activation_bytes_per_token"]),
                ]
                for r in rows
            ],
        ),
        "",
        "## Cache fit",
        "",
        "The working sets the CPU-cache study reasoned about, and the smallest cache level of "
        "this host that holds each (fp32 unless marked).",
        "",
        _table(
            [
                "config",
                "d_model x seq x 4",
                "d_ff x seq x 4",
                "layer weights",
                "layer weights bf16",
                "micro-batch activations",
            ],
            [
                [r["label"]]
                + [
                    f"{_size(r['cache_fit'][k]['bytes'])} ({r['cache_fit'][k]['fits']})"
                    for k in (
                        "activation_block",
                        "mlp_block",
                        "layer_weights",
                        "layer_weights_bf16",
                        "micro_batch_activations",
                    )
                ]
                for r in rows
            ],
        ),
        "",
    ]
    measured = [r for r in rows if r.get("measured")]
    if measured:
        parts += [
            "## Measured training throughput",
            "",
            "Median optimizer step after warm-up, random token ids, no evaluation; GFLOP/s = "
            "tokens/s x counted training FLOPs/token; MFU against the measured matmul peak for "
            "the dtype that ran.",
            "",
            _table(
                [
                    "config",
                    "device / dtype / threads",
                    "tokens/step",
                    "step s (median, n, spread)",
                    "tokens/s",
                    "GFLOP/s",
                    "peak GFLOP/s",
                    "MFU",
                    "time to train",
                ],
                [
                    [
                        r["label"],
                        f"{r['measured']['runtime']['device']} / "
                        f"{r['measured']['runtime']['dtype']} / "
                        f"{r['measured']['runtime']['threads']}",
                        f"{r['measured']['tokens_per_step']:,}",
                        f"{r['measured']['step_seconds_median']:.3f} "
                        f"({r['measured']['timed_steps']}, "
                        f"{_pct(r['measured']['step_seconds_spread'])})"
                        + (" busy host" if r["measured"].get("noisy") else ""),
                        _num(r["tokens_per_second"]),
                        _num(r["achieved_gflops"], ",.1f"),
                        _num(r.get("peak_gflops"), ",.0f"),
                        _pct(r.get("mfu")),
                        _duration((r.get("time_to_train") or {}).get("seconds")),
                    ]
                    for r in measured
                ],
            ),
            "",
        ]
        ttt = next((r["time_to_train"] for r in measured if r.get("time_to_train")), None)
        if ttt:
            parts += [f"Time to train: {ttt['tokens']:,.0f} tokens ({ttt['source']}).", ""]
    if any(r.get("sweep") for r in rows):
        from shoestring.analyze.analysis import best_per_target

        parts += ["## Sweep: best setting", ""]
        for base, b in best_per_target(rows).items():
            parts.append(f"- {base}: {b['sweep']} at {_num(b['tokens_per_second'])} tokens/s")
        parts.append("")
    if plot is not None:
        parts += [f"![tokens/s against FLOPs/token]({plot.name})", ""]
    return "\n".join(parts)
