"""The report's sections, one builder per kind of run directory, all from the same parts.

Why one module of builders over the loaded runs (:class:`~shoestring.runs.kinds.RunInfo`):
each builder turns its kind's files into tables, paragraphs and plots of the intermediate
report (:mod:`shoestring.runs.report`), so a new kind adds one builder and is rendered to
Markdown, HTML and JSON for free. A run that did not finish is never put in a results table:
it goes to a table of its own that says what state it is in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoestring.eval.stats import format_p, wilson_interval
from shoestring.runs import plots
from shoestring.runs.findings import bench_models, bench_pair, training_measures
from shoestring.runs.kinds import TRAINING_KINDS, RunInfo, flatten, last_step
from shoestring.runs.report import Bullets, Image, Para, Section, Table, fmt, fmt_int

__all__ = ["SectionContext", "build_sections", "config_table"]

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


class SectionContext:
    """What every builder shares: where PNGs go (None: no plots) and the colour of each run."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.palette = plots.Palette()

    def plot(
        self, name: str, draw: Callable[[Path], str | None], alt: str, caption: str = ""
    ) -> Image | None:
        if self.out_dir is None:
            return None
        made = draw(self.out_dir / name)
        return Image(made, alt, caption) if made else None


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def config_table(
    runs: Sequence[RunInfo],
    key_fields: Sequence[str],
    extra: Sequence[tuple[str, Callable[[RunInfo], Any]]] = (),
) -> Table:
    """Fields (rows) by runs (columns): every field whose value differs, plus ``key_fields``.

    A differing field is marked bold, so the eye goes to what changed between the runs.
    """
    flats = [flatten(r.config) for r in runs]
    keys: list[str] = [k for k in key_fields if any(k in f for f in flats)]
    seen = set(keys)
    for f in flats:
        for k in f:
            if k in seen:
                continue
            vals = {json.dumps(fl.get(k), sort_keys=True, default=str) for fl in flats}
            if len(vals) > 1:
                keys.append(k)
                seen.add(k)
    rows = []
    for k in keys:
        vals = [_cell(f.get(k)) for f in flats]
        differs = len(set(vals)) > 1
        rows.append([f"**{k}**" if differs else k, *vals])
    for name, get in extra:
        vals = [_cell(get(r)) for r in runs]
        rows.append([f"**{name}**" if len(set(vals)) > 1 else name, *vals])
    return Table(["field", *[r.label for r in runs]], rows, ["l"] + ["r"] * len(runs))


def _status_cell(r: RunInfo) -> str:
    return r.status if r.finished else f"**{r.status_text()}**"


def overview_section(runs: Sequence[RunInfo]) -> Section:
    rows = [[r.label, r.kind, _status_cell(r), f"`{r.path}`"] for r in runs]
    return Section(
        "Runs compared",
        [
            Table(["run", "kind", "status", "directory"], rows),
        ],
        "runs",
    )


# ----------------------------------------------------------------------------- training runs


def _time_axis(runs: Sequence[RunInfo]) -> tuple[str, str]:
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
    x, xlabel = _time_axis(tr)
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


def hybrid_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    hy = [r for r in runs if r.kind == "hybrid"]
    if not hy:
        return None
    blocks: list[Any] = []
    shares = []
    for r in hy:
        h = r.summary.get("hybrid") or {}
        phases = h.get("phases") or {}
        if not phases:  # still running: count the phases of the logged steps
            for m in r.metrics:
                if m.get("phase") and m.get("loss") is not None:
                    p = phases.setdefault(m["phase"], {"steps": 0, "seconds": None})
                    p["steps"] += 1
        tot_steps = sum(int(p.get("steps") or 0) for p in phases.values()) or 1
        tot_sec = sum(float(p.get("seconds") or 0.0) for p in phases.values())
        rows = []
        for name in [p for p in plots.PHASE_COLORS if p in phases] + sorted(
            set(phases) - set(plots.PHASE_COLORS)
        ):
            p = phases[name]
            sec = p.get("seconds")
            rows.append(
                [
                    name,
                    fmt_int(p.get("steps")),
                    f"{100 * int(p.get('steps') or 0) / tot_steps:.1f}%",
                    fmt(sec, ".1f"),
                    f"{100 * float(sec) / tot_sec:.1f}%" if sec is not None and tot_sec else "-",
                ]
            )
        state = "" if r.finished else f" - **{r.status_text()}**, not a result"
        blocks.append(
            Table(
                ["phase", "steps", "% steps", "seconds", "% time"],
                rows,
                ["l", "r", "r", "r", "r"],
                caption=f"**{r.label}** (predictor `{h.get('predictor', '?')}`)" + state,
            )
        )
        divs = h.get("divergences") or []
        blocks.append(
            Bullets(
                [
                    f"skip rate {fmt(h.get('skip_rate'), '.3f')}; backward passes skipped "
                    f"{fmt_int(h.get('backward_skipped'))}, forward skipped "
                    f"{fmt_int(h.get('forward_skipped'))}; "
                    f"rollbacks {fmt_int(h.get('rollbacks'))}; "
                    f"divergences {len(divs)}"
                    + (
                        " ("
                        + "; ".join(f"step {d.get('step')}: {d.get('reason')}" for d in divs[:5])
                        + ")"
                        if divs
                        else ""
                    ),
                    "mean cosine of predicted vs true gradient "
                    f"{fmt(h.get('pred_cosine_mean'), '.3f')}; "
                    f"wall {fmt(h.get('wall_seconds'), '.1f')} s",
                ]
            )
        )
        if any(p.get("seconds") is not None for p in phases.values()):
            shares.append((r.label, {k: float(v.get("seconds") or 0.0) for k, v in phases.items()}))
        x, xlabel = _time_axis([r])
        img = ctx.plot(
            f"hybrid_phases_{_safe(r.label)}.png",
            lambda p, r=r, x=x, xlabel=xlabel: plots.phase_loss_plot(
                [m for m in r.metrics if not m.get("event")],
                x,
                xlabel,
                f"{r.label}: training loss by phase",
                p,
            ),
            f"training loss against time coloured by phase for {r.label}",
        )
        if img:
            blocks.append(img)
    if shares:
        img = ctx.plot(
            "hybrid_phase_time.png",
            lambda p: plots.phase_share_plot(shares, p, "seconds in each phase"),
            "time spent in each phase per hybrid run",
        )
        if img:
            blocks.append(img)
    return Section("Hybrid training: phases", blocks, "hybrid")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]


def _rows_table(
    rows: Sequence[dict[str, Any]],
    prefer: Sequence[str] = (),
    max_cols: int = 12,
    caption: str = "",
) -> Table:
    """A table of dict rows: the preferred columns first, then other scalar columns."""
    cols = [c for c in prefer if any(c in r for r in rows)]
    for r in rows:
        for k, v in r.items():
            if k not in cols and not isinstance(v, (dict, list)) and len(cols) < max_cols:
                cols.append(k)
    body = [[_cell(r.get(c)) for c in cols] for r in rows]
    align = [
        "r" if all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) else "l"
        for c in cols
    ]
    return Table(cols, body, align, caption)


def ci_text(v: Any, digits: int = 3) -> str:
    """A ``{"mean", "ci_low", "ci_high", "n", "missing"}`` value as ``mean [lo, hi] (n=..)``."""
    if not isinstance(v, dict):
        return _cell(v)
    if v.get("mean") is None:
        miss = v.get("missing", 0)
        return f"not reached ({miss}/{miss + v.get('n', 0)})" if miss else "-"
    out = f"{v['mean']:.{digits}f}"
    if v.get("ci_low") is not None and v.get("ci_high") is not None:
        out += f" [{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]"
    out += f" (n={v.get('n')})"
    if v.get("missing"):
        out += f", {v['missing']} not reached"
    return out


HB_COLUMNS = (
    ("steps", "steps", 0),
    ("train_seconds", "train s", 1),
    ("final_val_loss", "final val loss", 4),
    ("time_to_target", "s to target loss", 1),
    ("speedup_vs_baseline", "speed-up vs baseline", 3),
    ("val_at_equal_time", "val loss at equal time", 4),
    ("val_at_equal_tokens", "val loss at equal tokens", 4),
)


def hybrid_benchmark_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    hb = [r for r in runs if r.kind == "hybrid_benchmark"]
    if not hb:
        return None
    blocks: list[Any] = [
        Para(
            "Means over seeds with 95% t-intervals (a single seed has no interval). The arms' "
            "run directories are also in the training and hybrid sections."
        )
    ]
    for r in hb:
        data = r.extra.get("benchmark", {})
        arms = data.get("arms") or {}
        seeds = sorted({s for a in arms.values() if isinstance(a, dict) for s in a})
        blocks.append(
            Para(
                f"**{r.label}**: arms "
                + ", ".join(f"`{a}`" for a in arms)
                + f"; seeds {', '.join(seeds) or '-'}; "
                f"wall {fmt(data.get('wall_seconds'), ',.0f')} s"
            )
        )
        table = data.get("table")
        if isinstance(table, list) and table and isinstance(table[0], dict):
            cols = [c for c in HB_COLUMNS if any(c[0] in row for row in table)]
            rows = [
                [str(row.get("arm", "?"))] + [ci_text(row.get(k), d) for k, _, d in cols]
                for row in table
            ]
            blocks.append(Table(["arm"] + [c[1] for c in cols], rows, ["l"] + ["r"] * len(cols)))
        phases = data.get("hybrid_time_by_phase") or {}
        if isinstance(phases, dict) and phases:
            rows = [
                [
                    name,
                    fmt_int(v.get("steps")),
                    fmt(v.get("seconds"), ",.1f"),
                    fmt(v.get("seconds_per_step"), ".4f"),
                    fmt(100 * v["share_of_time"], ".1f", "%")
                    if v.get("share_of_time") is not None
                    else "-",
                ]
                for name, v in phases.items()
                if isinstance(v, dict)
            ]
            blocks.append(
                Table(
                    ["hybrid phase", "steps", "seconds", "s/step", "share of time"],
                    rows,
                    ["l", "r", "r", "r", "r"],
                    caption="Where the hybrid arm's training time went (all seeds); baseline "
                    f"{fmt(data.get('baseline_seconds_per_step'), '.4f')} s/step; skip rate "
                    f"{ci_text(data.get('skip_rate'))}.",
                )
            )
    return Section("Hybrid vs baseline benchmark", blocks, "hybrid-benchmark")


# ----------------------------------------------------------------------------- bench


def bench_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    benches = [r for r in runs if r.kind == "bench"]
    if not benches:
        return None
    blocks: list[Any] = [
        Para(
            "Accuracy with its 95% Wilson interval and n (the primary extractor of each model's "
            "protocol); tokens/s = generated tokens / generation wall time."
        )
    ]
    for r in benches:
        data = r.summary.get("data") or {}
        rows = []
        for m in r.summary.get("models", []):
            mm = m.get("metrics") or {}
            acc = (mm.get("accuracy") or {}).get(m.get("primary_extractor"), {})
            params = m.get("n_params")
            rows.append(
                [
                    m.get("label", "?"),
                    f"{m.get('protocol')} ({m.get('primary_extractor')})",
                    acc.get("text", "-") + ("" if m.get("complete", True) else " INCOMPLETE"),
                    fmt(mm.get("tokens_per_second"), ",.1f"),
                    fmt(mm.get("seconds_per_problem"), ".2f"),
                    fmt(mm.get("peak_rss_mb"), ".0f"),
                    "-" if params is None else f"{params / 1e6:.2f}M",
                    f"{m.get('device', '-')} / {m.get('dtype', '-')}",
                ]
            )
        state = "" if r.finished else f" - **{r.status_text()}**: partial, not a result"
        blocks.append(
            Table(
                [
                    "model",
                    "protocol",
                    "accuracy [95% CI]",
                    "tokens/s",
                    "s/problem",
                    "peak RSS MB",
                    "params",
                    "device / dtype",
                ],
                rows,
                ["l", "l", "l", "r", "r", "r", "r", "l"],
                caption=f"**{r.label}**: `{data.get('source')}`, "
                f"{data.get('n_selected')} problems{state}",
            )
        )
        comps = r.summary.get("comparisons") or []
        if comps:
            blocks.append(Bullets([f"**{c['a']} vs {c['b']}**: {c['statement']}" for c in comps]))
    models = bench_models(list(runs))
    if len({m.bench for m in models}) > 1:
        items = []
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                if a.bench == b.bench:
                    continue
                res = bench_pair(a, b)
                if res is None:
                    continue
                if res["paired"]:
                    items.append(
                        f"**{a.label} vs {b.label}**: {res['statement']} (McNemar exact, "
                        "same problems)"
                    )
                else:
                    items.append(
                        f"**{a.label} vs {b.label}**: no common per-problem results; "
                        "95% intervals " + ("overlap" if res["overlap"] else "do not overlap")
                    )
        if items:
            blocks += [Para("Across bench directories:"), Bullets(items)]
    rows_plot = []
    for m in models:
        if m.n:
            lo, hi = wilson_interval(m.correct, m.n)
            rows_plot.append(
                {
                    "label": m.label,
                    "accuracy": m.correct / m.n,
                    "lo": lo,
                    "hi": hi,
                    "color": ctx.palette(m.label),
                }
            )
    img = ctx.plot(
        "bench_accuracy.png",
        lambda p: plots.accuracy_intervals(rows_plot, "accuracy (%), 95% Wilson interval", p),
        "benchmark accuracies with 95% intervals",
    )
    if img:
        blocks.append(img)
    return Section("Benchmarks (GSM8K)", blocks, "bench")


# ----------------------------------------------------------------------------- GRPO


def _eval_cell(e: Any) -> str:
    if not isinstance(e, dict) or not e.get("n"):
        return "-"
    k, n = int(e["correct"]), int(e["n"])
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


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
                    _eval_cell(s.get("eval_before")),
                    _eval_cell(s.get("eval_after")),
                ]
            )
        blocks += [
            Para(
                "Measured: completion time (training), seconds per step and steps per minute "
                "(throughput), the split of step time into generation / scoring / backward, "
                "CPU (process share of all cores, mean / peak), peak resident memory, the final "
                "mean reward and accuracy before and after (95% Wilson intervals)."
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
                    "acc before",
                    "acc after",
                ],
                rows,
                ["l", "r", "r", "r", "r", "r", "r", "r", "r", "l", "l"],
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


# ----------------------------------------------------------------------------- progressive


def progressive_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    pr = [r for r in runs if r.kind == "progressive"]
    if not pr:
        return None
    blocks: list[Any] = []
    for r in pr:
        s = r.summary
        rows = [["(base model)", "-", "-", "-", _eval_cell(s.get("base_eval")), "-", "-", "-"]]
        plot_rows = []
        be = s.get("base_eval")
        if isinstance(be, dict) and be.get("n"):
            lo, hi = wilson_interval(int(be["correct"]), int(be["n"]))
            plot_rows.append(
                {
                    "label": "base",
                    "accuracy": be["correct"] / be["n"],
                    "lo": lo,
                    "hi": hi,
                    "color": "#7f7f7f",
                }
            )
        colors = {
            "accepted": "#2ca02c",
            "rolled_back": "#d62728",
            "retried": "#ff7f0e",
            "stopped": "#7f7f7f",
            "failed": "#d62728",
        }
        for st in s.get("stages", []):
            ev = st.get("eval")
            rows.append(
                [
                    str(st.get("name")),
                    str(st.get("status")),
                    fmt_int(st.get("attempt")),
                    _cell(st.get("learning_rate")),
                    _eval_cell(ev),
                    fmt(st.get("best_so_far"), ".3f"),
                    format_p(float(st["p_vs_start"])) if st.get("p_vs_start") is not None else "-",
                    fmt(st.get("seconds"), ",.1f"),
                ]
            )
            if isinstance(ev, dict) and ev.get("n"):
                lo, hi = wilson_interval(int(ev["correct"]), int(ev["n"]))
                plot_rows.append(
                    {
                        "label": f"{st.get('name')} #{st.get('attempt', 1)} ({st.get('status')})",
                        "accuracy": ev["correct"] / ev["n"],
                        "lo": lo,
                        "hi": hi,
                        "color": colors.get(str(st.get("status")), "#1f77b4"),
                    }
                )
        state = "" if r.finished else f" - **{r.status_text()}**, not a result"
        blocks.append(
            Table(
                [
                    "stage",
                    "status",
                    "attempt",
                    "lr",
                    "accuracy [95% CI]",
                    "best so far",
                    "McNemar p vs start",
                    "seconds",
                ],
                rows,
                ["l", "l", "r", "r", "l", "r", "r", "r"],
                caption=f"**{r.label}**: rollbacks {fmt_int(s.get('rollbacks'))}; "
                f"best model `{s.get('best_model_dir', '-')}`{state}",
            )
        )
        img = ctx.plot(
            f"progressive_{_safe(r.label)}.png",
            lambda p, rows=plot_rows, r=r: plots.accuracy_intervals(
                rows, "accuracy (%), 95% Wilson interval", p, f"{r.label}: accuracy per stage"
            ),
            f"accuracy per stage of {r.label}",
        )
        if img:
            blocks.append(img)
    return Section("Progressive training: per-stage accuracy", blocks, "progressive")


# ----------------------------------------------------------------------------- study


def study_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    st = [r for r in runs if r.kind == "study"]
    if not st:
        return None
    blocks: list[Any] = []
    for r in st:
        res = r.extra.get("results") or {}
        summ = res.get("summary") or []
        trials = res.get("trials") or []
        counts: dict[str, int] = {}
        for t in trials:
            counts[str(t.get("status"))] = counts.get(str(t.get("status")), 0) + 1
        state = "" if r.finished else f" - **{r.status_text()}**: partial"
        blocks.append(
            Para(
                f"**{r.label}**: {len(trials)} trials ("
                + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                + f"){state}."
            )
        )
        rows = []
        plot_rows = []
        for row in summ:
            mean, std = row.get("val_loss_mean"), row.get("val_loss_std")
            p = row.get("p_vs_baseline")
            rows.append(
                [
                    str(row.get("size")),
                    str(row.get("variant")),
                    fmt_int(row.get("n")),
                    (fmt(mean, ".4f") + (f" +- {std:.4f}" if std is not None else " (one seed)"))
                    if mean is not None
                    else "-",
                    _cell(row.get("rank")),
                    format_p(float(p)) if p is not None else str(row.get("note") or "-"),
                    fmt_int(row.get("params")),
                    fmt(row.get("tokens_per_second_mean"), ",.0f"),
                ]
            )
            plot_rows.append(
                {"label": f"{row.get('size')}/{row.get('variant')}", "mean": mean, "std": std}
            )
        if rows:
            blocks.append(
                Table(
                    [
                        "size",
                        "variant",
                        "seeds",
                        "val loss mean +- std",
                        "rank",
                        "p vs baseline",
                        "params",
                        "tokens/s mean",
                    ],
                    rows,
                    ["l", "l", "r", "r", "r", "r", "r", "r"],
                )
            )
        img = ctx.plot(
            f"study_{_safe(r.label)}.png",
            lambda p, rows=plot_rows, r=r: plots.study_plot(rows, p, r.label),
            f"validation loss per configuration of {r.label}",
        )
        if img:
            blocks.append(img)
    return Section("Studies", blocks, "study")


# ----------------------------------------------------------------------------- analysis


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _mb(b: Any) -> str:
    return "-" if b is None else f"{float(b) / 2**20:,.1f}"


def _m(n: Any) -> str:
    return "-" if n is None else f"{float(n) / 1e6:.2f}M"


def analysis_section(runs: Sequence[RunInfo], ctx: SectionContext) -> Section | None:
    an = [r for r in runs if r.kind == "analysis"]
    if not an:
        return None
    blocks: list[Any] = []
    for r in an:
        data = r.extra.get("analysis") or {}
        host = data.get("host") or {}
        cpu = host.get("cpu") if isinstance(host.get("cpu"), dict) else {}
        mm = host.get("matmul_gflops") or {}
        caches = host.get("caches") or {}
        blocks.append(
            Para(
                f"**{r.label}** (status {_status_cell(r)}): host {cpu.get('model', '-')} "
                f"({cpu.get('physical_cores', '-')} cores), measured matmul peak fp32 "
                f"{fmt(mm.get('fp32'), ',.0f')} / bf16 {fmt(mm.get('bf16'), ',.0f')} GFLOP/s, "
                f"caches L1d {fmt_int(caches.get('L1d'))} B, L2 {fmt_int(caches.get('L2'))} B, "
                f"L3 {fmt_int(caches.get('L3'))} B."
            )
        )
        rows = []
        for c in data.get("configs") or []:
            if not isinstance(c, dict):
                continue
            rows.append(
                [
                    str(c.get("label", "?")),
                    _m(_dig(c, "params", "total")),
                    fmt(_dig(c, "flops", "train_per_token"), ",.0f"),
                    _mb(_dig(c, "memory", "total_bytes")),
                    _mb(_dig(c, "memory", "peak_rss_bytes")),
                    fmt(c.get("tokens_per_second"), ",.0f"),
                    fmt(c.get("mfu"), ".1%") if c.get("mfu") is not None else "-",
                    fmt(c.get("projected_tokens_per_second"), ",.0f"),
                    fmt(c.get("measured_over_projected"), ".2f"),
                ]
            )
        if rows:
            blocks.append(
                Table(
                    [
                        "config",
                        "params",
                        "train FLOP/token",
                        "memory estimate MB",
                        "peak RSS MB",
                        "tokens/s (measured)",
                        "MFU",
                        "tokens/s (projected)",
                        "measured / projected",
                    ],
                    rows,
                    ["l", "r", "r", "r", "r", "r", "r", "r", "r"],
                )
            )
    return Section("Analyses", blocks, "analysis")


BUILDERS = (
    training_section,
    hybrid_section,
    hybrid_benchmark_section,
    bench_section,
    grpo_section,
    progressive_section,
    study_section,
    analysis_section,
)


def build_sections(runs: Sequence[RunInfo], ctx: SectionContext) -> list[Section]:
    out = [overview_section(runs)]
    for b in BUILDERS:
        s = b(runs, ctx)
        if s is not None:
            out.append(s)
    return out


def run_record(r: RunInfo) -> dict[str, Any]:
    """One run for ``--format json``: identity, status, and its headline numbers."""
    rec: dict[str, Any] = {
        "label": r.label,
        "kind": r.kind,
        "path": str(r.path),
        "status": r.status,
        "status_text": r.status_text(),
        "is_result": r.finished,
        "last_step": last_step(r),
    }
    if r.kind in TRAINING_KINDS:
        rec["measured"] = training_measures(r)
        rec["config"] = r.config
    elif r.kind == "bench":
        rec["models"] = [
            {
                "label": m.get("label"),
                "accuracy": (m.get("metrics") or {})
                .get("accuracy", {})
                .get(m.get("primary_extractor")),
                "tokens_per_second": (m.get("metrics") or {}).get("tokens_per_second"),
            }
            for m in r.summary.get("models", [])
        ]
        rec["comparisons"] = r.summary.get("comparisons", [])
    elif r.kind == "grpo":
        keys = (
            "steps",
            "max_steps",
            "train_seconds",
            "seconds_per_step",
            "time_split",
            "final_reward_mean",
            "eval_before",
            "eval_after",
            "system",
        )
        rec["measured"] = {k: r.summary.get(k) for k in keys}
        rec["config"] = r.config
    elif r.kind == "progressive":
        rec["base_eval"] = r.summary.get("base_eval")
        rec["stages"] = r.summary.get("stages", [])
    elif r.kind == "study":
        rec["summary"] = (r.extra.get("results") or {}).get("summary", [])
    elif r.kind == "hybrid_benchmark":
        rec["benchmark"] = r.extra.get("benchmark")
    if r.kind == "hybrid":
        rec["hybrid"] = r.summary.get("hybrid")
    return rec
