"""``progressive.png``: accuracy per evaluated model with its Wilson CI, and time per attempt.

Why a figure the command draws itself: a rollback is a judgement against a moving band (the
best so far minus the threshold), which a table shows poorly; the plot draws that band, marks
rolled-back attempts with a cross and a hatched bar, and puts the seconds of every attempt
under it. It reads only the curriculum's state dict, so it can be redrawn from ``state.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shoestring.rl.progressive_state import pts  # noqa: E402

__all__ = ["plot_progressive"]


def plot_progressive(state: dict[str, Any], out: Path, threshold: float) -> Path:
    """Accuracy per evaluated model with Wilson CIs (rolled-back attempts marked), and time."""
    base = state["base_eval"]
    recs = [r for r in state["records"] if r.get("eval")]
    labels = ["base"] + [r["label"] for r in recs]
    evals = [base] + [r["eval"] for r in recs]
    statuses = ["base"] + [r["status"] for r in recs]
    colors = {"base": "tab:gray", "accepted": "tab:green", "rolled_back": "tab:red"}
    colors["stopped"] = "tab:red"
    xs = list(range(len(labels)))
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(max(6.0, 1.2 * len(labels) + 2), 7), height_ratios=(2, 1), sharex=True
    )
    best_line = [pts(base["accuracy"])]
    for r in recs:
        best_line.append(pts(r["best_so_far"]))
    ax.step(xs, best_line, where="post", color="tab:blue", lw=1, label="best so far")
    ax.fill_between(
        xs,
        [b - threshold for b in best_line],
        best_line,
        step="post",
        color="tab:blue",
        alpha=0.1,
        label=f"tolerance ({threshold:g} points)",
    )
    for x, e, s in zip(xs, evals, statuses, strict=True):
        acc = pts(e["accuracy"])
        err = [[acc - pts(e["ci_low"])], [pts(e["ci_high"]) - acc]]
        rolled = s in ("rolled_back", "stopped")
        ax.errorbar(
            [x],
            [acc],
            yerr=err,
            fmt="x" if rolled else "o",
            ms=9 if rolled else 6,
            color=colors.get(s, "black"),
            capsize=4,
        )
        ax.annotate(
            f"{acc:.1f}%" + (" rolled back" if rolled else ""),
            (x, acc),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    n = base["n"]
    ax.set_ylabel(f"validation accuracy, % (n={n}, 95% Wilson CI)")
    ax.set_title("progressive GRPO: accuracy per stage")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    secs = [base.get("seconds", 0.0)] + [r["seconds"] for r in recs]
    bars = ax2.bar(xs, secs, color=[colors.get(s, "black") for s in statuses], alpha=0.7)
    for b, s in zip(bars, statuses, strict=True):
        if s in ("rolled_back", "stopped"):
            b.set_hatch("//")
    ax2.set_ylabel("seconds (train + validate)")
    ax2.set_xticks(xs, labels, rotation=20, ha="right")
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
