"""One analysis: configs in, an ``analysis`` run directory out (``shoestring analyze``'s API).

For every configuration (and sweep point) it builds the row of :mod:`shoestring.analyze.row`,
attaches the host's measured peak, projections and time to train, and writes
``analysis.json`` (``{"host": probe, "configs": [rows], "speed_ratios": ...}``),
``throughput_vs_flops.png``, ``report.md`` (through the one report system,
the run lifecycle's finalizers) and the usual
``config.json``/``summary.json``/``metrics.jsonl``/``log.txt``. The run's status, monitor and
SIGTERM handling are :class:`~shoestring.rundir.lifecycle.RunLifecycle`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from shoestring.analyze.config import AnalysisConfig
from shoestring.analyze.plot import plot_throughput
from shoestring.analyze.probe import load_probe, read_cache_sizes
from shoestring.analyze.row import (
    FLOP_TOLERANCE,
    analyze_config,
    attach_host,
    attach_projection,
    attach_time_to_train,
    best_per_target,
    speed_ratios,
)
from shoestring.analyze.spec import (
    SweepPoint,
    expand_sweep,
    parse_sweep,
    resolve_targets,
    training_tokens,
)
from shoestring.config import to_dict
from shoestring.report.finalize import command_finalizers
from shoestring.rundir.directory import RunDir, atomic_write_json, unique_run_dir
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.util.progress import progress_bar

__all__ = ["BUSY_WARN_PERCENT", "run"]

#: Host CPU use by others (percent of all cores) above which the timings are flagged.
BUSY_WARN_PERCENT = 25.0


@dataclass
class _Progress:
    """What the loop has produced so far; written out however the loop ends."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    host_probe: dict[str, Any] | None = None
    probes: dict[int, dict[str, Any] | None] = field(default_factory=dict)


def _host_busy_percent() -> float:
    """CPU use of the whole host over half a second, before this process starts measuring."""
    return float(psutil.cpu_percent(interval=0.5))


def run(cfg: AnalysisConfig) -> Path:
    """Analyse every target (and sweep point), write the run directory, return its path.

    The directory is ``cfg.output.dir``/``cfg.output.name`` (``analysis`` by default), made
    unique; ``cfg.output.quiet`` keeps the log lines and the progress bar off stderr.
    """
    cfg.check()
    targets = resolve_targets(cfg.targets, cfg.overrides)
    points = expand_sweep(targets, parse_sweep(cfg.sweep))
    path = unique_run_dir(cfg.output.dir, cfg.output.name or "analysis")
    rd = RunDir(path, "analysis", echo=not cfg.output.quiet)
    config = {
        **cfg.run_dict(),
        "configs": [
            {"label": lb, "source": src, "sweep": pt, "config": to_dict(c)}
            for lb, src, c, pt, _ in points
        ],
    }
    life = RunLifecycle(
        rd,
        config=config,
        start_fields={"run_name": path.name, "n_configs": len(points)},
        # report.md reads the final summary.json; an analysis that stopped early gets one too,
        # for the rows it has (a failing report is a warning, never the run's own error)
        finalizers=command_finalizers(),
    )
    with life:
        _analyze(points, cfg, rd, life)
    return path


def _analyze(points: list[SweepPoint], cfg: AnalysisConfig, rd: RunDir, life: RunLifecycle) -> None:
    """The lifecycle's body: measure every point, then write analysis.json and the plot."""
    tokens, token_source = training_tokens(cfg)
    busy = _host_busy_percent() if cfg.measure else None
    if busy is not None and busy > BUSY_WARN_PERCENT:
        rd.log(
            f"warning: the host was {busy:.0f}% busy before measuring (other processes); "
            "the measured speeds will be low - measure on an idle machine for numbers to quote"
        )
    caches = read_cache_sizes()
    rd.log(
        f"analysing {len(points)} configuration(s); caches ({caches['source']}): "
        + ", ".join(f"{k} {caches[k] // 1024} KiB" for k in ("L1d", "L2", "L3") if caches.get(k))
    )
    total_steps = len(points) * (cfg.settings.warmup + cfg.settings.steps) if cfg.measure else 0
    bar = progress_bar(
        total=total_steps or len(points),
        desc="analyze",
        unit="step" if cfg.measure else "config",
        disable=cfg.output.quiet,
        leave=False,
    )
    state = _Progress()
    try:
        for point in points:
            state.rows.append(_analyze_point(point, cfg, rd, caches, bar, state))
            attach_time_to_train(state.rows[-1], tokens, token_source)
    except KeyboardInterrupt:
        life.set_status("interrupted", "interrupted by the user; the rows so far are written")
        raise
    finally:
        bar.close()
        # the rows so far are written however the loop ended
        life.fields.update(_write_outputs(rd.path, state, caches, busy, life))


def _analyze_point(
    point: SweepPoint,
    asked: AnalysisConfig,
    rd: RunDir,
    caches: dict[str, Any],
    bar: Any,
    state: _Progress,
) -> dict[str, Any]:
    """One configuration's row, with the host peak and projection attached and logged."""
    label, source, cfg, sweep, base_label = point
    bar.set_postfix_str(label)

    def on_step(phase: str, i: int, dt: float) -> None:
        bar.update(1)
        rd.metric({"config": label, "phase": phase, "step": i, "seconds": round(dt, 4)})

    row = analyze_config(label, cfg, caches, asked, on_step=on_step)
    row["source"] = source
    row["sweep"] = sweep or None
    row["base_label"] = base_label
    if asked.measure:
        # the matmul peak depends on the thread count: probe (or read the cache) once per count
        threads = row["measured"]["runtime"]["threads"]
        if threads not in state.probes:
            torch.set_num_threads(threads)
            state.probes[threads] = load_probe(
                measure_if_missing=True,
                device=row["measured"]["runtime"]["device"],
                quick=asked.quick,
            )
        attach_host(row, state.probes[threads])
        state.host_probe = state.host_probe or state.probes[threads]
        # a config that stopped timing early (--seconds) still moves the bar to its end
        bar.update(max(0, asked.settings.steps - row["measured"]["timed_steps"]))
    else:
        bar.update(1)
    attach_projection(row, asked)
    rd.metric(
        {
            "config": label,
            "event": "config",
            "tokens_per_second": row["tokens_per_second"],
            "train_flops_per_token": row["flops"]["train_per_token"],
            "mfu": row["mfu"],
        }
    )
    _log_row(rd, row)
    return row


def _log_row(rd: RunDir, row: dict[str, Any]) -> None:
    """The row's headline numbers, and a warning when its step times say the host was busy."""
    label, tps, meas = row["label"], row["tokens_per_second"], row["measured"]
    for flag in ("peak_flag", "mfu_flag"):
        if row.get(flag):
            rd.log(f"warning: {label}: {row[flag]}")
    if meas and meas["noisy"]:
        rd.log(
            f"warning: {label}: step times vary by {meas['step_seconds_spread']:.0%} "
            f"({meas['step_seconds']} s): the host was busy; the fastest step "
            f"gives {meas['tokens_per_second_best_step']:,.0f} tokens/s"
        )
    rd.log(
        f"{label}: {row['params']['total'] / 1e6:.2f}M params, "
        f"{row['flops']['train_per_token'] / 1e9:.3f} GFLOP/token (train)"
        + (f", {tps:,.0f} tokens/s" if tps else "")
        + (f", MFU {row['mfu']:.1%}" if row.get("mfu") else "")
    )


def _write_outputs(
    path: Path,
    state: _Progress,
    caches: dict[str, Any],
    busy: float | None,
    life: RunLifecycle,
) -> dict[str, Any]:
    """analysis.json and the plot; returns the summary fields that describe them."""
    rows = state.rows
    host_probe = state.host_probe
    if host_probe is None:
        host_probe = load_probe(measure_if_missing=False) or {"caches": caches}
    analysis = {
        "schema_version": 1,
        "host": host_probe,
        "configs": rows,
        "speed_ratios": speed_ratios(rows),
        "flop_tolerance": FLOP_TOLERANCE,
    }
    atomic_write_json(path / "analysis.json", analysis)
    plot = None
    if rows:
        peak = rows[0].get("peak_gflops") if rows[0].get("measured") else None
        plot = plot_throughput(rows, path / "throughput_vs_flops.png", peak)
    first_rt = rows[0]["measured"]["runtime"] if rows and rows[0].get("measured") else None
    return {
        "runtime": first_rt,
        "wall_seconds": round(life.wall_seconds, 2),
        "host_cpu_percent_before": busy,
        "configs": [r["label"] for r in rows],
        "flops_within_tolerance": all(r["flops"]["within_tolerance"] for r in rows),
        "params_match": all(r["params"]["match"] for r in rows),
        "best": best_per_target(rows) or None,
        "plot": plot.name if plot else None,
        "files": ["analysis.json", "report.md"] + ([plot.name] if plot else []),
    }
