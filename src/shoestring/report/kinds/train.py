"""Training runs (``shoestring train``): configuration, measured results, loss curves, and the
rules that say whether two losses or two speeds compare at all.

Why the rules live here: a loss in nats per token compares only on the same text and tokenizer,
a speed only on the same machine, and a validation-loss gap means nothing until set against the
spread over seeds (Welch's t-test over repeated seeds; else a study's seed spread on the same
data; else a note that it is unknown). Hybrid runs are training runs too: in every table and rule.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoestring.report import parts, plots
from shoestring.report.blocks import Finding, Para, Section, Severity, Table, fmt, fmt_cpu, fmt_int
from shoestring.report.parts import Kind, SectionContext, of_kind
from shoestring.report.rules import SpeedItem, cap_findings
from shoestring.report.run import RunInfo, flatten
from shoestring.util.stats import format_p, mean_std, welch_t_test

__all__ = ["KIND", "TRAINING_KINDS", "time_axis", "train_record"]

#: Kinds whose loss curves, throughput and rules are those of a training run.
TRAINING_KINDS = ("train", "hybrid")
#: Config fields always shown for training runs (the ones a reader compares first).
TRAIN_KEY_FIELDS = (
    *("preset", "variant", "model.d_model", "model.n_layers", "model.n_heads", "model.d_ff"),
    *("model.vocab_size", "train.seq_len", "train.batch_size", "train.grad_accum"),
    *("train.max_steps", "train.lr", "train.trainer", "train.device", "train.dtype", "data.path"),
)
_SEED_KEYS = {"train.seed", "seed"}
#: What the comparable rule checks: data key -> (severity, what differs) ...
_COMPARABLE: dict[str, tuple[Severity, str]] = {
    "data": ("warning", "different data"),
    "vocab": ("warning", "different vocabularies"),
    "tokenizer": ("warning", "different tokenizers"),
    "seq_len": ("info", "different context lengths"),
    "steps": ("info", "different numbers of steps"),
    "val_sequences": ("info", "different validation sets"),
    "cpu": ("caution", "different CPUs"),
}
_TOKENS = "losses in nats per token of different tokenizers do not compare"
# ... and why it matters
_WHY = {
    "data": "their losses are on different text and do not compare",
    "vocab": _TOKENS,
    "tokenizer": _TOKENS,
    "seq_len": "validation loss is averaged over different context lengths",
    "steps": "losses are compared at different points of training",
    "val_sequences": "validation losses are means over different sequences",
    "cpu": "their speeds measure different machines",
}


def training_measures(run: RunInfo) -> dict[str, Any]:
    """The measured results of a training run, from its summary (None where not recorded)."""
    s, system, rt = run.summary, run.summary.get("system") or {}, run.summary.get("runtime") or {}
    own = ("train_seconds", "tokens_per_second", "samples_per_second", "final_val_loss")
    own += ("best_val_loss", "best_step", "final_train_loss", "steps", "max_steps")
    sys_keys = ("cpu_percent_mean", "cpu_percent_peak", "host_cpu_percent_mean", "peak_rss_mb")
    return {
        "wall_seconds": s.get("session_wall_seconds"),
        **{k: s.get(k) for k in own},
        **{k: system.get(k) for k in (*sys_keys, "cuda_peak_allocated_mb")},
        **{k: rt.get(k) for k in ("device", "dtype", "threads")},
        "n_params": s.get("n_params"),
    }


def time_axis(runs: Sequence[RunInfo]) -> tuple[str, str]:
    """``wall_seconds`` when every run logs it, else the training-step time every run logs."""
    recs = [m for r in runs for m in r.metrics if m.get("loss") is not None]
    if recs and all(m.get("wall_seconds") is not None for m in recs):
        return "wall_seconds", "wall time (s)"
    return "train_seconds", "training time (s; training steps only, evaluation excluded)"


def _curves(r: RunInfo, x: str) -> dict[str, Any]:
    """A run's training and validation records for :func:`plots.loss_curves` against ``x``."""
    recs = [m if m.get(x) is not None or m.get("step") != 0 else {**m, x: 0.0} for m in r.metrics]
    recs = [m for m in recs if not m.get("event")]
    train = [m for m in recs if m.get("loss") is not None]
    return r.series(train=train, val=[m for m in recs if m.get("val_loss") is not None])


def _result_row(r: RunInfo) -> list[str]:
    m = training_measures(r)
    best = fmt(m["best_val_loss"], ".4f")
    if m["best_step"] is not None and m["best_val_loss"] is not None:
        best += f" (step {m['best_step']})"
    mem = fmt(m["peak_rss_mb"], ".0f")
    if m["cuda_peak_allocated_mb"]:
        mem += f" (CUDA {m['cuda_peak_allocated_mb']:.0f})"
    rates = [fmt(m["tokens_per_second"], ",.0f"), fmt(m["samples_per_second"], ",.1f")]
    times = [fmt(m[k], ".1f") for k in ("wall_seconds", "train_seconds")]
    return [r.label, fmt_int(m["steps"]), *times, *rates, fmt_cpu(m), mem] + [
        fmt(m["final_val_loss"], ".4f"),
        best,
        f"{m['device'] or '-'} / {m['dtype'] or '-'}",
    ]


def training_sections(tr: list[RunInfo], ctx: SectionContext) -> list[Section]:
    params = [("parameters", lambda r: fmt_int(r.summary.get("n_params")))]
    blocks: list[Any] = [
        Para(
            "Configuration: the key fields, and every other field whose value differs between "
            "the runs (**bold** = differs)."
        ),
        parts.config_table(tr, TRAIN_KEY_FIELDS, params),
    ]
    if done := [r for r in tr if r.finished]:
        head = ["run", "steps", "wall s", "train s", "tokens/s", "samples/s", "CPU % mean/peak"]
        head += ["peak RSS MB", "final val loss", "best val loss", "device / dtype"]
        blocks += [
            Para(
                "Measured results of the finished runs. Wall = the whole process of the last "
                "session; tokens/s and samples/s = training-step time only (evaluation and "
                "checkpoints excluded); CPU = the process's share of all host cores, mean / "
                "peak; memory = peak resident set."
            ),
            Table(head, [_result_row(r) for r in done], "lrrrrrrrrrl"),
        ]
    blocks += parts.unfinished_blocks(
        tr,
        "Runs that did **not** finish: not results. Their last values are shown only to say "
        "where they stopped; their curves are dashed.",
        last_value=True,
    )
    series = [_curves(r, "step") for r in tr]
    blocks += ctx.plot(
        "loss_vs_step.png",
        lambda p: plots.loss_curves(series, "step", "step", p, ctx.palette),
        "training and validation loss against step",
        "Loss against step: lines = training loss, circles = validation loss.",
    )
    x, xlabel = time_axis(tr)
    series_t = [_curves(r, x) for r in tr]
    blocks += ctx.plot(
        "loss_vs_time.png",
        lambda p: plots.loss_curves(series_t, x, xlabel, p, ctx.palette),
        "training and validation loss against time",
        f"Loss against {xlabel}.",
    )
    return [Section("Training runs", blocks, "training")]


def train_record(r: RunInfo) -> dict[str, Any]:
    return {"measured": training_measures(r), "config": r.config}


def _speed(tr: list[RunInfo]) -> list[tuple[list[SpeedItem], str]]:
    done = [(r, r.summary) for r in tr if r.finished]
    rate, wall = "tokens_per_second", "session_wall_seconds"
    items = [SpeedItem(r.label, r.name_text, s.get(rate), "tokens/s", s.get(wall)) for r, s in done]
    return [(items, "training runs")]


# ----------------------------------------------------------------------------- rules


def data_key(r: RunInfo) -> dict[str, Any]:
    """What decides whether two training runs' losses and speeds compare."""
    d, c, host = r.summary.get("data") or {}, flatten(r.config), r.summary.get("host") or {}
    return {
        "data": d.get("path") or c.get("data.path"),
        "vocab": d.get("vocab_size") or c.get("model.vocab_size"),
        "tokenizer": d.get("tokenizer_sha256"),
        "seq_len": c.get("train.seq_len"),
        "steps": r.summary.get("max_steps") or c.get("train.max_steps"),
        "val_sequences": d.get("val_sequences"),
        "host": host.get("hostname"),
        "cpu": host.get("cpu"),
    }


def _comparable(tr: list[RunInfo]) -> list[Finding]:
    """Training runs on different data, tokenizers, lengths or hosts."""
    out, keys = [], {r.label: data_key(r) for r in tr}
    for key, (severity, what) in _COMPARABLE.items() if len(tr) > 1 else ():
        known = [r for r in tr if keys[r.label][key] is not None]
        if len(groups := parts.group_by(known, lambda r, key=key: str(keys[r.label][key]))) > 1:
            text = f"The training runs use {what} ({parts.groups_text(groups)}): {_WHY[key]}."
            labels = [r.label for r in tr]
            out.append(Finding("comparable", severity, text, labels, {key: list(groups)}))
    return out


def _study_seed_std(runs: list[RunInfo], data_path: Any) -> tuple[float, str] | None:
    """The median seed std of a study trained on the same data as the runs compared, if any:
    a seed spread measured on other data says nothing about these runs."""
    for r in of_kind(runs, "study") if data_path is not None else ():
        spec = r.config.get("spec") if isinstance(r.config.get("spec"), dict) else r.config
        sdata = spec.get("data") if isinstance(spec, dict) else None
        if not sdata or Path(str(sdata)).resolve() != Path(str(data_path)).resolve():
            continue
        rows = (r.result or {}).get("summary", [])
        stds = sorted(float(x["val_loss_std"]) for x in rows if x.get("val_loss_std") is not None)
        if stds:
            return stds[len(stds) // 2], f"the median seed std of study `{r.label}`, same data"
    return None


def _val_loss_noise(runs: list[RunInfo], tr: list[RunInfo]) -> list[Finding]:
    """Validation-loss differences against the spread over seeds, where it was measured."""
    tr = [r for r in tr if r.finished and r.summary.get("final_val_loss") is not None]
    if len(tr) < 2:
        return []
    # repeats of one configuration: the runs grouped by their config apart from the seed
    config = lambda r: {k: v for k, v in flatten(r.config).items() if k not in _SEED_KEYS}
    groups = parts.group_by(tr, lambda r: json.dumps(config(r), sort_keys=True, default=str))
    glist = list(groups.values())
    finals = lambda g: [float(x.summary["final_val_loss"]) for x in g]
    name = lambda g: ", ".join(f"`{x.label}`" for x in g)
    ref: tuple[float, str] | None = None
    if multi := [g for g in glist if len(g) >= 2]:
        sd = max(mean_std(finals(g))[1] or 0.0 for g in multi)
        ref = (sd, "the largest seed std among these runs' repeated configurations")
    else:
        ref = _study_seed_std(runs, data_key(tr[0])["data"])
    # the comparable rule already says runs on other data or tokenizers do not compare
    same = lambda a, b: all(data_key(a)[k] == data_key(b)[k] for k in ("data", "vocab"))
    pairs = [(a, b) for a, b in itertools.combinations(glist, 2) if same(a[0], b[0])]
    out: list[Finding] = []
    for ga, gb in pairs:
        va, vb = finals(ga), finals(gb)
        (ma, _), (mb, _) = mean_std(va), mean_std(vb)
        gap, labels = abs(ma - mb), [x.label for x in ga + gb]
        if (wt := welch_t_test(va, vb)) is not None:
            sig = wt.p < 0.05
            text = (
                f"final val loss {name(ga)} {ma:.4f} (n={len(va)}) vs {name(gb)} {mb:.4f} "
                f"(n={len(vb)}): gap {gap:.4f}, Welch t-test p={format_p(wt.p)} - "
                + ("a real difference over seeds." if sig else "within seed noise.")
            )
            sev = "info" if sig else "caution"
            out.append(Finding("noise", sev, text, labels, {"gap": gap, "p_value": wt.p}))
        elif ref is not None:
            std, where = ref
            within = gap < 2 * std
            text = (
                f"final val loss {name(ga)} {ma:.4f} vs {name(gb)} {mb:.4f}: gap {gap:.4f} is "
                f"{'less' if within else 'more'} than twice the seed std {std:.4f} ({where})"
                + (" - within noise." if within else ".")
            )
            sev = "caution" if within else "info"
            out.append(Finding("noise", sev, text, labels, {"gap": gap, "seed_std": std}))
    if ref is None and not multi and pairs:
        gaps = sorted(abs(finals(a)[0] - finals(b)[0]) for a, b in pairs)
        text = (
            "Each configuration ran with one seed, so the spread of the validation loss over "
            f"seeds is unknown: the gaps between runs ({gaps[0]:.4f} to {gaps[-1]:.4f}) cannot "
            "be told from seed noise. Repeat runs with other train.seed values to measure it."
        )
        out.append(Finding("noise", "info", text, [r.label for r in tr], {"gaps": gaps}))
    return cap_findings(out, "validation-loss")


def _findings(runs: list[RunInfo]) -> list[Finding]:
    tr = of_kind(runs, *TRAINING_KINDS)
    return _comparable(tr) + _val_loss_noise(runs, tr)


KIND = Kind(
    name="train",
    writer="`shoestring train` (summary.json kind 'train', trainer 'plain')",
    sections=training_sections,
    covers=("hybrid",),
    summary_kind="train",
    claims=lambda summary: summary.get("trainer") != "hybrid",
    record=train_record,
    findings=_findings,
    speed=_speed,
)
