"""Analyses (``shoestring analyze``): the host, and each configuration's cost and speed.

Why: this is ``analyze``'s own report as well as a part of every comparison, so it shows the
host, the summary table and - in a report on one analysis only, they are long - one detail
section per question the analysis answers. Every number comes from analysis.json (read with
``dig``: a missing part prints dashes); nothing is recomputed except ratios and units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoestring.report.blocks import (
    Bullets,
    Para,
    Section,
    Table,
    fmt,
    fmt_duration,
    fmt_int,
    fmt_mib,
    fmt_millions,
    fmt_size,
)
from shoestring.report.parts import Kind, SectionContext, status_cell
from shoestring.report.rules import SpeedItem
from shoestring.report.run import RunInfo, dig

__all__ = ["KIND", "SUMMARY_HEADERS", "summary_row"]

SUMMARY_HEADERS = ["config", "params", "non-emb", "train GFLOP/tok (formula / counted)"]
SUMMARY_HEADERS += ["mem est MB", "peak RSS MB", "fits: d x seq / d_ff x seq / layer W"]
SUMMARY_HEADERS += ["tokens/s", "GFLOP/s", "MFU", "projected", "meas/proj"]
MEMORY_KEYS = (
    *(("weights", "weights_bytes"), ("grads", "gradients_bytes"), ("AdamW", "optimizer_bytes")),
    *(("activations est", "activations_bytes"), ("activations saved", "activations_saved_bytes")),
    *(("total est", "total_bytes"), ("peak RSS", "peak_rss_bytes")),
    ("peak RSS rise", "peak_rss_over_baseline_bytes"),
)
CACHE_KEYS = (
    *(("d_model x seq x 4", "activation_block"), ("d_ff x seq x 4", "mlp_block")),
    *(("layer weights", "layer_weights"), ("layer weights bf16", "layer_weights_bf16")),
    ("micro-batch activations", "micro_batch_activations"),
)


def gflop(n: Any, digits: int = 4) -> str:
    """FLOPs as GFLOP; None prints as a dash."""
    return "-" if n is None else f"{float(n) / 1e9:.{digits}f}"


def _label(c: dict[str, Any]) -> str:
    return str(c.get("label") or c.get("name") or "?")


def _table(headers: list[str], rows: list[list[str]], caption: str = "") -> Table:
    """A config-by-numbers table: the config name left, every number right-aligned."""
    return Table(headers, rows, "l" + "r" * (len(headers) - 1), caption)


def _mfu(c: dict[str, Any]) -> str:
    return fmt(c.get("mfu"), ".1%") + (" (bad peak)" if c.get("mfu_flag") else "")


def _host_text(label: str, status: str, host: dict[str, Any]) -> str:
    """The host the analysis measured: CPU, threads, ISA, matmul peaks, bandwidth, caches."""
    cpu = host.get("cpu") if isinstance(host.get("cpu"), dict) else {"model": host.get("cpu")}
    mm, caches = host.get("matmul_gflops") or {}, host.get("caches") or {}
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


def summary_row(c: dict[str, Any]) -> list[str]:
    """One configuration's headline numbers (the table ``analyze`` prints)."""
    formula, counted = dig(c, "flops", "train", "full"), dig(c, "flops", "counted", "train")
    err = dig(c, "flops", "train_rel_error")
    flops = f"{gflop(formula)} / {gflop(counted)}" + (f" ({err:+.2%})" if err is not None else "")
    # which cache level holds the activation block, the MLP block and a layer's weights
    fits = [
        dig(c, "cache_fit", k, "fits") for k in ("activation_block", "mlp_block", "layer_weights")
    ]
    params = [fmt_millions(dig(c, "params", k)) for k in ("total", "non_embedding")]
    mem = [fmt_mib(dig(c, "memory", k)) for k in ("total_bytes", "peak_rss_bytes")]
    fits_text = " / ".join(str(f) for f in fits) if any(f is not None for f in fits) else "-"
    return [_label(c), *params, flops, *mem, fits_text, fmt(c.get("tokens_per_second"), ",.0f")] + [
        fmt(c.get("achieved_gflops"), ",.1f"),
        _mfu(c),
        fmt(c.get("projected_tokens_per_second"), ",.0f"),
        fmt(c.get("measured_over_projected"), ".2f"),
    ]


# ----------------------------------------------------------------------------- details


def _detail(note: str, headers: list[str], rows: list[list[str]]) -> list[Any]:
    """A detail section's blocks: what its columns mean, then the table (none without rows)."""
    return [Para(note), _table(headers, rows)] if rows else []


def _speed_ratios(data: dict[str, Any], _: list[dict[str, Any]]) -> list[Any]:
    if not (ratios := [x for x in data.get("speed_ratios") or [] if isinstance(x, dict)]):
        return []
    keys = ("flops_ratio", "predicted_speed_ratio", "measured_speed_ratio", "beyond_flops")
    rows = [[str(x.get("label"))] + [fmt(x.get(k), ".2f") for k in keys] for x in ratios]
    head = ["config", "FLOPs/token ratio", "predicted speed ratio", "measured speed ratio"]
    return _detail(
        f"Relative to {ratios[0].get('reference')}. If FLOPs explained speed, "
        "the measured speed ratio would equal the predicted one (beyond FLOPs = 1.00).",
        [*head, "beyond FLOPs"],
        rows,
    )


def _parameters(_: dict[str, Any], configs: list[dict[str, Any]]) -> list[Any]:
    keys = [("total",), ("embedding",), ("lm_head",), ("non_embedding",)]
    keys += [("per_layer", k) for k in ("attention", "mlp", "other")]
    rows = [
        [_label(c), *(fmt_int(dig(c, "params", *k)) for k in keys)]
        + ["-" if (m := dig(c, "params", "match")) is None else "yes" if m else "NO"]
        for c in configs
    ]
    head = ["config", "total", "embedding", "lm_head", "non-embedding", "per layer: attention"]
    return _detail(
        "Embedding = token table + learned positions; the LM head is 0 when tied (counted once, "
        "as the embedding). Non-embedding = total - embedding - head. Formula checked against "
        "the built model.",
        [*head, "per layer: MLP", "per layer: norms", "formula = model"],
        rows,
    )


def _flops(_: dict[str, Any], configs: list[dict[str, Any]]) -> list[Any]:
    rows = []
    for c in configs:
        err = dig(c, "flops", "train_rel_error")
        rows.append(
            [_label(c), fmt_int(dig(c, "flops", "seq_len")), gflop(dig(c, "flops", "six_n"))]
            + [gflop(dig(c, "flops", "train", k)) for k in ("matmul", "causal", "full")]
            + [gflop(dig(c, "flops", "counted", "train"))]
            + ["-" if err is None else f"{err:+.3%}", gflop(dig(c, "flops", "counted", "forward"))]
        )
    head = ["config", "seq", "6N", "matmul (6 x weights)", "+ attention causal"]
    return _detail(
        "Multiply-add = 2 FLOPs; matmuls only; the LM head included; training = 3 x forward. "
        "6N = Kaplan (non-embedding N, no head, no attention). Causal counts the (T+1)/2 keys a "
        "query sees on average, full every key; FlopCounterMode (MATH attention backend) counts "
        "full.",
        [*head, "+ attention full", "counted (train)", "formula vs counted", "forward counted"],
        rows,
    )


def _memory(_: dict[str, Any], configs: list[dict[str, Any]]) -> list[Any]:
    rows = [
        [_label(c), *(fmt_mib(dig(c, "memory", key)) for _, key in MEMORY_KEYS)]
        + [fmt(dig(c, "memory", "activation_bytes_per_token"), ",.0f")]
        for c in configs
    ]
    return _detail(
        "fp32 weights, gradients and AdamW moments (4 + 4 + 8 bytes per parameter, also under "
        "bf16 autocast); activations = what autograd keeps for one micro-batch (estimated from "
        "the layout, and measured as the saved tensors of a real step); peak RSS = the "
        "process's resident peak during the measured steps, and its rise over the RSS before "
        "the model was built.",
        ["config", *(name for name, _ in MEMORY_KEYS), "activation bytes/token"],
        rows,
    )


def _cache_fit(_: dict[str, Any], configs: list[dict[str, Any]]) -> list[Any]:
    fit = lambda c, k: (
        f"{fmt_size(dig(c, 'cache_fit', k, 'bytes'))} ({dig(c, 'cache_fit', k, 'fits')})"
    )
    return _detail(
        "The working sets the CPU-cache study reasoned about, and the smallest cache level of "
        "this host that holds each (fp32 unless marked).",
        ["config", *(name for name, _ in CACHE_KEYS)],
        [[_label(c), *(fit(c, key) for _, key in CACHE_KEYS)] for c in configs],
    )


def _measured(_: dict[str, Any], configs: list[dict[str, Any]]) -> list[Any]:
    measured = [c for c in configs if isinstance(c.get("measured"), dict)]
    rows = []
    for c in measured:
        m, rt = c["measured"], c["measured"].get("runtime") or {}
        step = (
            f"{fmt(m.get('step_seconds_median'), '.3f')} ({m.get('timed_steps')}, "
            f"{fmt(m.get('step_seconds_spread'), '.1%')})"
            + (" busy host" if m.get("noisy") else "")
        )
        rows.append(
            [_label(c), f"{rt.get('device')} / {rt.get('dtype')} / {rt.get('threads')}"]
            + [fmt_int(m.get("tokens_per_step")), step, fmt(c.get("tokens_per_second"), ",.0f")]
            + [fmt(c.get("achieved_gflops"), ",.1f"), fmt(c.get("peak_gflops"), ",.0f"), _mfu(c)]
            + [fmt_duration(dig(c, "time_to_train", "seconds"))]
        )
    head = ["config", "device / dtype / threads", "tokens/step", "step s (median, n, spread)"]
    blocks = _detail(
        "Median optimizer step after warm-up, random token ids, no evaluation; GFLOP/s = "
        "tokens/s x counted training FLOPs/token; MFU against the measured matmul peak for the "
        "dtype that ran.",
        [*head, "tokens/s", "GFLOP/s", "peak GFLOP/s", "MFU", "time to train"],
        rows,
    )
    ttt = next((c["time_to_train"] for c in measured if c.get("time_to_train")), None)
    if isinstance(ttt, dict) and ttt.get("tokens") is not None:
        blocks.append(Para(f"Time to train: {ttt['tokens']:,.0f} tokens ({ttt.get('source')})."))
    return blocks


Detail = Callable[[dict[str, Any], list[dict[str, Any]]], list[Any]]
#: The detail sections analysis.md showed below its summary: (title, anchor, the part of a
#: config it needs, blocks), each left out where no config (or the analysis) recorded it.
DETAILS: tuple[tuple[str, str, str | None, Detail], ...] = (
    ("Speed against FLOPs", "speed", None, _speed_ratios),
    ("Parameters", "params", "params", _parameters),
    ("FLOPs per token (GFLOP)", "flops", "flops", _flops),
    ("Memory (MiB)", "memory", "memory", _memory),
    ("Cache fit", "cache", "cache_fit", _cache_fit),
    ("Measured training throughput", "measured", None, _measured),
)


def detail_sections(
    data: dict[str, Any], configs: list[dict[str, Any]], best: dict[str, Any] | None
) -> list[Section]:
    """Every detail section for the parts recorded; ``best`` is the summary's fastest setting
    per swept target (target -> label, tokens/s, sweep)."""
    out = [
        Section(title, blocks, f"analysis-{anchor}")
        for title, anchor, part, make in DETAILS
        if (part is None or any(isinstance(c.get(part), dict) for c in configs))
        and (blocks := make(data, configs))
    ]
    if best and any(c.get("sweep") for c in configs):
        items = [
            f"{target}: {top.get('sweep')} at {fmt(top.get('tokens_per_second'), ',.0f')} tokens/s"
            for target, top in best.items()
            if isinstance(top, dict)
        ]
        out.append(Section("Sweep: best setting", [Bullets(items)], "analysis-sweep"))
    return out


def _configs(r: RunInfo) -> list[dict[str, Any]]:
    return [c for c in (r.result or {}).get("configs") or [] if isinstance(c, dict)]


def analysis_sections(an: list[RunInfo], ctx: SectionContext) -> list[Section]:
    blocks: list[Any] = []
    details: list[Section] = []
    for r in an:
        data = r.result or {}
        host = data.get("host") if isinstance(data.get("host"), dict) else {}
        blocks.append(Para(_host_text(r.label, status_cell(r), host)))
        if configs := _configs(r):
            rows = [summary_row(c) for c in configs]
            blocks.append(_table(SUMMARY_HEADERS, rows, "Summary:"))
            # the detail sections are long: only in a report on one analysis (its own report.md)
            if len(an) == 1:
                details = detail_sections(data, configs, r.summary.get("best"))
        if img := ctx.own_image(r, r.summary.get("plot"), "tokens/s against FLOPs/token"):
            blocks.append(img)
    return [Section("Analyses", blocks, "analysis"), *details]


def _speed(runs: list[RunInfo]) -> list[tuple[list[SpeedItem], str]]:
    def item(c: dict[str, Any]) -> SpeedItem:
        name = f"{c.get('label')} {c.get('preset') or ''} {c.get('variant') or ''}"
        return SpeedItem(str(c.get("label")), name, c.get("tokens_per_second"), "tokens/s", None)

    return [
        ([item(c) for c in _configs(r)], f"configurations measured by analysis `{r.label}`")
        for r in runs
    ]


KIND = Kind(
    name="analysis",
    writer="`shoestring analyze` (summary.json kind 'analysis' or analysis.json)",
    sections=analysis_sections,
    summary_kind="analysis",
    result_file="analysis.json",
    speed=_speed,
)
