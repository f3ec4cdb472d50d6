"""The detail sections of an analysis: speed against FLOPs, parameters, FLOPs, memory, caches,
measured throughput and a sweep's best setting.

Why apart from :mod:`shoestring.report.sections.analysis`: these are what analysis.md showed below
its summary, one section per question the analysis answers; they are long, so they are added
only to a report on one analysis, and each reads its numbers with ``dig`` so a config that
lacks a part (an older analysis.json) prints dashes instead of failing.
"""

from __future__ import annotations

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
    fmt_size,
)
from shoestring.report.sections.common import dig

__all__ = ["detail_sections", "gflop"]


def gflop(n: Any, digits: int = 4) -> str:
    """FLOPs as GFLOP; None prints as a dash."""
    return "-" if n is None else f"{float(n) / 1e9:.{digits}f}"


def _label(c: dict[str, Any]) -> str:
    return str(c.get("label") or c.get("name") or "?")


def _table(headers: list[str], rows: list[list[str]]) -> Table:
    return Table(headers, rows, ["l"] + ["r"] * (len(headers) - 1))


def _speed_ratios(ratios: list[dict[str, Any]]) -> list[Any]:
    rows = [
        [str(x.get("label"))]
        + [fmt(x.get(k), ".2f") for k in ("flops_ratio", "predicted_speed_ratio")]
        + [fmt(x.get(k), ".2f") for k in ("measured_speed_ratio", "beyond_flops")]
        for x in ratios
    ]
    head = ["config", "FLOPs/token ratio", "predicted speed ratio", "measured speed ratio"]
    return [
        Para(
            f"Relative to {ratios[0].get('reference')}. If FLOPs explained speed, the measured "
            "speed ratio would equal the predicted one (beyond FLOPs = 1.00)."
        ),
        _table(head + ["beyond FLOPs"], rows),
    ]


def _parameters(configs: list[dict[str, Any]]) -> list[Any]:
    rows = []
    for c in configs:
        match = dig(c, "params", "match")
        rows.append(
            [_label(c)]
            + [fmt_int(dig(c, "params", k)) for k in ("total", "embedding", "lm_head")]
            + [fmt_int(dig(c, "params", "non_embedding"))]
            + [fmt_int(dig(c, "params", "per_layer", k)) for k in ("attention", "mlp", "other")]
            + ["-" if match is None else ("yes" if match else "NO")]
        )
    return [
        Para(
            "Embedding = token table + learned positions; the LM head is 0 when "
            "tied (counted once, as the embedding). Non-embedding = total - embedding - head. "
            "Formula checked against the built model."
        ),
        _table(
            ["config", "total", "embedding", "lm_head", "non-embedding", "per layer: attention"]
            + ["per layer: MLP", "per layer: norms", "formula = model"],
            rows,
        ),
    ]


def _flops(configs: list[dict[str, Any]]) -> list[Any]:
    rows = []
    for c in configs:
        err = dig(c, "flops", "train_rel_error")
        rows.append(
            [_label(c), fmt_int(dig(c, "flops", "seq_len")), gflop(dig(c, "flops", "six_n"))]
            + [gflop(dig(c, "flops", "train", k)) for k in ("matmul", "causal", "full")]
            + [gflop(dig(c, "flops", "counted", "train"))]
            + ["-" if err is None else f"{err:+.3%}", gflop(dig(c, "flops", "counted", "forward"))]
        )
    return [
        Para(
            "Multiply-add = 2 FLOPs; matmuls only; the LM head "
            "included; training = 3 x forward. 6N = Kaplan (non-embedding N, no head, no "
            "attention). Causal counts the (T+1)/2 keys a query sees on average, full every key; "
            "FlopCounterMode (MATH attention backend) counts full."
        ),
        _table(
            [
                "config",
                "seq",
                "6N",
                "matmul (6 x weights)",
                "+ attention causal",
                "+ attention full",
            ]
            + ["counted (train)", "formula vs counted", "forward counted"],
            rows,
        ),
    ]


MEMORY_KEYS = (
    ("weights", "weights_bytes"),
    ("grads", "gradients_bytes"),
    ("AdamW", "optimizer_bytes"),
    ("activations est", "activations_bytes"),
    ("activations saved", "activations_saved_bytes"),
    ("total est", "total_bytes"),
    ("peak RSS", "peak_rss_bytes"),
    ("peak RSS rise", "peak_rss_over_baseline_bytes"),
)


def _memory(configs: list[dict[str, Any]]) -> list[Any]:
    rows = [
        [_label(c)]
        + [fmt_mib(dig(c, "memory", key)) for _, key in MEMORY_KEYS]
        + [fmt(dig(c, "memory", "activation_bytes_per_token"), ",.0f")]
        for c in configs
    ]
    return [
        Para(
            "fp32 weights, gradients and AdamW moments (4 + 4 + 8 bytes per "
            "parameter, also under bf16 autocast); activations = what autograd keeps for one "
            "micro-batch (estimated from the layout, and measured as the saved tensors of a real "
            "step); peak RSS = the process's resident peak during the measured steps, and its rise "
            "over the RSS before the model was built."
        ),
        _table(
            ["config"] + [name for name, _ in MEMORY_KEYS] + ["activation bytes/token"],
            rows,
        ),
    ]


CACHE_KEYS = (
    ("d_model x seq x 4", "activation_block"),
    ("d_ff x seq x 4", "mlp_block"),
    ("layer weights", "layer_weights"),
    ("layer weights bf16", "layer_weights_bf16"),
    ("micro-batch activations", "micro_batch_activations"),
)


def _cache_fit(configs: list[dict[str, Any]]) -> list[Any]:
    rows = [
        [_label(c)]
        + [
            f"{fmt_size(dig(c, 'cache_fit', key, 'bytes'))} ({dig(c, 'cache_fit', key, 'fits')})"
            for _, key in CACHE_KEYS
        ]
        for c in configs
    ]
    return [
        Para(
            "The working sets the CPU-cache study reasoned about, and the smallest "
            "cache level of this host that holds each (fp32 unless marked)."
        ),
        _table(
            ["config"] + [name for name, _ in CACHE_KEYS],
            rows,
        ),
    ]


def _measured(measured: list[dict[str, Any]]) -> list[Any]:
    rows = []
    for c in measured:
        m, rt = c["measured"], c["measured"].get("runtime") or {}
        step = (
            f"{fmt(m.get('step_seconds_median'), '.3f')} ({m.get('timed_steps')}, "
            f"{fmt(m.get('step_seconds_spread'), '.1%')})"
            + (" busy host" if m.get("noisy") else "")
        )
        rows.append(
            [
                _label(c),
                f"{rt.get('device')} / {rt.get('dtype')} / {rt.get('threads')}",
                fmt_int(m.get("tokens_per_step")),
                step,
                fmt(c.get("tokens_per_second"), ",.0f"),
                fmt(c.get("achieved_gflops"), ",.1f"),
                fmt(c.get("peak_gflops"), ",.0f"),
                fmt(c.get("mfu"), ".1%") + (" (bad peak)" if c.get("mfu_flag") else ""),
                fmt_duration(dig(c, "time_to_train", "seconds")),
            ]
        )
    blocks: list[Any] = [
        Para(
            "Median optimizer step after warm-up, random token ids, no evaluation; GFLOP/s = "
            "tokens/s x counted training FLOPs/token; MFU against the measured matmul peak for "
            "the dtype that ran."
        ),
        _table(
            ["config", "device / dtype / threads", "tokens/step", "step s (median, n, spread)"]
            + ["tokens/s", "GFLOP/s", "peak GFLOP/s", "MFU", "time to train"],
            rows,
        ),
    ]
    ttt = next((c["time_to_train"] for c in measured if c.get("time_to_train")), None)
    if isinstance(ttt, dict) and ttt.get("tokens") is not None:
        blocks.append(Para(f"Time to train: {ttt['tokens']:,.0f} tokens ({ttt.get('source')})."))
    return blocks


def _sweep_best(best: dict[str, Any]) -> list[str]:
    """The fastest measured setting of each swept target, as ``analyze`` recorded it in
    summary.json (``best``: target -> label, tokens/s, sweep)."""
    return [
        f"{target}: {top.get('sweep')} at {fmt(top.get('tokens_per_second'), ',.0f')} tokens/s"
        for target, top in best.items()
        if isinstance(top, dict)
    ]


def detail_sections(
    data: dict[str, Any], configs: list[dict[str, Any]], best: dict[str, Any] | None = None
) -> list[Section]:
    """Every detail section analysis.md showed below its summary, for the parts recorded;
    ``best`` is the summary's fastest setting per swept target."""
    out: list[Section] = []

    def add(title: str, anchor: str, blocks: list[Any]) -> None:
        out.append(Section(title, blocks, f"analysis-{anchor}"))

    ratios = [x for x in data.get("speed_ratios") or [] if isinstance(x, dict)]
    if ratios:
        add("Speed against FLOPs", "speed", _speed_ratios(ratios))
    if any(isinstance(c.get("params"), dict) for c in configs):
        add("Parameters", "params", _parameters(configs))
    if any(isinstance(c.get("flops"), dict) for c in configs):
        add("FLOPs per token (GFLOP)", "flops", _flops(configs))
    if any(isinstance(c.get("memory"), dict) for c in configs):
        add("Memory (MiB)", "memory", _memory(configs))
    if any(isinstance(c.get("cache_fit"), dict) for c in configs):
        add("Cache fit", "cache", _cache_fit(configs))
    measured = [c for c in configs if isinstance(c.get("measured"), dict)]
    if measured:
        add("Measured training throughput", "measured", _measured(measured))
    if best and any(c.get("sweep") for c in configs):
        add("Sweep: best setting", "sweep", [Bullets(_sweep_best(best))])
    return out
