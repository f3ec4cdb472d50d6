"""PNG plots for ``compare``, drawn with matplotlib's Agg backend (no display).

Why these choices: runs compared share one axes per figure (a shared scale is the comparison),
a run keeps one colour across all figures, a run that did not finish is drawn dashed and
labelled with its status so a partial curve is never read as a result, and every PNG is
written atomically (temp file + rename) like every other file shoestring writes.
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
    "ACCURACY_AXIS",
    "ACCURACY_XLIM",
    "PHASE_COLORS",
    "Palette",
    "grpo_curves",
    "intervals",
    "loss_curves",
    "phase_loss_plot",
]
__all__ += ["phase_share_plot", "phase_order"]

#: The axis of accuracies drawn by :func:`intervals`, in percent, and its range.
ACCURACY_AXIS, ACCURACY_XLIM = "accuracy (%), 95% Wilson interval", (-2, 102)
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


def _look(s: dict[str, Any], palette: Palette) -> tuple[Any, str, str]:
    """A run's colour, line style (dashed: not finished) and legend name (with its status)."""
    if s["finished"]:
        return palette(s["label"]), "-", s["label"]
    return palette(s["label"]), "--", f"{s['label']} [{s['status']}]"


def phase_order(names: Any) -> list[str]:
    """Hybrid phases in the trainer's order, then any other phase by name."""
    seen = set(names)
    return [p for p in PHASE_COLORS if p in seen] + sorted(seen - set(PHASE_COLORS))


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
        color, dash, name = _look(s, palette)
        tr = [(r[x], r["loss"]) for r in s["train"] if r.get(x) is not None]
        va = [(r[x], r["val_loss"]) for r in s["val"] if r.get(x) is not None]
        if tr:
            ax.plot(
                *zip(*tr, strict=True), dash, color=color, lw=1.3, alpha=0.8, label=f"{name} train"
            )
        if va:
            look = {"color": color, "lw": 2.0, "ms": 5, "markerfacecolor": "white"}
            ax.plot(*zip(*va, strict=True), "o" + dash, label=f"{name} val", **look)
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
    for ph in phase_order(str(r.get("phase", "?")) for r in pts):
        sel = [(r[x], r["loss"]) for r in pts if str(r.get("phase", "?")) == ph]
        color = PHASE_COLORS.get(ph, "#9467bd")
        ax.scatter(*zip(*sel, strict=True), s=14, color=color, label=ph, zorder=3)
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
    phases = phase_order(p for r in rows for p in r[1])
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


def intervals(
    rows: Sequence[dict[str, Any]], xlabel: str, path: Path, title: str = "", xlim: Any = None
) -> str | None:
    """One row per item (``label``, ``color``): a point at ``x`` with the interval ``lo``..``hi``
    around it - accuracies with their Wilson interval, a study's losses +- their seed std."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.5 * len(rows)))
    for i, r in enumerate(rows):
        err = [[r["x"] - r["lo"]], [r["hi"] - r["x"]]]
        ax.errorbar([r["x"]], [i], xerr=err, fmt="o", color=r["color"], capsize=4)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.invert_yaxis()
    if xlim is not None:
        ax.set_xlim(*xlim)
    _style(ax, xlabel, "", title)
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
        color, dash, name = _look(s, palette)
        xs, ys = [r["step"] for r in recs], [r["reward_mean"] for r in recs]
        ax.plot(xs, ys, dash, color=color, label=name, lw=1.5)
        if None not in (sd := [r.get("reward_std") for r in recs]):
            band = [(y - d, y + d) for y, d in zip(ys, sd, strict=True)]
            ax.fill_between(xs, *zip(*band, strict=True), color=color, alpha=0.12)
    _style(ax, "step", "reward (mean, band +- std)")
    ax.legend(fontsize=8)
    for s in series if has_acc else ():
        if recs := [
            (r["step"], 100 * r["accuracy"]) for r in s["records"] if r.get("accuracy") is not None
        ]:
            color, dash, _ = _look(s, palette)
            axes[0][1].plot(*zip(*recs, strict=True), dash, color=color, lw=1.5)
    if has_acc:
        _style(axes[0][1], "step", "training-batch accuracy (%)")
    fig.tight_layout()
    return save_png(fig, path)
