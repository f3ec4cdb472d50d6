"""The study's four PNG plots, drawn with matplotlib's Agg backend (no display needed).

1. validation loss vs parameters, one line per variant (mean +- std over seeds);
2. validation loss vs wall time per trial;
3. validation loss vs peak memory per configuration, with the Pareto front (no other
   configuration is both smaller and better) marked;
4. a box plot of validation loss per variant family (lora_small, lora_medium ... -> lora), one
   panel per size, because mixing sizes in one box would show the size, not the variant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402


def family(variant: str) -> str:
    """``lora_medium`` -> ``lora``; ``rope_only`` -> ``rope``; ``baseline`` -> ``baseline``."""
    return variant.split("_", 1)[0]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (x lower, y lower), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _finished(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "finished" and r.get("val_loss") is not None]


def make_plots(
    rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], out_dir: Path
) -> dict[str, str]:
    """Write the plots into ``out_dir`` and return {name: path}; nothing to plot -> {}."""
    done = _finished(rows)
    if not done:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    variants = sorted({r["variant"] for r in done})
    sizes = sorted({r["size"] for r in done}, key=lambda s: _size_order(s))
    colors = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    markers = {s: "osD^v<>p"[i % 8] for i, s in enumerate(sizes)}

    # 1. loss vs params per variant
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        pts = sorted(
            (e["params"], e["val_loss_mean"], e["val_loss_std"] or 0.0)
            for e in summary
            if e["variant"] == v and e.get("params") and e["val_loss_mean"] is not None
        )
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=v, color=colors[v])
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Validation loss vs parameters (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths["loss_vs_params"] = _save(fig, out_dir / "loss_vs_params.png")

    # 2. loss vs wall time, one point per trial
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in done:
        ax.scatter(
            r["wall_seconds"], r["val_loss"], color=colors[r["variant"]], marker=markers[r["size"]]
        )
    _legend(ax, variants, sizes, colors, markers)
    ax.set_xlabel("trial wall time (s, training + evaluation)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Validation loss vs wall time (one point per trial)")
    ax.grid(alpha=0.3)
    paths["loss_vs_wall_time"] = _save(fig, out_dir / "loss_vs_wall_time.png")

    # 3. loss vs peak memory with the Pareto front
    conf = [e for e in summary if e.get("peak_memory_mb_mean") and e["val_loss_mean"] is not None]
    if conf:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        pts = [(e["peak_memory_mb_mean"], e["val_loss_mean"]) for e in conf]
        for e, (x, y) in zip(conf, pts, strict=True):
            ax.scatter(
                x, y, color=colors.get(e["variant"], "k"), marker=markers.get(e["size"], "o")
            )
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="k", lw=1, ls="--", label="Pareto front")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="k")
        _legend(ax, variants, sizes, colors, markers, extra="Pareto front")
        ax.set_xlabel("peak memory per trial (MB; RSS of the trial process, CUDA allocated on GPU)")
        ax.set_ylabel("mean validation loss")
        ax.set_title("Validation loss vs peak memory (circled: Pareto front)")
        ax.grid(alpha=0.3)
        paths["loss_vs_memory"] = _save(fig, out_dir / "loss_vs_memory.png")

    # 4. box plot per variant family, one panel per size
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        by_family: dict[str, list[float]] = defaultdict(list)
        for r in done:
            if r["size"] == size:
                by_family[family(r["variant"])].append(r["val_loss"])
        names = sorted(by_family)
        ax.boxplot([by_family[n] for n in names], tick_labels=names)
        ax.set_title(f"size {size}")
        ax.set_ylabel("validation loss")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Validation loss per variant family (all seeds and members)")
    paths["box_by_family"] = _save(fig, out_dir / "box_by_family.png")
    return paths


def _size_order(size: str) -> int:
    order = ["tiny", "small", "medium", "large"]
    return order.index(size) if size in order else len(order)


def _legend(
    ax: Any,
    variants: list[str],
    sizes: list[str],
    colors: dict[str, Any],
    markers: dict[str, str],
    extra: str | None = None,
) -> None:
    handles = [Line2D([], [], color=colors[v], marker="o", ls="", label=v) for v in variants]
    handles += [
        Line2D([], [], color="gray", marker=markers[s], ls="", label=f"size {s}") for s in sizes
    ]
    if extra:
        handles.append(Line2D([], [], color="k", ls="--", label=extra))
    ax.legend(handles=handles, fontsize=8)


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
