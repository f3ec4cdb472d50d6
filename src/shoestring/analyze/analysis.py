"""One analysis: configs in, an ``analysis`` run directory out.

For every configuration: parameters (formula, checked against the built model), FLOPs per token
(formulas, checked against ``FlopCounterMode``), memory (estimated, then measured), cache fit
against this host's caches, and - unless told not to - measured training throughput with the
achieved GFLOP/s and MFU against the host's measured matmul peak. Writes ``analysis.json``
(``{"host": probe, "configs": [rows]}``), ``analysis.md``, ``throughput_vs_flops.png`` and the
usual ``config.json``/``summary.json``/``metrics.jsonl``/``log.txt``.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoestring.analyze import cost
from shoestring.analyze.count import build_model, count_flops_per_token
from shoestring.analyze.measure import MeasureSettings, measure_training
from shoestring.analyze.probe import load_probe, matmul_peak_for
from shoestring.config import (
    ConfigError,
    RunConfig,
    apply_dict,
    apply_override,
    build_run_config,
    list_presets,
    parse_override,
    read_config_file,
    to_dict,
)
from shoestring.errors import UserError
from shoestring.runs.rundir import RunDir, atomic_write_json, atomic_write_text, unique_run_dir

__all__ = [
    "CACHE_STUDY_PRESETS",
    "FLOP_TOLERANCE",
    "AnalysisSpec",
    "analyze_config",
    "best_per_target",
    "expand_sweep",
    "parse_sweep",
    "resolve_targets",
    "run",
]

#: The four configurations of the CPU-cache study this project grew from (the default).
CACHE_STUDY_PRESETS = (
    "autoregressive_fast",
    "wiki_cache_optimized",
    "wiki_gpu_optimized",
    "wiki_performance_tuned",
)
#: The analytic training FLOPs must match the counted ones this closely.
FLOP_TOLERANCE = 0.02
MAX_SWEEP_FIELDS = 2
_TRAIN_FIELDS = ("seq_len", "batch_size", "grad_accum", "device", "dtype", "threads", "compile")


@dataclass
class AnalysisSpec:
    """Everything one ``analyze`` call was asked (written to config.json)."""

    targets: list[str] = field(default_factory=lambda: list(CACHE_STUDY_PRESETS))
    overrides: list[str] = field(default_factory=list)
    sweep: list[str] = field(default_factory=list)
    projected: dict[str, float] = field(default_factory=dict)
    tokens: float | None = None
    data: str | None = None
    epochs: float = 1.0
    measure: bool = True
    quick: bool = False
    settings: MeasureSettings = field(default_factory=MeasureSettings)


# ----------------------------------------------------------------------------- inputs


def _preset_projection(name: str) -> float | None:
    """A projected tokens/s a preset's ``notes`` may carry (``projected_tokens_per_second``)."""
    from importlib import resources

    path = resources.files("shoestring") / "presets" / f"{name}.json"
    try:
        notes = json.loads(path.read_text(encoding="utf-8")).get("notes")
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(notes, dict) and notes.get("projected_tokens_per_second") is not None:
        return float(notes["projected_tokens_per_second"])
    return None


def resolve_targets(targets: list[str], overrides: list[str]) -> list[tuple[str, str, RunConfig]]:
    """Each target -> (label, source, resolved config). A target is a preset name, a preset
    with an attention variant (``small+lora_small``), a JSON/YAML config file, or a run
    directory (its config.json). Overrides apply to every target."""
    out: list[tuple[str, str, RunConfig]] = []
    presets = list_presets()
    for target in targets:
        path = Path(target)
        try:
            if path.is_dir():
                if not (path / "config.json").is_file():
                    raise UserError(f"{path} has no config.json; give a run directory or a preset")
                base = read_config_file(path / "config.json")
                base = {k: base[k] for k in ("model", "train", "data") if k in base}
                cfg = build_run_config(base=base, overrides=overrides)
                label, source = path.name, f"run:{path}"
            elif path.is_file():
                cfg = build_run_config(config_file=str(path), overrides=overrides)
                label, source = path.stem, f"file:{path}"
            else:
                preset, _, variant = target.partition("+")
                if preset not in presets:
                    build_run_config(preset=preset)  # raises with the nearest name
                cfg = build_run_config(preset=preset, variant=variant or None, overrides=overrides)
                label, source = target, f"preset:{target}"
        except ConfigError as exc:
            raise UserError(f"{target}: {exc}") from None
        out.append((label, source, cfg))
    seen: dict[str, int] = {}
    unique = []
    for label, source, cfg in out:
        seen[label] = seen.get(label, 0) + 1
        unique.append((label if seen[label] == 1 else f"{label}#{seen[label]}", source, cfg))
    return unique


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.batch_size=8,16,32"]`` -> ``[("train.batch_size", ["8", "16", "32"])]``."""
    if len(items) > MAX_SWEEP_FIELDS:
        raise UserError(
            f"--sweep takes at most {MAX_SWEEP_FIELDS} fields (got {len(items)}); a grid of "
            "more fields multiplies the measuring time - sweep them in separate calls"
        )
    out = []
    for item in items:
        if "=" not in item:
            raise UserError(f"--sweep {item!r} must look like train.batch_size=8,16,32")
        key, values = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            key = f"train.{key}"  # batch_size=... is the common case
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise UserError(f"--sweep {item!r} lists no values; e.g. {key}=8,16,32")
        out.append((key, vals))
    return out


def expand_sweep(
    targets: list[tuple[str, str, RunConfig]], sweep: list[tuple[str, list[str]]]
) -> list[tuple[str, str, RunConfig, dict[str, Any], str]]:
    """The grid: every target x every combination of the swept values (validated configs).

    Returns (label, source, config, sweep point, base label) tuples.
    """
    if not sweep:
        return [(label, source, cfg, {}, label) for label, source, cfg in targets]
    out = []
    for label, source, cfg in targets:
        for combo in itertools.product(*(vals for _, vals in sweep)):
            c = apply_dict(RunConfig(), to_dict(cfg))
            point: dict[str, Any] = {}
            try:
                for (key, _), raw in zip(sweep, combo, strict=True):
                    k, v = parse_override(f"{key}={raw}")
                    apply_override(c, k, v)
                    point[key] = v
                c = c.resolved()
            except ConfigError as exc:
                raise UserError(f"--sweep: {exc}") from None
            tag = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
            out.append((f"{label} [{tag}]", source, c, point, label))
    return out


# ----------------------------------------------------------------------------- one config


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b else float("inf")


def analyze_config(
    label: str,
    cfg: RunConfig,
    caches: dict[str, Any],
    spec: AnalysisSpec,
    on_step: Any = None,
) -> dict[str, Any]:
    """One row of analysis.json: static costs always, measured speed when ``spec.measure``."""
    from shoestring.models.gpt import num_parameters_breakdown

    m, t = cfg.model, cfg.train
    params = cost.param_counts(m)
    analytic = cost.flops_per_token(m, t.seq_len)
    # count on a throwaway fp32 CPU model, single sequence (FLOPs/token do not depend on batch)
    model = build_model(cfg, "cpu")
    built = num_parameters_breakdown(model)
    counted = count_flops_per_token(cfg, model)
    del model
    keys = ("total", "embedding", "lm_head", "non_embedding", "attention", "mlp", "norm")
    params_match = all(params[k] == built[k] for k in keys)
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
        from shoestring.runtime import resolve_device, resolve_dtype

        dtype_guess = resolve_dtype("auto", resolve_device(t.device))
    memory = cost.memory_estimate(cfg, dtype_guess)
    row: dict[str, Any] = {
        "label": label,
        "preset": cfg.preset or None,
        "variant": cfg.variant or None,
        "model": to_dict(m),
        "train": {k: getattr(t, k) for k in _TRAIN_FIELDS},
        "params": {**params, "built_model": {k: built[k] for k in keys}, "match": params_match},
        "flops": flops,
        "memory": memory,
        "cache_fit": cost.cache_fit(cfg, caches),
        "measured": None,
        "tokens_per_second": None,
        "achieved_gflops": None,
        "peak_gflops": None,
        "mfu": None,
    }
    if spec.measure:
        meas = measure_training(cfg, spec.settings, on_step=on_step)
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


def _attach_host(row: dict[str, Any], probe: dict[str, Any] | None) -> None:
    meas = row.get("measured")
    if not meas:
        return
    rt = meas["runtime"]
    peak = matmul_peak_for(probe, rt["device"], rt["dtype"])
    row["peak_gflops"] = peak
    row["probe_key"] = probe.get("key") if probe else None
    if peak and row["achieved_gflops"]:
        row["mfu"] = row["achieved_gflops"] / peak


def _attach_projection(row: dict[str, Any], spec: AnalysisSpec) -> None:
    proj = spec.projected.get(row["label"], spec.projected.get(row.get("base_label", "")))
    source = "--projected"
    if proj is None and row.get("preset"):
        base = row["preset"] + (f"+{row['variant']}" if row.get("variant") else "")
        proj = spec.projected.get(base)
        if proj is None:
            proj = _preset_projection(row["preset"])
            source = "preset notes"
    row["projected_tokens_per_second"] = proj
    row["projection_source"] = source if proj is not None else None
    tps = row.get("tokens_per_second")
    row["measured_over_projected"] = tps / proj if (tps and proj) else None


def _training_tokens(spec: AnalysisSpec) -> tuple[float | None, str | None]:
    if spec.tokens:
        return float(spec.tokens), "--tokens"
    if spec.data:
        meta = Path(spec.data) / "meta.json"
        if not meta.is_file():
            raise UserError(
                f"--data {spec.data} has no meta.json; give a directory made by "
                "`shoestring prepare`, or pass --tokens N"
            )
        info = json.loads(meta.read_text(encoding="utf-8"))
        n = float(info["train_tokens"]) * spec.epochs
        return n, f"{spec.data} ({info['train_tokens']:,} train tokens x {spec.epochs:g} epochs)"
    return None, None


def _attach_time_to_train(row: dict[str, Any], tokens: float | None, source: str | None) -> None:
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


# ----------------------------------------------------------------------------- the run

#: Host CPU use by others (percent of all cores) above which the timings are flagged.
BUSY_WARN_PERCENT = 25.0


def _host_busy_percent() -> float:
    """CPU use of the whole host over half a second, before this process starts measuring."""
    import psutil

    return float(psutil.cpu_percent(interval=0.5))


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(
    spec: AnalysisSpec,
    out: str | Path = "runs",
    name: str | None = None,
    echo: bool = True,
    progress: bool = True,
) -> Path:
    """Analyse every target (and sweep point), write the run directory, return its path."""
    from tqdm import tqdm

    from shoestring.analyze.plot import plot_throughput
    from shoestring.analyze.probe import read_cache_sizes
    from shoestring.analyze.report import render_markdown
    from shoestring.runs.monitor import SystemMonitor

    targets = resolve_targets(spec.targets, spec.overrides)
    points = expand_sweep(targets, parse_sweep(spec.sweep))
    tokens, token_source = _training_tokens(spec)
    path = unique_run_dir(out, name or "analysis")
    rd = RunDir(path, "analysis", echo=echo)
    spec_dict = asdict(spec)
    rd.start(
        {
            **spec_dict,
            "configs": [
                {"label": lb, "source": src, "sweep": pt, "config": to_dict(c)}
                for lb, src, c, pt, _ in points
            ],
        },
        run_name=path.name,
        n_configs=len(points),
    )
    busy = _host_busy_percent() if spec.measure else None
    if busy is not None and busy > BUSY_WARN_PERCENT:
        rd.log(
            f"warning: the host was {busy:.0f}% busy before measuring (other processes); "
            "the measured speeds will be low - measure on an idle machine for numbers to quote"
        )
    monitor = SystemMonitor().start()
    t_start = time.perf_counter()
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if main_thread else None
    rows: list[dict[str, Any]] = []
    probes: dict[int, dict[str, Any] | None] = {}
    caches = read_cache_sizes()
    rd.log(
        f"analysing {len(points)} configuration(s); caches ({caches['source']}): "
        + ", ".join(f"{k} {caches[k] // 1024} KiB" for k in ("L1d", "L2", "L3") if caches.get(k))
    )
    status, error = "finished", None
    total_steps = len(points) * (spec.settings.warmup + spec.settings.steps) if spec.measure else 0
    bar = tqdm(
        total=total_steps or len(points),
        desc="analyze",
        unit="step" if spec.measure else "config",
        disable=not progress,
        leave=False,
    )
    host_probe: dict[str, Any] | None = None
    try:
        for label, source, cfg, point, base_label in points:
            bar.set_postfix_str(label)

            def on_step(phase: str, i: int, dt: float, _label: str = label) -> None:
                bar.update(1)
                rd.metric({"config": _label, "phase": phase, "step": i, "seconds": round(dt, 4)})

            row = analyze_config(label, cfg, caches, spec, on_step=on_step)
            row["source"] = source
            row["sweep"] = point or None
            row["base_label"] = base_label
            if spec.measure:
                threads = row["measured"]["runtime"]["threads"]
                if threads not in probes:
                    torch.set_num_threads(threads)
                    probes[threads] = load_probe(
                        measure_if_missing=True,
                        device=row["measured"]["runtime"]["device"],
                        quick=spec.quick,
                    )
                _attach_host(row, probes[threads])
                host_probe = host_probe or probes[threads]
                skipped = spec.settings.steps - row["measured"]["timed_steps"]
                bar.update(max(0, skipped))
            else:
                bar.update(1)
            _attach_projection(row, spec)
            _attach_time_to_train(row, tokens, token_source)
            rows.append(row)
            rd.metric(
                {
                    "config": label,
                    "event": "config",
                    "tokens_per_second": row["tokens_per_second"],
                    "train_flops_per_token": row["flops"]["train_per_token"],
                    "mfu": row["mfu"],
                }
            )
            tps = row["tokens_per_second"]
            if row["measured"] and row["measured"]["noisy"]:
                rd.log(
                    f"warning: {label}: step times vary by "
                    f"{row['measured']['step_seconds_spread']:.0%} "
                    f"({row['measured']['step_seconds']} s): the host was busy; the fastest step "
                    f"gives {row['measured']['tokens_per_second_best_step']:,.0f} tokens/s"
                )
            rd.log(
                f"{label}: {row['params']['total'] / 1e6:.2f}M params, "
                f"{row['flops']['train_per_token'] / 1e9:.3f} GFLOP/token (train)"
                + (f", {tps:,.0f} tokens/s" if tps else "")
                + (f", MFU {row['mfu']:.1%}" if row.get("mfu") else "")
            )
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user; the rows so far are written"
        raise
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
        bar.close()
        if host_probe is None:
            host_probe = load_probe(measure_if_missing=False) or {"caches": caches}
        ratios = speed_ratios(rows)
        analysis = {
            "schema_version": 1,
            "host": host_probe,
            "configs": rows,
            "speed_ratios": ratios,
            "flop_tolerance": FLOP_TOLERANCE,
        }
        atomic_write_json(path / "analysis.json", analysis)
        plot = None
        peak = None
        if rows and rows[0].get("measured"):
            peak = rows[0].get("peak_gflops")
        if rows:
            plot = plot_throughput(rows, path / "throughput_vs_flops.png", peak)
        atomic_write_text(path / "analysis.md", render_markdown(analysis, plot))
        best = best_per_target(rows)
        first_rt = rows[0]["measured"]["runtime"] if rows and rows[0].get("measured") else None
        rd.finish(
            status,
            error=error,
            runtime=first_rt,
            system=monitor.stop(),
            wall_seconds=round(time.perf_counter() - t_start, 2),
            host_cpu_percent_before=busy,
            configs=[r["label"] for r in rows],
            flops_within_tolerance=all(r["flops"]["within_tolerance"] for r in rows),
            params_match=all(r["params"]["match"] for r in rows),
            best=best or None,
            plot=plot.name if plot else None,
            files=["analysis.json", "analysis.md"] + ([plot.name] if plot else []),
        )
        rd.close()
    return path


def best_per_target(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest measured row of each target (the answer of a sweep over its grid)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        tps = r.get("tokens_per_second")
        base = r.get("base_label", r["label"])
        if tps and (base not in best or tps > best[base]["tokens_per_second"]):
            best[base] = {"label": r["label"], "tokens_per_second": tps, "sweep": r.get("sweep")}
    return best
