"""The GRPO section: configuration, throughput, time split, reward and accuracy before/after.

Why: a GRPO run is judged by what it cost (seconds per step, where the step time went) and what
it bought (accuracy before and after on the same problems, with its uncertainty and the
protocol that scored it); runs that did not finish are listed apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Bullets, Para, Section, Table, fmt, fmt_int
from shoestring.report.kinds import RunInfo
from shoestring.report.measures import eval_cell, protocol_of
from shoestring.report.sections.common import SectionContext, config_table

__all__ = ["GRPO_KEY_FIELDS", "grpo_section"]


GRPO_KEY_FIELDS = (
    "model_name_or_path",
    "dataset",
    "learning_rate",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_completion_length",
    "max_steps",
    "lora_rank",
    "beta",
    "device",
    "dtype",
)


def grpo_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    gr = [r for r in runs if r.kind == "grpo"]
    if not gr:
        return None
    blocks: list[Any] = [
        Para("Configuration (**bold** = differs between runs):"),
        config_table(gr, GRPO_KEY_FIELDS),
    ]
    done = [r for r in gr if r.finished]
    if done:
        rows = []
        for r in done:
            s, sy = r.summary, r.summary.get("system") or {}
            split = s.get("time_split") or {}
            tot = sum(float(v or 0.0) for v in split.values())
            split_txt = (
                " / ".join(
                    f"{100 * float(split.get(k) or 0.0) / tot:.0f}%"
                    for k in ("generation", "scoring", "backward")
                )
                if tot
                else "-"
            )
            steps = s.get("steps")
            spm = 60.0 / s["seconds_per_step"] if s.get("seconds_per_step") else None
            rows.append(
                [
                    r.label,
                    f"{fmt_int(steps)} / {fmt_int(s.get('max_steps'))}",
                    fmt(s.get("train_seconds"), ",.1f"),
                    fmt(s.get("seconds_per_step"), ".2f"),
                    fmt(spm, ".2f"),
                    split_txt,
                    f"{fmt(sy.get('cpu_percent_mean'), '.0f')} / "
                    f"{fmt(sy.get('cpu_percent_peak'), '.0f')}",
                    fmt(sy.get("peak_rss_mb"), ".0f"),
                    fmt(s.get("final_reward_mean"), ".3f"),
                    protocol_of(s)[1],
                    eval_cell(s.get("eval_before")),
                    eval_cell(s.get("eval_after")),
                ]
            )
        blocks += [
            Para(
                "Measured: completion time (training), seconds per step and steps per minute "
                "(throughput), the split of step time into generation / scoring / backward, "
                "CPU (process share of all cores, mean / peak), peak resident memory, the final "
                "mean reward, and accuracy before and after (95% Wilson intervals) under the "
                "scoring protocol shown."
            ),
            Table(
                [
                    "run",
                    "steps",
                    "train s",
                    "s/step",
                    "steps/min",
                    "gen / score / backward",
                    "CPU % mean/peak",
                    "peak RSS MB",
                    "final reward",
                    "protocol",
                    "acc before",
                    "acc after",
                ],
                rows,
                ["l", "r", "r", "r", "r", "r", "r", "r", "r", "l", "l", "l"],
            ),
        ]
    paired = [
        f"**{r.label}**, before vs after (McNemar exact, same problems): "
        f"{r.summary['eval_mcnemar'].get('statement')}"
        for r in done
        if isinstance(r.summary.get("eval_mcnemar"), dict)
    ]
    if paired:
        blocks.append(Bullets(paired))
    not_done = [r for r in gr if not r.finished]
    if not_done:
        blocks += [
            Para("GRPO runs that did **not** finish (not results):"),
            Table(
                ["run", "status", "error"],
                [
                    [r.label, f"**{r.status_text()}**", str(r.summary.get("error") or "-")]
                    for r in not_done
                ],
            ),
        ]
    series = [
        {
            "label": r.label,
            "finished": r.finished,
            "status": r.status,
            "records": [m for m in r.metrics if not m.get("event")],
        }
        for r in gr
    ]
    img = ctx.plot(
        "grpo_rewards.png",
        lambda p: plots.grpo_curves(series, p, ctx.palette),
        "GRPO reward and accuracy per step",
        "Mean reward per step (band: +- std within the step's groups); dashed = not finished.",
    )
    if img:
        blocks.append(img)
    return Section("GRPO runs", blocks, "grpo")
