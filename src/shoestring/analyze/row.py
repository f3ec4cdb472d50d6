"""One configuration's row of ``analysis.json``, and what is read across rows.

A row holds parameters (formula, checked against the built model), FLOPs per token (formulas,
checked against ``FlopCounterMode``), memory (estimated, then measured), cache fit against this
host's caches, and - when measured - training throughput with the achieved GFLOP/s and MFU
against the host's measured matmul peak. The ``attach_*`` helpers add what needs more than the
config (the host probe, a projection, a token count); :func:`speed_ratios` and
:func:`best_per_target` read the finished rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoestring.analyze import cost
from shoestring.analyze.config import AnalysisConfig
from shoestring.analyze.count import build_model, count_flops_per_token
from shoestring.analyze.measure import measure_training
from shoestring.analyze.probe import matmul_peak_for
from shoestring.analyze.spec import preset_projection
from shoestring.config import to_dict
from shoestring.models.param_count import num_parameters_breakdown
from shoestring.run_config import RunConfig
from shoestring.runtime import resolve_device, resolve_dtype

__all__ = [
    "FLOP_TOLERANCE",
    "analyze_config",
    "attach_host",
    "attach_projection",
    "attach_time_to_train",
    "best_per_target",
    "speed_ratios",
]

#: The analytic training FLOPs must match the counted ones this closely.
FLOP_TOLERANCE = 0.02
_TRAIN_FIELDS = ("seq_len", "batch_size", "grad_accum", "device", "dtype", "threads", "compile")
_PARAM_KEYS = ("total", "embedding", "lm_head", "non_embedding", "attention", "mlp", "norm")


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b else float("inf")


def analyze_config(
    label: str,
    cfg: RunConfig,
    caches: dict[str, Any],
    asked: AnalysisConfig,
    on_step: Callable[[str, int, float], None] | None = None,
) -> dict[str, Any]:
    """One row of analysis.json: static costs always, measured speed when ``asked.measure``."""
    m, t = cfg.model, cfg.train
    params = cost.param_counts(m)
    analytic = cost.flops_per_token(m, t.seq_len)
    # count on a throwaway fp32 CPU model, single sequence (FLOPs/token do not depend on batch)
    model = build_model(cfg, "cpu")
    built = num_parameters_breakdown(model)
    counted = count_flops_per_token(cfg, model)
    del model
    params_match = all(params[k] == built[k] for k in _PARAM_KEYS)
    train_err = _rel(analytic["train"]["full"], counted["train"])
    fwd_err = _rel(analytic["forward"]["full"], counted["forward"])
    flops = {
        **analytic,
        "counted": counted,
        "train_per_token": counted["train"],
        "train_rel_error": train_err,
        "forward_rel_error": fwd_err,
        "within_tolerance": abs(train_err) <= FLOP_TOLERANCE and abs(fwd_err) <= FLOP_TOLERANCE,
        "tolerance": FLOP_TOLERANCE,
        "note": "analytic 'full' (every query-key pair) is what FlopCounterMode counts under "
        "the MATH attention backend; multiply-add = 2 FLOPs; the LM head is included",
    }
    dtype_guess = t.dtype
    if dtype_guess == "auto":
        dtype_guess = resolve_dtype("auto", resolve_device(t.device))
    memory = cost.memory_estimate(cfg, dtype_guess)
    row: dict[str, Any] = {
        "label": label,
        "preset": cfg.preset or None,
        "variant": cfg.variant or None,
        "model": to_dict(m),
        "train": {k: getattr(t, k) for k in _TRAIN_FIELDS},
        "params": {
            **params,
            "built_model": {k: built[k] for k in _PARAM_KEYS},
            "match": params_match,
        },
        "flops": flops,
        "memory": memory,
        "cache_fit": cost.cache_fit(cfg, caches),
        "measured": None,
        "tokens_per_second": None,
        "achieved_gflops": None,
        "peak_gflops": None,
        "mfu": None,
    }
    if asked.measure:
        meas = measure_training(cfg, asked.settings, on_step=on_step)
        row["measured"] = meas
        row["tokens_per_second"] = meas["tokens_per_second"]
        row["achieved_gflops"] = meas["tokens_per_second"] * counted["train"] / 1e9
        memory["activations_saved_bytes"] = meas["saved_activation_bytes"]
        memory["peak_rss_bytes"] = meas["peak_rss_bytes"]
        memory["peak_rss_over_baseline_bytes"] = meas["peak_rss_over_baseline_bytes"]
        memory["cuda_peak_allocated_bytes"] = meas["cuda_peak_allocated_bytes"]
        if meas["runtime"]["dtype"] != dtype_guess:  # re-estimate for the dtype that ran
            memory.update(
                cost.memory_estimate(
                    cfg, meas["runtime"]["dtype"], str(meas["runtime"].get("device", "cpu"))
                )
            )
    return row


def attach_host(row: dict[str, Any], probe: dict[str, Any] | None) -> None:
    """The matmul peak of the device and dtype that ran, and the MFU against it."""
    meas = row.get("measured")
    if not meas:
        return
    rt = meas["runtime"]
    peak = matmul_peak_for(probe, rt["device"], rt["dtype"])
    row["peak_gflops"] = peak
    row["probe_key"] = probe.get("key") if probe else None
    if peak and row["achieved_gflops"]:
        row["mfu"] = row["achieved_gflops"] / peak
        if row["mfu"] > 1.0:
            # no run beats the peak: the peak is wrong (measured on a busy host, or stale)
            row["mfu_flag"] = (
                f"MFU {row['mfu']:.1%} is above 100%: the matmul peak "
                f"({peak:,.0f} GFLOP/s) is too low (measured on a busy host?); "
                "run `shoestring analyze --probe` on an idle host"
            )
    if probe and probe.get("under_load"):
        row["peak_flag"] = (
            f"the matmul peak was measured under load (other processes used "
            f"{probe.get('host_cpu_percent_before')}% / {probe.get('host_cpu_percent_after')}% "
            "of the CPU before / after) and was not cached; MFU is an upper bound"
        )


def attach_projection(row: dict[str, Any], asked: AnalysisConfig) -> None:
    """A projected tokens/s (``--projected``, else the preset's notes) against the measured."""
    proj = asked.projected.get(row["label"], asked.projected.get(row.get("base_label", "")))
    source = "--projected"
    if proj is None and row.get("preset"):
        base = row["preset"] + (f"+{row['variant']}" if row.get("variant") else "")
        proj = asked.projected.get(base)
        if proj is None:
            proj = preset_projection(row["preset"])
            source = "preset notes"
    row["projected_tokens_per_second"] = proj
    row["projection_source"] = source if proj is not None else None
    tps = row.get("tokens_per_second")
    row["measured_over_projected"] = tps / proj if (tps and proj) else None


def attach_time_to_train(row: dict[str, Any], tokens: float | None, source: str | None) -> None:
    """Seconds to train on ``tokens`` at the measured speed (None when either is missing)."""
    tps = row.get("tokens_per_second")
    if tokens and tps:
        row["time_to_train"] = {"tokens": tokens, "seconds": tokens / tps, "source": source}
    else:
        row["time_to_train"] = None


def speed_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured row against the first: FLOP ratio, predicted and measured speed ratio.

    If speed were explained by FLOPs alone (a constant GFLOP/s), tokens/s would scale as the
    inverse FLOP ratio; ``beyond_flops`` = measured speed ratio / that prediction (1 = FLOPs
    explain it all, > 1 = faster than FLOPs predict).
    """
    measured = [r for r in rows if r.get("tokens_per_second")]
    if not measured:
        return []
    ref = measured[0]
    out = []
    for r in measured:
        flop_ratio = r["flops"]["train_per_token"] / ref["flops"]["train_per_token"]
        speed_ratio = r["tokens_per_second"] / ref["tokens_per_second"]
        out.append(
            {
                "label": r["label"],
                "reference": ref["label"],
                "flops_ratio": flop_ratio,
                "predicted_speed_ratio": 1 / flop_ratio,
                "measured_speed_ratio": speed_ratio,
                "beyond_flops": speed_ratio * flop_ratio,
            }
        )
    return out


def best_per_target(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest measured row of each target (the answer of a sweep over its grid)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        tps = r.get("tokens_per_second")
        base = r.get("base_label", r["label"])
        if tps and (base not in best or tps > best[base]["tokens_per_second"]):
            best[base] = {"label": r["label"], "tokens_per_second": tps, "sweep": r.get("sweep")}
    return best
