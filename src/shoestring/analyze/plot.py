"""The one picture of an analysis: measured tokens/s against training FLOPs per token.

On log-log axes a constant compute rate (GFLOP/s) is a straight line of slope -1: if a
configuration were faster only because it does fewer FLOPs, every point would sit on one such
line. A point above the line of the configs' median rate is faster than its FLOPs predict (the
"fits in cache" effect a study may claim), a point below it slower. The measured matmul peak is
drawn too, as the ceiling.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_throughput"]


def plot_throughput(
    rows: list[dict[str, Any]], path: Path, peak_gflops: float | None
) -> Path | None:
    """Write the PNG; None when no row has a measured throughput (nothing to plot)."""
    pts = [
        (r["label"], r["flops"]["train_per_token"], r["tokens_per_second"])
        for r in rows
        if r.get("tokens_per_second")
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    xs = [p[1] for p in pts]
    ys = [p[2] for p in pts]
    ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
    for label, x, y in pts:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    lo, hi = min(xs) / 1.6, max(xs) * 1.6
    grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
    rates = [x * y / 1e9 for x, y in zip(xs, ys, strict=True)]
    median_rate = statistics.median(rates)
    ax.plot(
        grid,
        [median_rate * 1e9 / g for g in grid],
        "--",
        color="tab:gray",
        label=f"constant {median_rate:.0f} GFLOP/s (median of these configs)",
    )
    if peak_gflops:
        ax.plot(
            grid,
            [peak_gflops * 1e9 / g for g in grid],
            ":",
            color="tab:red",
            label=f"measured matmul peak {peak_gflops:.0f} GFLOP/s",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs per token (counted, forward + backward)")
    ax.set_ylabel("measured training tokens/s")
    ax.set_title("Throughput against FLOPs: on the dashed line = speed explained by FLOPs alone")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
