"""Benchmark directories (``shoestring bench``): models, accuracies, paired tests, examples.

Why: this is ``bench``'s own report.md as well as a part of every comparison, so it shows what
bench's hand-written report showed (comparison table, accuracy by extractor, paired McNemar
tests, example responses) and tests models across bench directories on the problems both
scored. Pairs scored under different protocols are marked, not tested. The ``noise`` rule exists
because a 2-problem difference out of 50 was once called a degradation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from shoestring.report import plots
from shoestring.report.accuracy import acc_text, interval_row, protocol_label, protocol_of
from shoestring.report.blocks import Bullets, Code, Finding, Para, Section, Table, fmt, fmt_millions
from shoestring.report.parts import Kind, SectionContext, of_kind, safe_name
from shoestring.report.rules import SpeedItem, asked, cap_findings, norm_device
from shoestring.report.run import RunInfo
from shoestring.rundir.directory import read_metrics
from shoestring.util.stats import mcnemar_exact, wilson_interval

__all__ = ["KIND", "BenchModel", "bench_models"]

#: Correct and incorrect responses shown per model when the config does not say (bench's default).
DEFAULT_EXAMPLES = 2


@dataclass
class BenchModel:
    """One model's result in one bench directory; ``label`` is unique over the report, and
    ``protocol_key`` the identity of its scoring protocol (see accuracy.protocol_of)."""

    label: str
    bench: str
    source: str | None
    extractor: str
    correct: int
    n: int
    records: dict[int, dict[str, Any]]
    tokens_per_second: float | None
    name_text: str
    protocol_key: str | None
    protocol: str


def _load_problems(run: RunInfo) -> None:
    """Per-model problem records (idx -> record) for paired tests across bench directories."""
    for m in run.summary.get("models", []):
        if not (rel := m.get("problems_file")):
            continue
        shash = m.get("settings_hash")
        # the run directory's JSONL reader: skips a line cut by a kill
        run.extra.setdefault("problems", {})[m["label"]] = {
            int(r["idx"]): r
            for r in read_metrics(run.path / rel)
            if "idx" in r and (shash is None or r.get("settings_hash") in (None, shash))
        }


def _protocol(run: RunInfo, m: dict[str, Any]) -> tuple[str | None, str]:
    """A model's own protocol record wins; else the bench's (one protocol for all models)."""
    return protocol_of(m) if protocol_of(m)[0] else protocol_of(run.summary)


def bench_models(runs: list[RunInfo]) -> list[BenchModel]:
    """Every model result of every bench directory, labelled uniquely across directories."""
    benches = of_kind(runs, "bench")
    out = []
    for r in benches:
        source = str((r.summary.get("data") or {}).get("source"))
        for m in r.summary.get("models", []):
            ext, mm = m.get("primary_extractor") or "flexible", m.get("metrics") or {}
            acc = mm.get("accuracy", {}).get(ext) or {}
            label = m["label"] if len(benches) == 1 else f"{r.label}:{m['label']}"
            counts = int(acc.get("correct", 0)), int(acc.get("n", 0))
            records = r.extra.get("problems", {}).get(m["label"], {})
            rest = records, mm.get("tokens_per_second"), f"{m['label']} {m.get('model', '')}"
            out.append(BenchModel(label, r.label, source, ext, *counts, *rest, *_protocol(r, m)))
    return out


def bench_pair(a: BenchModel, b: BenchModel) -> dict[str, Any] | None:
    """McNemar on common problems when both have per-problem records of the same data; else
    the unpaired view (do the Wilson intervals overlap?). None when either scored nothing."""
    if a.n == 0 or b.n == 0:
        return None
    common = sorted(set(a.records) & set(b.records)) if a.source == b.source else []
    if common:
        a_right = [bool(a.records[i]["correct"].get(a.extractor)) for i in common]
        b_right = [bool(b.records[i]["correct"].get(b.extractor)) for i in common]
        res = mcnemar_exact(a_right, b_right, a_name=a.label, b_name=b.label)
        out = {"paired": True, "n": len(common), "p_value": res.p_value}
        out |= {"significant": res.significant, "statement": res.statement}
        return out | {"a_right_b_wrong": res.b10, "a_wrong_b_right": res.b01}
    (la, ha), (lb, hb) = wilson_interval(a.correct, a.n), wilson_interval(b.correct, b.n)
    overlap = not (ha < lb or hb < la)
    ci = {"ci_a": [la, ha], "ci_b": [lb, hb]}
    return {"paired": False, "overlap": overlap, "significant": not overlap} | ci


# ----------------------------------------------------------------------------- sections


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
    limit, seed = data.get("limit"), data.get("subset_seed")
    order = "first N in file order" if seed is None else f"subset seed {seed}"
    subset = "all problems" if limit is None else f"limit {limit}, {order}"
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
    acc_cell = acc.get("text", "-") + ("" if m.get("complete", True) else " INCOMPLETE")
    times = [fmt(mm.get(k), ".2f") for k in ("seconds_per_problem", "load_seconds")]
    return [m.get("label", "?"), f"{shown_protocol} ({m.get('primary_extractor')})", acc_cell] + [
        fmt(mm.get("tokens_per_second"), ",.1f"),
        *times,
        mem,
        fmt_millions(m.get("n_params")),
        f"{m.get('device', '-')} / {m.get('dtype', '-')}",
    ]


def _extractor_table(models: list[dict[str, Any]]) -> Table:
    """Every extractor's accuracy per model (the primary one decides; the others are context)."""
    accs = [(m.get("label", "?"), (m.get("metrics") or {}).get("accuracy") or {}) for m in models]
    names = list(dict.fromkeys(e for _, acc in accs for e in acc))  # first seen, once each
    rows = [[label] + [acc.get(e, {}).get("text", "-") for e in names] for label, acc in accs]
    return Table(["model", *names], rows, caption="Accuracy by extractor:")


def _not_comparable(a: str, b: str, pa: Any, pb: Any, how: str = "") -> str:
    """A pair scored under different protocols (``pa``, ``pb``: (identity, name))."""
    return (
        f"**{a} vs {b}**{how}: scored under different protocols "
        f"({protocol_label(*pa)} vs {protocol_label(*pb)})"
    )


def _comparison_items(r: RunInfo, protocols: dict[str, tuple[str | None, str]]) -> list[str]:
    """bench's own paired tests; a pair scored under different protocols is marked, not read."""
    items = []
    for c in r.summary.get("comparisons") or []:
        pa, pb = protocols.get(c["a"], (None, "-")), protocols.get(c["b"], (None, "-"))
        how = f" ({c['extractor_a']} vs {c['extractor_b']})" if c.get("extractor_a") else ""
        text = f"**{c['a']} vs {c['b']}**{how}: {c['statement']}."
        if pa[0] != pb[0]:
            text = _not_comparable(c["a"], c["b"], pa, pb, how) + ", so not comparable; the test "
            text += f"({c['statement']}) is not evidence either way."
        items.append(text)
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
            head = f"**{title}** - problem {x.get('idx')}, gold {x.get('gold')}, {e} extracted "
            head += f"{(x.get('extracted') or {}).get(e)!r}, {x.get('tokens')} tokens, finish "
            head += f"{x.get('finish_reason')}"
            blocks += [Para(head), Code(str(x.get("question", "")), 400)]
            blocks.append(Code(str(x.get("response", ""))))
    label = str(m.get("label"))
    return Section(f"Examples: {label}", blocks, f"examples-{safe_name(label)}")


def _bench_blocks(r: RunInfo) -> list[Any]:
    """One bench directory: comparison table, setup, extractors, paired tests."""
    models = r.summary.get("models") or []
    protocols = {m.get("label"): _protocol(r, m) for m in models}
    data = r.summary.get("data") or {}
    state = "" if r.finished else f" - **{r.status_text()}**: partial, not a result"
    head = ["model", "protocol", "accuracy [95% CI]", "tokens/s", "s/problem", "load s"]
    head += ["peak RSS MB (before load)", "params", "device / dtype"]
    rows = [_model_row(m, protocols[m.get("label")][1]) for m in models]
    caption = f"**{r.label}**: `{data.get('source')}`, {data.get('n_selected')} problems{state}"
    blocks: list[Any] = [Table(head, rows, "lllrrrrrl", caption), Para(_setup_text(r))]
    if models:
        blocks.append(_extractor_table(models))
    if items := _comparison_items(r, protocols):
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
    for a, b in itertools.combinations(models, 2):
        if a.bench == b.bench:
            continue
        if a.protocol_key != b.protocol_key:
            pa, pb = (a.protocol_key, a.protocol), (b.protocol_key, b.protocol)
            items.append(_not_comparable(a.label, b.label, pa, pb) + ": not comparable, not tested")
        elif (res := bench_pair(a, b)) is None:
            continue
        elif res["paired"]:
            items.append(
                f"**{a.label} vs {b.label}**: {res['statement']} (McNemar exact, same problems)"
            )
        else:
            overlap = "overlap" if res["overlap"] else "do not overlap"
            text = f"no common per-problem results; 95% intervals {overlap}"
            items.append(f"**{a.label} vs {b.label}**: {text}")
    return items


def bench_sections(benches: list[RunInfo], ctx: SectionContext) -> list[Section]:
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
    models = bench_models(benches)
    if len({m.bench for m in models}) > 1 and (items := _across_benches(models)):
        blocks += [Para("Across bench directories:"), Bullets(items)]
    points = [interval_row(m.label, m.correct, m.n, ctx.palette(m.label)) for m in models if m.n]
    blocks += ctx.plot(
        "bench_accuracy.png",
        lambda p: plots.intervals(points, plots.ACCURACY_AXIS, p, xlim=plots.ACCURACY_XLIM),
        "benchmark accuracies with 95% intervals",
    )
    out = [Section("Benchmarks (GSM8K)", blocks, "bench")]
    if len(benches) == 1:
        # verbatim responses only in a report on one bench directory (its own report.md)
        r = benches[0]
        count = int(r.config.get("examples", DEFAULT_EXAMPLES) or 0)
        out += [e for m in r.summary.get("models") or [] if (e := _examples(r, m, count))]
    return out


def _record(r: RunInfo) -> dict[str, Any]:
    # bench_models reads every model of the summary, in order: one entry per model
    models = []
    for m, bm in zip(r.summary.get("models", []), bench_models([r]), strict=True):
        mm = m.get("metrics") or {}
        acc = mm.get("accuracy", {}).get(m.get("primary_extractor"))
        models.append({"label": m.get("label"), "accuracy": acc, "protocol_key": bm.protocol_key})
        models[-1]["tokens_per_second"] = mm.get("tokens_per_second")
    return {"models": models, "comparisons": r.summary.get("comparisons", [])}


# ----------------------------------------------------------------------------- rules


def _model_status(runs: list[RunInfo]) -> list[Finding]:
    """Models that scored only part of the problems, or ran on another device than asked."""
    out = []
    for r in of_kind(runs, "bench"):
        want, total = asked(r)[0], (r.summary.get("data") or {}).get("n_selected")
        for m in r.summary.get("models", []):
            who, dev = f"bench `{r.label}`: model `{m.get('label')}`", m.get("device")
            if m.get("complete") is False:
                text = f"{who} scored only {m.get('metrics', {}).get('n')} of {total} problems."
                out.append(Finding("status", "warning", text, [r.label], {}))
            if dev and want not in (None, "auto") and norm_device(dev) != norm_device(want):
                text = f"bench `{r.label}`: `{m.get('label')}` ran on {dev}, asked {want}."
                out.append(Finding("status", "warning", text, [r.label], {}))
    return out


def _noise(models: list[BenchModel]) -> list[Finding]:
    """Every pair of models scored under the same protocol whose accuracies differ: McNemar's
    exact test on the problems both scored, else whether the 95% Wilson intervals overlap."""
    out = []
    for a, b in itertools.combinations(models, 2):
        if a.protocol_key != b.protocol_key:
            continue  # scored under different protocols: not comparable (the protocol rule)
        res = bench_pair(a, b)
        if res is None or (a.correct * b.n == b.correct * a.n):
            continue
        gap = abs(a.correct - b.correct)
        head = f"`{a.label}` {acc_text(a.correct, a.n)} vs `{b.label}` {acc_text(b.correct, b.n)}"
        sev = "caution"
        if res["paired"] and res["significant"]:
            sev = "info"
            text = f"a real difference - {res['statement']} (McNemar exact test on the same "
            text += "problems)."
        elif res["paired"]:
            text = (
                f"the difference of {gap} problem(s) is within noise - McNemar exact test on the "
                f"{res['n']} common problems: {res['statement']}. Do not read it as a change."
            )
        elif res["overlap"]:
            text = (
                f"the 95% Wilson intervals overlap, so the difference of {gap} problem(s) is not "
                "distinguishable from noise (no paired per-problem results on the same "
                "problems to test it more sharply)."
            )
        else:
            sev, text = "info", "the 95% Wilson intervals do not overlap."
        labels = [a.label, b.label]
        out.append(Finding("noise", sev, f"{head}: {text}", labels, res))  # type: ignore[arg-type]
    return cap_findings(out, "bench pairs")


def _speed(runs: list[RunInfo]) -> list[tuple[list[SpeedItem], str]]:
    items = [
        SpeedItem(m.label, m.name_text, m.tokens_per_second, "generated tokens/s", None)
        for m in bench_models(runs)
    ]
    return [(items, "benchmarked models")]


KIND = Kind(
    name="bench",
    writer="`shoestring bench` (summary.json kind 'bench')",
    sections=bench_sections,
    summary_kind="bench",
    load=_load_problems,
    record=_record,
    findings=lambda runs: _model_status(runs) + _noise(bench_models(runs)),
    speed=_speed,
    accuracies=lambda runs: [
        (m.label, m.protocol_key, m.protocol) for m in bench_models(runs) if m.n
    ],
)
