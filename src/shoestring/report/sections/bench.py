"""The benchmark section: each bench directory's models, accuracies, paired tests, examples.

Why: it is ``bench``'s own report.md as well as a part of every comparison, so it shows
everything bench's hand-written report showed - the comparison table, accuracy by extractor,
the paired McNemar tests, and correct and incorrect responses per model - and, across bench
directories, McNemar's test on the problems both scored. Accuracies are shown with the protocol
that scored them; pairs scored under different protocols are marked, not tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Bullets, Code, Para, Section, Table, fmt, fmt_millions
from shoestring.report.kinds import RunInfo
from shoestring.report.measures import (
    BenchModel,
    bench_models,
    bench_pair,
    protocol_label,
    protocol_of,
)
from shoestring.report.sections.common import SectionContext, safe_name
from shoestring.util.stats import wilson_interval

__all__ = ["bench_section"]


#: Correct and incorrect responses shown per model when the config does not say (bench's default).
DEFAULT_EXAMPLES = 2


def _load_note(system: dict[str, Any]) -> str:
    """How busy the host was: timings from a shared, busy machine are not comparable."""
    host, own = system.get("host_cpu_percent_mean"), system.get("cpu_percent_mean")
    if host is None:
        return "Host CPU use was not sampled."
    note = (
        f"Host CPU use during the run: {host:.0f}% of all cores (this process: {fmt(own, '.0f')}%)."
    )
    if own is not None and host - own > 25:
        note += (
            " Other processes used the CPU too, so the speed figures are lower than this "
            "host can do and only comparable with runs under the same load."
        )
    return note


def _setup_text(r: RunInfo) -> str:
    """Data subset, decoding and host of one bench directory, in one paragraph."""
    s = r.summary
    data, runtime = s.get("data") or {}, s.get("runtime") or {}
    if data.get("limit") is None:
        subset = "all problems"
    elif data.get("subset_seed") is None:
        subset = f"limit {data['limit']}, first N in file order"
    else:
        subset = f"limit {data['limit']}, subset seed {data['subset_seed']}"
    skipped = data.get("n_skipped_lines", len(data.get("skipped_lines") or []))
    return (
        f"Status **{r.status_text()}**. Data: `{data.get('source')}` "
        f"({data.get('n_selected')} problems: {subset}; {skipped} "
        "malformed line(s) skipped). Greedy decoding, at most "
        f"{(s.get('settings') or {}).get('max_new_tokens', '-')} new tokens. Host: "
        f"{(s.get('host') or {}).get('cpu', '?')}, device {runtime.get('device', '-')}, "
        f"{runtime.get('threads', '-')} threads. " + _load_note(s.get("system") or {})
    )


def _model_row(m: dict[str, Any], shown_protocol: str) -> list[str]:
    """One model of a bench directory as a row of the comparison table."""
    mm = m.get("metrics") or {}
    acc = (mm.get("accuracy") or {}).get(m.get("primary_extractor"), {})
    mem = fmt(mm.get("peak_rss_mb"), ".0f")
    if mm.get("rss_before_load_mb") is not None:
        mem += f" ({mm['rss_before_load_mb']:.1f})"
    if mm.get("cuda_peak_allocated_mb"):
        mem += f" (CUDA {mm['cuda_peak_allocated_mb']:.0f})"
    return [
        m.get("label", "?"),
        f"{shown_protocol} ({m.get('primary_extractor')})",
        acc.get("text", "-") + ("" if m.get("complete", True) else " INCOMPLETE"),
        fmt(mm.get("tokens_per_second"), ",.1f"),
        fmt(mm.get("seconds_per_problem"), ".2f"),
        fmt(mm.get("load_seconds"), ".2f"),
        mem,
        fmt_millions(m.get("n_params")),
        f"{m.get('device', '-')} / {m.get('dtype', '-')}",
    ]


def _extractor_table(models: list[dict[str, Any]]) -> Table:
    """Every extractor's accuracy per model (the primary one decides; the others are context)."""
    names: list[str] = []
    for m in models:
        names += [e for e in (m.get("metrics") or {}).get("accuracy") or {} if e not in names]
    rows = [
        [m.get("label", "?")]
        + [
            ((m.get("metrics") or {}).get("accuracy") or {}).get(e, {}).get("text", "-")
            for e in names
        ]
        for m in models
    ]
    return Table(["model", *names], rows, caption="Accuracy by extractor:")


def _comparison_items(r: RunInfo, protocols: dict[str, tuple[str | None, str]]) -> list[str]:
    """bench's own paired tests; a pair scored under different protocols is marked, not read."""
    items = []
    for c in r.summary.get("comparisons") or []:
        (ka, sa), (kb, sb) = protocols.get(c["a"], (None, "-")), protocols.get(c["b"], (None, "-"))
        how = f" ({c['extractor_a']} vs {c['extractor_b']})" if c.get("extractor_a") else ""
        if ka != kb:
            items.append(
                f"**{c['a']} vs {c['b']}**{how}: scored under different protocols "
                f"({protocol_label(ka, sa)} vs {protocol_label(kb, sb)}), "
                f"so not comparable; the test ({c['statement']}) is not evidence either way."
            )
        else:
            items.append(f"**{c['a']} vs {c['b']}**{how}: {c['statement']}.")
    return items


def _examples(r: RunInfo, m: dict[str, Any], count: int) -> Section | None:
    """The first ``count`` correct and incorrect responses of one model, verbatim."""
    by_idx = (r.extra.get("problems") or {}).get(m.get("label"), {})
    recs = [by_idx[k] for k in sorted(by_idx)]
    if not count or not recs:
        return None
    e = m.get("primary_extractor", "flexible")
    right = [x for x in recs if (x.get("correct") or {}).get(e)][:count]
    wrong = [x for x in recs if not (x.get("correct") or {}).get(e)][:count]
    blocks: list[Any] = []
    for title, group in (("correct", right), ("incorrect", wrong)):
        if not group:
            blocks.append(Para(f"No {title} responses."))
        for x in group:
            blocks += [
                Para(
                    f"**{title}** - problem {x.get('idx')}, gold {x.get('gold')}, {e} extracted "
                    f"{(x.get('extracted') or {}).get(e)!r}, {x.get('tokens')} tokens, finish "
                    f"{x.get('finish_reason')}"
                ),
                Code(str(x.get("question", "")), 400),
                Code(str(x.get("response", ""))),
            ]
    return Section(
        f"Examples: {m.get('label')}", blocks, f"examples-{safe_name(str(m.get('label')))}"
    )


def _bench_blocks(r: RunInfo) -> list[Any]:
    """One bench directory: comparison table, setup, extractors, paired tests."""
    models = r.summary.get("models") or []
    # each model's protocol: its own record, else the bench's (one protocol for all models)
    protocols = {
        m.get("label"): protocol_of(m) if protocol_of(m)[0] else protocol_of(r.summary)
        for m in models
    }
    blocks: list[Any] = []
    state = "" if r.finished else f" - **{r.status_text()}**: partial, not a result"
    blocks.append(
        Table(
            [
                "model",
                "protocol",
                "accuracy [95% CI]",
                "tokens/s",
                "s/problem",
                "load s",
                "peak RSS MB (before load)",
                "params",
                "device / dtype",
            ],
            [_model_row(m, protocols[m.get("label")][1]) for m in models],
            ["l", "l", "l", "r", "r", "r", "r", "r", "l"],
            caption=f"**{r.label}**: `{(r.summary.get('data') or {}).get('source')}`, "
            f"{(r.summary.get('data') or {}).get('n_selected')} problems{state}",
        )
    )
    blocks.append(Para(_setup_text(r)))
    if models:
        blocks.append(_extractor_table(models))
    items = _comparison_items(r, protocols)
    if items:
        blocks += [
            Para("Paired comparisons (McNemar exact test, same problems):"),
            Bullets(items),
            Para(
                "A difference that is not significant is not evidence that the models "
                "differ: with n this small, only large gaps can be told apart."
            ),
        ]
    elif len(models) == 1:
        blocks.append(Para("One model only: nothing to compare."))
    if r.summary.get("error"):
        blocks.append(Para(f"**Error:** {r.summary['error']}"))
    return blocks


def _across_benches(models: list[BenchModel]) -> list[str]:
    """Pairs of models from different bench directories: paired test, or interval overlap."""
    items = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            if a.bench == b.bench:
                continue
            if a.protocol_key != b.protocol_key:
                items.append(
                    f"**{a.label} vs {b.label}**: scored under different protocols "
                    f"({protocol_label(a.protocol_key, a.protocol)} vs "
                    f"{protocol_label(b.protocol_key, b.protocol)}): not comparable, not tested"
                )
                continue
            res = bench_pair(a, b)
            if res is None:
                continue
            if res["paired"]:
                items.append(
                    f"**{a.label} vs {b.label}**: {res['statement']} (McNemar exact, same problems)"
                )
            else:
                items.append(
                    f"**{a.label} vs {b.label}**: no common per-problem results; "
                    "95% intervals " + ("overlap" if res["overlap"] else "do not overlap")
                )
    return items


def bench_section(runs: Sequence[RunInfo], ctx: SectionContext) -> list[Section] | None:
    benches = [r for r in runs if r.kind == "bench"]
    if not benches:
        return None
    blocks: list[Any] = [
        Para(
            "Accuracy is the primary extractor of the model's protocol (chat-cot, qa and "
            "lm-eval-5shot: strict `#### N`; plain: flexible, the last number) with its 95% "
            "Wilson interval and n. Tokens/s = generated tokens / generation wall time (loading "
            "excluded). Peak RSS is the process's resident-set peak while the model loaded and "
            "generated; the RSS before loading is shown next to it."
        )
    ]
    for r in benches:
        blocks += _bench_blocks(r)
    models = bench_models(list(runs))
    if len({m.bench for m in models}) > 1:
        items = _across_benches(models)
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
    out = [Section("Benchmarks (GSM8K)", blocks, "bench")]
    if len(benches) == 1:
        # verbatim responses only in a report on one bench directory (its own report.md)
        r = benches[0]
        count = int(r.config.get("examples", DEFAULT_EXAMPLES) or 0)
        out += [e for m in r.summary.get("models") or [] if (e := _examples(r, m, count))]
    return out
