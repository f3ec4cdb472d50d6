"""PNG plots for ``compare``: every figure drawn with matplotlib's Agg backend (no display).

Why these choices: runs being compared share one set of axes per figure (a shared scale is the
comparison), every run keeps one colour across all figures, a run that did not finish is drawn
dashed and labelled with its status so a partial curve is never read as a result, and every
PNG is written to a temporary file and renamed like every other file shoestring writes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from shoestring.rundir.directory import atomic_write_bytes  # noqa: E402

__all__ = [
    "PHASE_COLORS",
    "Palette",
    "accuracy_intervals",
    "grpo_curves",
    "loss_curves",
    "phase_loss_plot",
    "phase_share_plot",
    "study_plot",
]

PHASE_COLORS = {"warmup": "#7f7f7f", "full": "#1f77b4", "predict": "#2ca02c", "correct": "#d62728"}
DPI = 110


class Palette:
    """One colour per label, stable across every figure of a report."""

    def __init__(self) -> None:
        self._colors: dict[str, Any] = {}
        self._cycle = plt.get_cmap("tab10").colors

    def __call__(self, label: str) -> Any:
        if label not in self._colors:
            self._colors[label] = self._cycle[len(self._colors) % len(self._cycle)]
        return self._colors[label]


def save_png(fig: Figure, path: Path) -> str:
    """Write ``fig`` to ``path`` atomically (temp file + rename); returns the file name."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _style(ax: Any, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)


def loss_curves(
    series: Sequence[dict[str, Any]], x: str, xlabel: str, path: Path, palette: Palette
) -> str | None:
    """Train (line) and validation (markers) loss of every run against ``x`` on one axes.

    ``series`` items: ``label``, ``finished`` (bool), ``status``, ``train`` and ``val``: lists
    of metric records holding ``x`` and ``loss`` / ``val_loss``.
    """
    if not any(s["train"] or s["val"] for s in series):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for s in series:
        color = palette(s["label"])
        dash = "-" if s["finished"] else "--"
        name = s["label"] if s["finished"] else f"{s['label']} [{s['status']}]"
        tr = [(r[x], r["loss"]) for r in s["train"] if r.get(x) is not None]
        va = [(r[x], r["val_loss"]) for r in s["val"] if r.get(x) is not None]
        if tr:
            ax.plot(
                *zip(*tr, strict=True), dash, color=color, lw=1.3, alpha=0.8, label=f"{name} train"
            )
        if va:
            ax.plot(
                *zip(*va, strict=True),
                "o" + dash,
                color=color,
                lw=2.0,
                ms=5,
                label=f"{name} val",
                markerfacecolor="white",
            )
    _style(ax, xlabel, "loss (nats/token)")
    # below the axes: a legend inside would hide the curves it names
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return save_png(fig, path)


def phase_loss_plot(
    records: Sequence[dict[str, Any]], x: str, xlabel: str, title: str, path: Path
) -> str | None:
    """Training loss against time for one hybrid run, each point coloured by its phase."""
    pts = [r for r in records if r.get("loss") is not None and r.get(x) is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    ax.plot([r[x] for r in pts], [r["loss"] for r in pts], "-", color="#bbbbbb", lw=0.8)
    seen = {str(r.get("phase", "?")) for r in pts}
    phases = [p for p in PHASE_COLORS if p in seen] + sorted(seen - set(PHASE_COLORS))
    for ph in phases:
        sel = [r for r in pts if str(r.get("phase", "?")) == ph]
        ax.scatter(
            [r[x] for r in sel],
            [r["loss"] for r in sel],
            s=14,
            color=PHASE_COLORS.get(ph, "#9467bd"),
            label=ph,
            zorder=3,
        )
    _style(ax, xlabel, "train loss (nats/token)", title)
    ax.legend(fontsize=8, title="phase")
    return save_png(fig, path)


def phase_share_plot(
    rows: Sequence[tuple[str, dict[str, float]]], path: Path, unit: str = "seconds"
) -> str | None:
    """Stacked horizontal bars: each hybrid run's time (or steps) split by phase."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.5 * len(rows)))
    labels = [r[0] for r in rows]
    phases = [p for p in PHASE_COLORS if any(p in r[1] for r in rows)]
    phases += sorted({p for r in rows for p in r[1]} - set(phases))
    left = [0.0] * len(rows)
    for ph in phases:
        vals = [float(r[1].get(ph, 0.0) or 0.0) for r in rows]
        ax.barh(labels, vals, left=left, color=PHASE_COLORS.get(ph, "#9467bd"), label=ph)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    _style(ax, unit, "")
    ax.invert_yaxis()
    ax.legend(
        fontsize=8, ncol=len(phases), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False
    )
    return save_png(fig, path)


def accuracy_intervals(
    rows: Sequence[dict[str, Any]], xlabel: str, path: Path, title: str = ""
) -> str | None:
    """Accuracies as points with their 95% Wilson intervals, one row per item.

    ``rows`` items: ``label``, ``accuracy``, ``lo``, ``hi`` (fractions), optional ``color``.
    """
    rows = [r for r in rows if r.get("accuracy") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.5 * len(rows)))
    for i, r in enumerate(rows):
        acc, lo, hi = 100 * r["accuracy"], 100 * r["lo"], 100 * r["hi"]
        color = r.get("color", "#1f77b4")
        ax.errorbar([acc], [i], xerr=[[acc - lo], [hi - acc]], fmt="o", color=color, capsize=4)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(-2, 102)
    _style(ax, xlabel, "", title)
    return save_png(fig, path)


def study_plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> str | None:
    """Mean validation loss per configuration with +- one standard deviation over seeds."""
    rows = [r for r in rows if r.get("mean") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.45 * len(rows)))
    for i, r in enumerate(rows):
        std = r.get("std") or 0.0
        ax.errorbar(
            [r["mean"]],
            [i],
            xerr=[[std], [std]],
            fmt="o",
            capsize=4,
            color="#1f77b4" if r.get("std") is not None else "#999999",
        )
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.invert_yaxis()
    _style(ax, "validation loss, mean +- std over seeds (grey: one seed)", "", title)
    return save_png(fig, path)


def grpo_curves(series: Sequence[dict[str, Any]], path: Path, palette: Palette) -> str | None:
    """Mean reward (band: +- its std over the group) and accuracy of every GRPO run per step."""
    if not any(s["records"] for s in series):
        return None
    has_acc = any(r.get("accuracy") is not None for s in series for r in s["records"])
    fig, axes = plt.subplots(
        1, 2 if has_acc else 1, figsize=(9.5 if has_acc else 7.5, 4.0), squeeze=False
    )
    ax = axes[0][0]
    for s in series:
        recs = [r for r in s["records"] if r.get("reward_mean") is not None]
        if not recs:
            continue
        color = palette(s["label"])
        dash = "-" if s["finished"] else "--"
        xs = [r["step"] for r in recs]
        ys = [r["reward_mean"] for r in recs]
        name = s["label"] if s["finished"] else f"{s['label']} [{s['status']}]"
        ax.plot(xs, ys, dash, color=color, label=name, lw=1.5)
        sd = [r.get("reward_std") for r in recs]
        if all(v is not None for v in sd):
            ax.fill_between(
                xs,
                [y - d for y, d in zip(ys, sd, strict=True)],
                [y + d for y, d in zip(ys, sd, strict=True)],
                color=color,
                alpha=0.12,
            )
    _style(ax, "step", "reward (mean, band +- std)")
    ax.legend(fontsize=8)
    if has_acc:
        ax2 = axes[0][1]
        for s in series:
            recs = [r for r in s["records"] if r.get("accuracy") is not None]
            if recs:
                ax2.plot(
                    [r["step"] for r in recs],
                    [100 * r["accuracy"] for r in recs],
                    "-" if s["finished"] else "--",
                    color=palette(s["label"]),
                    lw=1.5,
                )
        _style(ax2, "step", "training-batch accuracy (%)")
    fig.tight_layout()
    return save_png(fig, path)
