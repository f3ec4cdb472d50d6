"""GRPO runs (``shoestring grpo``): configuration, throughput, time split, reward, and accuracy
before/after with whether its change is more than noise.

Why: a GRPO run is judged by what it cost (seconds per step and where they went) and what it
bought (accuracy before and after on the same problems, with its uncertainty and protocol). A
gain of a few problems out of 50 shows nothing, so the change is set against McNemar's exact
test where recorded, else against overlapping 95% Wilson intervals.
"""

from __future__ import annotations

from typing import Any

from shoestring.report import parts, plots
from shoestring.report.accuracy import eval_cell, eval_text, evals_overlap, protocol_of, valid_eval
from shoestring.report.blocks import Bullets, Finding, Para, Section, Table, fmt, fmt_cpu, fmt_int
from shoestring.report.parts import Kind, SectionContext
from shoestring.report.rules import SpeedItem
from shoestring.report.run import RunInfo

__all__ = ["KIND"]

GRPO_KEY_FIELDS = (
    *("model_name_or_path", "dataset", "learning_rate", "num_generations"),
    *("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length"),
    *("max_steps", "lora_rank", "beta", "device", "dtype"),
)
#: The summary's headline numbers, for report.json.
RECORD_KEYS = ("steps", "max_steps", "train_seconds", "seconds_per_step", "time_split")
RECORD_KEYS += ("final_reward_mean", "eval_before", "eval_after", "system")


def _result_row(r: RunInfo) -> list[str]:
    s, sy = r.summary, r.summary.get("system") or {}
    split = s.get("time_split") or {}
    tot = sum(float(v or 0.0) for v in split.values())
    parts = ("generation", "scoring", "backward")
    split_txt = " / ".join(f"{100 * float(split.get(k) or 0.0) / tot:.0f}%" for k in parts)
    spm = 60.0 / s["seconds_per_step"] if s.get("seconds_per_step") else None
    steps = f"{fmt_int(s.get('steps'))} / {fmt_int(s.get('max_steps'))}"
    times = [fmt(s.get("train_seconds"), ",.1f"), fmt(s.get("seconds_per_step"), ".2f")]
    return [r.label, steps, *times, fmt(spm, ".2f"), split_txt if tot else "-", fmt_cpu(sy)] + [
        fmt(sy.get("peak_rss_mb"), ".0f"),
        fmt(s.get("final_reward_mean"), ".3f"),
        protocol_of(s)[1],
        *(eval_cell(s.get(k)) for k in ("eval_before", "eval_after")),
    ]


def grpo_sections(gr: list[RunInfo], ctx: SectionContext) -> list[Section]:
    blocks: list[Any] = [
        Para("Configuration (**bold** = differs between runs):"),
        parts.config_table(gr, GRPO_KEY_FIELDS),
    ]
    done = [r for r in gr if r.finished]
    if done:
        head = ["run", "steps", "train s", "s/step", "steps/min", "gen / score / backward"]
        head += ["CPU % mean/peak", "peak RSS MB", "final reward", "protocol", "acc before"]
        blocks += [
            Para(
                "Measured: completion time (training), seconds per step and steps per minute "
                "(throughput), the split of step time into generation / scoring / backward, "
                "CPU (process share of all cores, mean / peak), peak resident memory, the final "
                "mean reward, and accuracy before and after (95% Wilson intervals) under the "
                "scoring protocol shown."
            ),
            Table([*head, "acc after"], [_result_row(r) for r in done], "lrrrrrrrrlll"),
        ]
    if paired := [
        f"**{r.label}**, before vs after (McNemar exact, same problems): "
        f"{r.summary['eval_mcnemar'].get('statement')}"
        for r in done
        if isinstance(r.summary.get("eval_mcnemar"), dict)
    ]:
        blocks.append(Bullets(paired))
    blocks += parts.unfinished_blocks(gr, "GRPO runs that did **not** finish (not results):")
    curves = [r.series(records=[m for m in r.metrics if not m.get("event")]) for r in gr]
    blocks += ctx.plot(
        "grpo_rewards.png",
        lambda p: plots.grpo_curves(curves, p, ctx.palette),
        "GRPO reward and accuracy per step",
        "Mean reward per step (band: +- std within the step's groups); dashed = not finished.",
    )
    return [Section("GRPO runs", blocks, "grpo")]


def _noise(r: RunInfo) -> Finding | None:
    """Accuracy before vs after against its uncertainty."""
    bf, af = r.summary.get("eval_before"), r.summary.get("eval_after")
    if (
        not (valid_eval(bf) and valid_eval(af))
        or bf["correct"] * af["n"] == af["correct"] * bf["n"]
    ):
        return None
    head = f"GRPO `{r.label}`: accuracy before {eval_text(bf)}, after {eval_text(af)}"
    mc = r.summary.get("eval_mcnemar") or {}
    if mc.get("p_value") is not None:
        within = float(mc["p_value"]) >= 0.05
        text = f"{head}: McNemar exact test on the same problems: {mc.get('statement')}"
        text += " - the change is within noise." if within else "."
    else:
        within = evals_overlap(bf, af)
        text = f"{head}: the 95% intervals " + (
            "overlap - the change is within noise." if within else "do not overlap."
        )
    nums = {"before": bf, "after": af, "mcnemar": mc or None}
    return Finding("noise", "caution" if within else "info", text, [r.label], nums)


def _findings(runs: list[RunInfo]) -> list[Finding]:
    """Runs on different datasets (rewards on different tasks), and each run's noise check."""
    gr, out = parts.of_kind(runs, "grpo"), []
    if len(datasets := parts.group_by(gr, lambda r: str(r.config.get("dataset")))) > 1:
        text = (
            f"The GRPO runs train on different datasets ({parts.groups_text(datasets)}): their "
            "rewards are not on the same task."
        )
        out.append(Finding("comparable", "warning", text, [r.label for r in gr], {}))
    return out + [f for r in gr if (f := _noise(r)) is not None]


def _speed(runs: list[RunInfo]) -> list[tuple[list[SpeedItem], str]]:
    def item(r: RunInfo) -> SpeedItem:
        sps, wall = r.summary.get("seconds_per_step"), r.summary.get("train_seconds")
        rate = (1.0 / sps) * 60 if sps else None
        return SpeedItem(r.label, r.name_text, rate, "steps/min", wall, "training time")

    return [([item(r) for r in runs if r.finished], "GRPO runs")]


def _accuracies(runs: list[RunInfo]) -> list[tuple[str, str | None, str]]:
    return [
        (r.label, *protocol_of(r.summary))
        for r in runs
        if valid_eval(r.summary.get("eval_before")) or valid_eval(r.summary.get("eval_after"))
    ]


KIND = Kind(
    name="grpo",
    writer="`shoestring grpo` (summary.json kind 'grpo')",
    sections=grpo_sections,
    summary_kind="grpo",
    record=lambda r: {
        "measured": {k: r.summary.get(k) for k in RECORD_KEYS},
        "config": r.config,
        "protocol_key": protocol_of(r.summary)[0],
    },
    findings=_findings,
    speed=_speed,
    accuracies=_accuracies,
)
