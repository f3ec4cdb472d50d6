"""The training-runs section (train and hybrid): configuration, measured results, loss curves.

Why: the comparisons this project grew from were config tables next to completion times and
loss tables; this section writes them from the run directories, shows only finished runs as
results, and draws every run's loss on shared axes (against step and against time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Para, Section, Table, fmt, fmt_int
from shoestring.report.kinds import TRAINING_KINDS, RunInfo
from shoestring.report.measures import training_measures
from shoestring.report.sections.common import SectionContext, config_table

__all__ = ["TRAIN_KEY_FIELDS", "time_axis", "training_section"]


#: Config fields always shown for training runs (the ones a reader compares first).
TRAIN_KEY_FIELDS = (
    "preset",
    "variant",
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.d_ff",
    "model.vocab_size",
    "train.seq_len",
    "train.batch_size",
    "train.grad_accum",
    "train.max_steps",
    "train.lr",
    "train.trainer",
    "train.device",
    "train.dtype",
    "data.path",
)


def time_axis(runs: Sequence[RunInfo]) -> tuple[str, str]:
    """``wall_seconds`` when every run logs it, else the training-step time every run logs."""
    recs = [m for r in runs for m in r.metrics if m.get("loss") is not None]
    if recs and all(m.get("wall_seconds") is not None for m in recs):
        return "wall_seconds", "wall time (s)"
    return "train_seconds", "training time (s; training steps only, evaluation excluded)"


def _curves(r: RunInfo, x: str) -> dict[str, Any]:
    train, val = [], []
    for m in r.metrics:
        if m.get("event"):
            continue
        m = dict(m)
        if m.get(x) is None and m.get("step") == 0:
            m[x] = 0.0
        if m.get("loss") is not None:
            train.append(m)
        if m.get("val_loss") is not None:
            val.append(m)
    return {
        "label": r.label,
        "finished": r.finished,
        "status": r.status,
        "train": train,
        "val": val,
    }


def training_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    tr = [r for r in runs if r.kind in TRAINING_KINDS]
    if not tr:
        return None
    blocks: list[Any] = [
        Para(
            "Configuration: the key fields, and every other field whose value differs between "
            "the runs (**bold** = differs)."
        ),
        config_table(
            tr, TRAIN_KEY_FIELDS, [("parameters", lambda r: fmt_int(r.summary.get("n_params")))]
        ),
    ]
    done = [r for r in tr if r.finished]
    if done:
        rows = []
        for r in done:
            m = training_measures(r)
            best = fmt(m["best_val_loss"], ".4f")
            if m["best_step"] is not None and m["best_val_loss"] is not None:
                best += f" (step {m['best_step']})"
            mem = fmt(m["peak_rss_mb"], ".0f")
            if m["cuda_peak_allocated_mb"]:
                mem += f" (CUDA {m['cuda_peak_allocated_mb']:.0f})"
            rows.append(
                [
                    r.label,
                    f"{fmt_int(m['steps'])}",
                    fmt(m["wall_seconds"], ".1f"),
                    fmt(m["train_seconds"], ".1f"),
                    fmt(m["tokens_per_second"], ",.0f"),
                    fmt(m["samples_per_second"], ",.1f"),
                    f"{fmt(m['cpu_percent_mean'], '.0f')} / {fmt(m['cpu_percent_peak'], '.0f')}",
                    mem,
                    fmt(m["final_val_loss"], ".4f"),
                    best,
                    f"{m['device'] or '-'} / {m['dtype'] or '-'}",
                ]
            )
        blocks += [
            Para(
                "Measured results of the finished runs. Wall = the whole process of the last "
                "session; tokens/s and samples/s = training-step time only (evaluation and "
                "checkpoints excluded); CPU = the process's share of all host cores, mean / "
                "peak; memory = peak resident set."
            ),
            Table(
                [
                    "run",
                    "steps",
                    "wall s",
                    "train s",
                    "tokens/s",
                    "samples/s",
                    "CPU % mean/peak",
                    "peak RSS MB",
                    "final val loss",
                    "best val loss",
                    "device / dtype",
                ],
                rows,
                ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l"],
            ),
        ]
    not_done = [r for r in tr if not r.finished]
    if not_done:
        rows = []
        for r in not_done:
            vals = [m["val_loss"] for m in r.metrics if m.get("val_loss") is not None]
            rows.append(
                [
                    r.label,
                    f"**{r.status_text()}**",
                    fmt(vals[-1], ".4f") + " (partial)" if vals else "-",
                    str(r.summary.get("error") or "-"),
                ]
            )
        blocks += [
            Para(
                "Runs that did **not** finish: not results. Their last values are shown only "
                "to say where they stopped; their curves are dashed."
            ),
            Table(["run", "status", "last val loss", "error"], rows),
        ]
    series = [_curves(r, "step") for r in tr]
    img = ctx.plot(
        "loss_vs_step.png",
        lambda p: plots.loss_curves(series, "step", "step", p, ctx.palette),
        "training and validation loss against step",
        "Loss against step: lines = training loss, circles = validation loss.",
    )
    if img:
        blocks.append(img)
    x, xlabel = time_axis(tr)
    series_t = [_curves(r, x) for r in tr]
    img = ctx.plot(
        "loss_vs_time.png",
        lambda p: plots.loss_curves(series_t, x, xlabel, p, ctx.palette),
        "training and validation loss against time",
        f"Loss against {xlabel}.",
    )
    if img:
        blocks.append(img)
    return Section("Training runs", blocks, "training")
