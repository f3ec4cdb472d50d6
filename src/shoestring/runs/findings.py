"""Findings written by rules, each citing the numbers behind it.

Why rules: the hand-written comparisons this project grew from called a variant "extreme fast"
that measured slowest, and called a 2-problem difference out of 50 a degradation. Each rule
here checks one such claim against the run directories and says what the numbers say:

- ``naming``: a run named fast/optimized/accelerated/quick/turbo/... that is not the fastest
  by measured throughput or wall time among the runs it is compared with;
- ``noise``: a difference smaller than its uncertainty (accuracies: McNemar's exact test on the
  same problems when per-problem results exist, else overlapping Wilson intervals; validation
  loss: Welch's t-test over seeds, or the seed spread measured elsewhere, or a note that no
  spread was measured);
- ``status``: a run that did not finish (running, failed, interrupted, pruned), ran on another
  device or dtype than asked, backed off its batch after an OOM, or shared a busy host;
- ``comparable``: runs on different data, tokenizers, context lengths or hosts.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.eval.stats import format_p, mcnemar_exact, welch_t_test, wilson_interval
from shoestring.runs.kinds import TRAINING_KINDS, RunInfo, flatten
from shoestring.runs.report import Finding

__all__ = [
    "SPEED_WORDS",
    "SpeedItem",
    "all_findings",
    "bench_models",
    "naming_findings",
    "speed_words_in",
]

# Word stems that claim speed. Matched against the words of a name (split at anything that is
# not a letter or digit, and at camelCase), so "wiki_cache_optimized" and "TurboNet" match and
# "breakfast" does not.
SPEED_WORDS = (
    "fast",
    "faster",
    "fastest",
    "quick",
    "turbo",
    "speed",
    "speedy",
    "rapid",
    "accelerated",
    "accel",
    "optimized",
    "optimised",
    "optimal",
    "tuned",
    "performance",
    "perf",
    "boost",
    "boosted",
    "lightning",
    "swift",
)
SEVERITY_ORDER = {"warning": 0, "caution": 1, "info": 2}
MAX_PAIR_FINDINGS = 20


def speed_words_in(name: str) -> list[str]:
    """The speed-claiming words of ``name`` (see :data:`SPEED_WORDS`)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    found = []
    for w in words:
        stem = w.rstrip("0123456789")
        if stem in SPEED_WORDS and stem not in found:
            found.append(stem)
    return found


@dataclass
class SpeedItem:
    """One thing with a name and measured speed: ``rate`` higher is faster, ``wall`` lower."""

    label: str
    name_text: str
    rate: float | None
    rate_unit: str
    wall: float | None
    wall_what: str = "wall time"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def naming_findings(items: list[SpeedItem], group: str) -> list[Finding]:
    """A name that claims speed must be the fastest by the rate or by the wall time."""
    rated = [i for i in items if i.rate is not None]
    walled = [i for i in items if i.wall is not None]
    if len(rated) < 2 and len(walled) < 2:
        return []
    best_rate = max(rated, key=lambda i: i.rate or 0.0) if len(rated) >= 2 else None
    best_wall = min(walled, key=lambda i: i.wall or 0.0) if len(walled) >= 2 else None
    out = []
    for it in items:
        words = speed_words_in(it.name_text)
        if not words:
            continue
        fast_rate = best_rate is None or it.rate is None or it is best_rate
        fast_wall = best_wall is None or it.wall is None or it is best_wall
        facts = []
        if best_rate is not None and it.rate is not None:
            rank = 1 + sum(1 for o in rated if (o.rate or 0.0) > it.rate)
            fact = f"{it.rate:,.0f} {it.rate_unit} (rank {rank} of {len(rated)})"
            if it is not best_rate:
                fact += (
                    f", while `{best_rate.label}` measured {best_rate.rate:,.0f} "
                    f"({_ratio(it.rate, best_rate.rate or 0.0)} of it)"
                )
            facts.append(fact)
        if best_wall is not None and it.wall is not None:
            fact = f"{it.wall_what} {it.wall:,.1f} s"
            if it is not best_wall:
                fact += f" vs {best_wall.wall:,.1f} s for `{best_wall.label}`"
            facts.append(fact)
        quoted = "/".join(f"'{w}'" for w in words)
        nums = {"rate": it.rate, "wall": it.wall, "words": words, "group": group}
        if not fast_rate and not fast_wall:
            out.append(
                Finding(
                    "naming",
                    "warning",
                    f"`{it.label}` is named {quoted} but is not the fastest of the {group}: "
                    + "; ".join(facts)
                    + ".",
                    [it.label],
                    nums,
                )
            )
        elif not fast_rate or not fast_wall:
            which = "wall time" if fast_wall else f"{it.rate_unit}"
            out.append(
                Finding(
                    "naming",
                    "info",
                    f"`{it.label}` is named {quoted}: it is the fastest of the {group} by "
                    f"{which} only: " + "; ".join(facts) + ".",
                    [it.label],
                    nums,
                )
            )
    return out


# ----------------------------------------------------------------------------- measurements


def training_measures(run: RunInfo) -> dict[str, Any]:
    """The measured results of a training run, from its summary (None where not recorded)."""
    s, system = run.summary, run.summary.get("system") or {}
    rt = s.get("runtime") or {}
    return {
        "wall_seconds": s.get("session_wall_seconds"),
        "train_seconds": s.get("train_seconds"),
        "tokens_per_second": s.get("tokens_per_second"),
        "samples_per_second": s.get("samples_per_second"),
        "cpu_percent_mean": system.get("cpu_percent_mean"),
        "cpu_percent_peak": system.get("cpu_percent_peak"),
        "host_cpu_percent_mean": system.get("host_cpu_percent_mean"),
        "peak_rss_mb": system.get("peak_rss_mb"),
        "cuda_peak_allocated_mb": system.get("cuda_peak_allocated_mb"),
        "final_val_loss": s.get("final_val_loss"),
        "best_val_loss": s.get("best_val_loss"),
        "best_step": s.get("best_step"),
        "final_train_loss": s.get("final_train_loss"),
        "steps": s.get("steps"),
        "max_steps": s.get("max_steps"),
        "device": rt.get("device"),
        "dtype": rt.get("dtype"),
        "threads": rt.get("threads"),
        "n_params": s.get("n_params"),
    }


def _asked(run: RunInfo) -> tuple[Any, Any]:
    """(device, dtype) the run was asked for, from its config."""
    c = run.config
    train = c.get("train") if isinstance(c.get("train"), dict) else {}
    return (train.get("device", c.get("device")), train.get("dtype", c.get("dtype")))


def _norm_device(d: Any) -> str:
    s = str(d or "").lower()
    return "cuda" if s.startswith("cuda") else s


# ----------------------------------------------------------------------------- status rules


def status_findings(runs: list[RunInfo]) -> list[Finding]:
    out = []
    busy: list[tuple[str, float, float]] = []
    for r in runs:
        st = r.status
        if st == "running":
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` ({r.kind}) is {r.status_text()}: its numbers are "
                    "partial and are not shown as results.",
                    [r.label],
                    {"status": st, "idle_seconds": r.idle_seconds},
                )
            )
        elif st == "failed":
            err = str(r.summary.get("error") or "no error recorded")
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` ({r.kind}) failed: {err}. Its numbers are not results.",
                    [r.label],
                    {"status": st},
                )
            )
        elif st in ("interrupted", "pruned"):
            why = r.summary.get("error")
            out.append(
                Finding(
                    "status",
                    "warning" if st == "interrupted" else "info",
                    f"`{r.label}` ({r.kind}) was {r.status_text()}"
                    + (f": {why}" if why else "")
                    + "; it is listed apart from the finished runs.",
                    [r.label],
                    {"status": st},
                )
            )
        elif st != "finished":
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` ({r.kind}) has status '{st}'.",
                    [r.label],
                    {"status": st},
                )
            )
        # asked vs ran
        asked_dev, asked_dtype = _asked(r)
        rt = r.summary.get("runtime") or {}
        ran_dev, ran_dtype = rt.get("device"), rt.get("dtype")
        if (
            asked_dev
            and asked_dev != "auto"
            and ran_dev
            and (_norm_device(asked_dev) != _norm_device(ran_dev))
        ):
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` was asked to run on {asked_dev} but ran on "
                    f"{ran_dev}: it fell back to another device, so its speed is "
                    "not the speed of the device asked for.",
                    [r.label],
                    {"asked": asked_dev, "ran": ran_dev},
                )
            )
        if asked_dtype and asked_dtype != "auto" and ran_dtype and asked_dtype != ran_dtype:
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` asked for dtype {asked_dtype} but ran in {ran_dtype}.",
                    [r.label],
                    {"asked": asked_dtype, "ran": ran_dtype},
                )
            )
        for m in r.summary.get("models", []) if r.kind == "bench" else []:
            if m.get("complete") is False:
                out.append(
                    Finding(
                        "status",
                        "warning",
                        f"bench `{r.label}`: model `{m.get('label')}` scored only "
                        f"{m.get('metrics', {}).get('n')} of "
                        f"{r.summary.get('data', {}).get('n_selected')} problems.",
                        [r.label],
                        {},
                    )
                )
            if (
                m.get("device")
                and asked_dev not in (None, "auto")
                and _norm_device(m["device"]) != _norm_device(asked_dev)
            ):
                out.append(
                    Finding(
                        "status",
                        "warning",
                        f"bench `{r.label}`: `{m.get('label')}` ran on "
                        f"{m['device']}, asked {asked_dev}.",
                        [r.label],
                        {},
                    )
                )
        ooms = r.summary.get("oom_events") or []
        if ooms:
            first = ooms[0]
            out.append(
                Finding(
                    "status",
                    "info",
                    f"`{r.label}` ran out of memory {len(ooms)} time(s) and backed off "
                    f"its micro-batch (first at step {first.get('step')}: "
                    f"{first.get('from')} -> {first.get('to')}); its throughput is "
                    "that of the smaller micro-batch.",
                    [r.label],
                    {"oom_events": len(ooms)},
                )
            )
        system = r.summary.get("system") or {}
        host, own = system.get("host_cpu_percent_mean"), system.get("cpu_percent_mean")
        if host is not None and own is not None and host - own > 25:
            busy.append((r.label, float(host), float(own)))
    if busy:
        out.append(
            Finding(
                "status",
                "caution",
                "Other processes competed for the CPU while "
                + ", ".join(
                    f"`{b[0]}` ran (host {b[1]:.0f}% busy, the run {b[2]:.0f}%)" for b in busy
                )
                + ": their speeds are lower than this host can do and compare only with runs "
                "under the same load.",
                [b[0] for b in busy],
                {"busy": [{"run": b[0], "host_cpu": b[1], "run_cpu": b[2]} for b in busy]},
            )
        )
    return out


# ----------------------------------------------------------------------------- comparability


def _data_key(r: RunInfo) -> dict[str, Any]:
    d = r.summary.get("data") or {}
    c = flatten(r.config)
    return {
        "data": d.get("path") or c.get("data.path"),
        "vocab": d.get("vocab_size") or c.get("model.vocab_size"),
        "tokenizer": d.get("tokenizer_sha256"),
        "seq_len": c.get("train.seq_len"),
        "steps": r.summary.get("max_steps") or c.get("train.max_steps"),
        "val_sequences": d.get("val_sequences"),
        "host": (r.summary.get("host") or {}).get("hostname"),
        "cpu": (r.summary.get("host") or {}).get("cpu"),
    }


def _differs(runs: list[RunInfo], key: str) -> dict[str, list[str]] | None:
    vals: dict[str, list[str]] = {}
    for r in runs:
        v = _data_key(r)[key]
        if v is None:
            continue
        vals.setdefault(str(v), []).append(r.label)
    return vals if len(vals) > 1 else None


def _groups_text(groups: dict[str, list[str]]) -> str:
    return "; ".join(f"{v}: " + ", ".join(f"`{x}`" for x in labels) for v, labels in groups.items())


def comparable_findings(runs: list[RunInfo]) -> list[Finding]:
    tr = [r for r in runs if r.kind in TRAINING_KINDS]
    out = []
    if len(tr) < 2:
        return out
    checks = (
        (
            "data",
            "warning",
            "different data",
            "their losses are on different text and do not compare",
        ),
        (
            "vocab",
            "warning",
            "different vocabularies",
            "losses in nats per token of different tokenizers do not compare",
        ),
        (
            "tokenizer",
            "warning",
            "different tokenizers",
            "losses in nats per token of different tokenizers do not compare",
        ),
        (
            "seq_len",
            "info",
            "different context lengths",
            "validation loss is averaged over different context lengths",
        ),
        (
            "steps",
            "info",
            "different numbers of steps",
            "losses are compared at different points of training",
        ),
        (
            "val_sequences",
            "info",
            "different validation sets",
            "validation losses are means over different sequences",
        ),
        ("cpu", "caution", "different CPUs", "their speeds measure different machines"),
    )
    for key, sev, what, why in checks:
        groups = _differs(tr, key)
        if groups:
            out.append(
                Finding(
                    "comparable",
                    sev,  # type: ignore[arg-type]
                    f"The training runs use {what} ({_groups_text(groups)}): {why}.",
                    [r.label for r in tr],
                    {key: list(groups)},
                )
            )
    grpo = [r for r in runs if r.kind == "grpo"]
    if len(grpo) > 1:
        vals: dict[str, list[str]] = {}
        for r in grpo:
            vals.setdefault(str(r.config.get("dataset")), []).append(r.label)
        if len(vals) > 1:
            out.append(
                Finding(
                    "comparable",
                    "warning",
                    f"The GRPO runs train on different datasets ({_groups_text(vals)})"
                    ": their rewards are not on the same task.",
                    [r.label for r in grpo],
                    {},
                )
            )
    return out


# ----------------------------------------------------------------------------- noise rules


@dataclass
class BenchModel:
    """One model's result in one bench directory."""

    label: str  # unique over the report
    bench: str
    source: str | None
    extractor: str
    correct: int
    n: int
    records: dict[int, dict[str, Any]]
    tokens_per_second: float | None
    seconds: float | None
    name_text: str


def bench_models(runs: list[RunInfo]) -> list[BenchModel]:
    """Every model result of every bench directory, labelled uniquely across directories."""
    benches = [r for r in runs if r.kind == "bench"]
    out = []
    for r in benches:
        for m in r.summary.get("models", []):
            ext = m.get("primary_extractor") or "flexible"
            acc = (m.get("metrics") or {}).get("accuracy", {}).get(ext) or {}
            label = m["label"] if len(benches) == 1 else f"{r.label}:{m['label']}"
            mm = m.get("metrics") or {}
            out.append(
                BenchModel(
                    label=label,
                    bench=r.label,
                    source=str((r.summary.get("data") or {}).get("source")),
                    extractor=ext,
                    correct=int(acc.get("correct", 0)),
                    n=int(acc.get("n", 0)),
                    records=r.extra.get("problems", {}).get(m["label"], {}),
                    tokens_per_second=mm.get("tokens_per_second"),
                    seconds=mm.get("seconds_per_problem"),
                    name_text=f"{m['label']} {m.get('model', '')}",
                )
            )
    return out


def _acc(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def bench_pair(a: BenchModel, b: BenchModel) -> dict[str, Any] | None:
    """McNemar on common problems when both have per-problem records of the same data; else
    the unpaired view (do the Wilson intervals overlap?)."""
    if a.n == 0 or b.n == 0:
        return None
    common = sorted(set(a.records) & set(b.records)) if a.source == b.source else []
    if common:
        res = mcnemar_exact(
            [bool(a.records[i]["correct"].get(a.extractor)) for i in common],
            [bool(b.records[i]["correct"].get(b.extractor)) for i in common],
            a_name=a.label,
            b_name=b.label,
        )
        return {
            "paired": True,
            "n": len(common),
            "p_value": res.p_value,
            "significant": res.significant,
            "statement": res.statement,
            "a_right_b_wrong": res.b10,
            "a_wrong_b_right": res.b01,
        }
    la, ha = wilson_interval(a.correct, a.n)
    lb, hb = wilson_interval(b.correct, b.n)
    overlap = not (ha < lb or hb < la)
    return {
        "paired": False,
        "overlap": overlap,
        "significant": not overlap,
        "ci_a": [la, ha],
        "ci_b": [lb, hb],
    }


def bench_noise_findings(models: list[BenchModel]) -> list[Finding]:
    out = []
    for a, b in itertools.combinations(models, 2):
        res = bench_pair(a, b)
        if res is None or (a.correct * b.n == b.correct * a.n):
            continue
        gap = abs(a.correct - b.correct)
        head = f"`{a.label}` {_acc(a.correct, a.n)} vs `{b.label}` {_acc(b.correct, b.n)}"
        if res["paired"]:
            if res["significant"]:
                out.append(
                    Finding(
                        "noise",
                        "info",
                        f"{head}: a real difference - {res['statement']} (McNemar "
                        "exact test on the same problems).",
                        [a.label, b.label],
                        res,
                    )
                )
            else:
                out.append(
                    Finding(
                        "noise",
                        "caution",
                        f"{head}: the difference of {gap} problem(s) is within noise - "
                        f"McNemar exact test on the {res['n']} common problems: "
                        f"{res['statement']}. Do not read it as a change.",
                        [a.label, b.label],
                        res,
                    )
                )
        elif res["overlap"]:
            out.append(
                Finding(
                    "noise",
                    "caution",
                    f"{head}: the 95% Wilson intervals overlap, so the difference of "
                    f"{gap} problem(s) is not distinguishable from noise (no paired "
                    "per-problem results on the same problems to test it more "
                    "sharply).",
                    [a.label, b.label],
                    res,
                )
            )
        else:
            out.append(
                Finding(
                    "noise",
                    "info",
                    f"{head}: the 95% Wilson intervals do not overlap.",
                    [a.label, b.label],
                    res,
                )
            )
    return _cap(out, "bench pairs")


def _cap(findings: list[Finding], what: str) -> list[Finding]:
    if len(findings) <= MAX_PAIR_FINDINGS:
        return findings
    kept = sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])[:MAX_PAIR_FINDINGS]
    kept.append(
        Finding(
            "noise",
            "info",
            f"{len(findings) - MAX_PAIR_FINDINGS} more {what} "
            "findings are left out; compare fewer directories to see them.",
            [],
        )
    )
    return kept


_SEED_KEYS = {"train.seed", "seed"}


def _config_key(r: RunInfo) -> str:
    flat = {k: v for k, v in flatten(r.config).items() if k not in _SEED_KEYS}
    return json.dumps(flat, sort_keys=True, default=str)


def _study_seed_std(runs: list[RunInfo], data_path: Any) -> tuple[float, str] | None:
    """The median seed std of a study trained on the same data as the runs compared, if any:
    a seed spread measured on other data says nothing about these runs."""
    for r in runs:
        if r.kind != "study":
            continue
        spec = r.config.get("spec") if isinstance(r.config.get("spec"), dict) else r.config
        sdata = spec.get("data") if isinstance(spec, dict) else None
        if (
            not sdata
            or data_path is None
            or Path(str(sdata)).resolve() != Path(str(data_path)).resolve()
        ):
            continue
        stds = sorted(
            float(row["val_loss_std"])
            for row in (r.extra.get("results") or {}).get("summary", [])
            if row.get("val_loss_std") is not None
        )
        if stds:
            return stds[len(stds) // 2], f"the median seed std of study `{r.label}`, same data"
    return None


def val_loss_noise_findings(runs: list[RunInfo]) -> list[Finding]:
    """Validation-loss differences against the spread over seeds, where it was measured."""
    tr = [
        r
        for r in runs
        if r.kind in TRAINING_KINDS and r.finished and r.summary.get("final_val_loss") is not None
    ]
    if len(tr) < 2:
        return []
    groups: dict[str, list[RunInfo]] = {}
    for r in tr:
        groups.setdefault(_config_key(r), []).append(r)
    glist = list(groups.values())
    out: list[Finding] = []
    multi = [g for g in glist if len(g) >= 2]
    ref: tuple[float, str] | None = None
    if multi:
        sds = []
        for g in multi:
            vals = [float(x.summary["final_val_loss"]) for x in g]
            m = sum(vals) / len(vals)
            sds.append((sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5)
        ref = (max(sds), "the largest seed std among these runs' repeated configurations")
    else:
        ref = _study_seed_std(runs, _data_key(tr[0])["data"])

    def name(g: list[RunInfo]) -> str:
        return ", ".join(f"`{x.label}`" for x in g)

    pairs = [
        (ga, gb)
        for ga, gb in itertools.combinations(glist, 2)
        # the comparable rule already says runs on other data or tokenizers do not compare
        if _data_key(ga[0])["data"] == _data_key(gb[0])["data"]
        and _data_key(ga[0])["vocab"] == _data_key(gb[0])["vocab"]
    ]
    for ga, gb in pairs:
        va = [float(x.summary["final_val_loss"]) for x in ga]
        vb = [float(x.summary["final_val_loss"]) for x in gb]
        ma, mb = sum(va) / len(va), sum(vb) / len(vb)
        gap = abs(ma - mb)
        wt = welch_t_test(va, vb)
        if wt is not None:
            sig = wt.p < 0.05
            out.append(
                Finding(
                    "noise",
                    "info" if sig else "caution",
                    f"final val loss {name(ga)} {ma:.4f} (n={len(va)}) vs {name(gb)} "
                    f"{mb:.4f} (n={len(vb)}): gap {gap:.4f}, Welch t-test "
                    f"p={format_p(wt.p)} - "
                    + ("a real difference over seeds." if sig else "within seed noise."),
                    [x.label for x in ga + gb],
                    {"gap": gap, "p_value": wt.p},
                )
            )
        elif ref is not None:
            std, where = ref
            within = gap < 2 * std
            out.append(
                Finding(
                    "noise",
                    "caution" if within else "info",
                    f"final val loss {name(ga)} {ma:.4f} vs {name(gb)} {mb:.4f}: gap "
                    f"{gap:.4f} is {'less' if within else 'more'} than twice the seed "
                    f"std {std:.4f} ({where})" + (" - within noise." if within else "."),
                    [x.label for x in ga + gb],
                    {"gap": gap, "seed_std": std},
                )
            )
    if ref is None and not multi and pairs:
        gaps = sorted(
            abs(float(a[0].summary["final_val_loss"]) - float(b[0].summary["final_val_loss"]))
            for a, b in pairs
        )
        out.append(
            Finding(
                "noise",
                "info",
                f"Each configuration ran with one seed, so the spread of the "
                f"validation loss over seeds is unknown: the gaps between runs "
                f"({gaps[0]:.4f} to {gaps[-1]:.4f}) cannot be told from seed noise. "
                "Repeat runs with other train.seed values to measure it.",
                [r.label for r in tr],
                {"gaps": gaps},
            )
        )
    return _cap(out, "validation-loss")


def _eval_text(e: dict[str, Any]) -> str:
    return _acc(int(e["correct"]), int(e["n"]))


def _evals_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    la, ha = wilson_interval(int(a["correct"]), int(a["n"]))
    lb, hb = wilson_interval(int(b["correct"]), int(b["n"]))
    return not (ha < lb or hb < la)


def _valid_eval(e: Any) -> bool:
    return isinstance(e, dict) and e.get("n") and e.get("correct") is not None


def rl_noise_findings(runs: list[RunInfo]) -> list[Finding]:
    """GRPO before/after and progressive stage gains against their uncertainty: McNemar's exact
    test on the same problems where the run recorded it, else overlapping Wilson intervals."""
    out = []
    for r in runs:
        if r.kind == "grpo":
            eb, ea = r.summary.get("eval_before"), r.summary.get("eval_after")
            if (
                _valid_eval(eb)
                and _valid_eval(ea)
                and eb["correct"] * ea["n"] != (ea["correct"] * eb["n"])
            ):
                head = f"GRPO `{r.label}`: accuracy before {_eval_text(eb)}, after {_eval_text(ea)}"
                mc = r.summary.get("eval_mcnemar") or {}
                if mc.get("p_value") is not None:
                    within = float(mc["p_value"]) >= 0.05
                    text = (
                        f"{head}: McNemar exact test on the same problems: {mc.get('statement')}"
                        + (" - the change is within noise." if within else ".")
                    )
                else:
                    within = _evals_overlap(eb, ea)
                    text = f"{head}: the 95% intervals " + (
                        "overlap - the change is within noise." if within else "do not overlap."
                    )
                out.append(
                    Finding(
                        "noise",
                        "caution" if within else "info",
                        text,
                        [r.label],
                        {"before": eb, "after": ea, "mcnemar": mc or None},
                    )
                )
        if r.kind == "progressive":
            prev = r.summary.get("base_eval")
            for st in r.summary.get("stages", []):
                ev = st.get("eval")
                if st.get("status") == "accepted" and _valid_eval(ev) and _valid_eval(prev):
                    gain = ev["correct"] / ev["n"] > prev["correct"] / prev["n"]
                    p = st.get("p_vs_start")
                    within = float(p) >= 0.05 if p is not None else _evals_overlap(prev, ev)
                    how = (
                        f"McNemar exact p={format_p(float(p))} on the same problems"
                        if p is not None
                        else "the 95% intervals overlap"
                    )
                    if gain and within:
                        out.append(
                            Finding(
                                "noise",
                                "caution",
                                f"progressive `{r.label}`: stage `{st.get('name')}` "
                                f"was accepted at {_eval_text(ev)} over "
                                f"{_eval_text(prev)}; {how}, so the gain is within noise.",
                                [r.label],
                                {"p_value": p},
                            )
                        )
                    prev = ev
    return out


def hybrid_benchmark_findings(runs: list[RunInfo]) -> list[Finding]:
    """A speed-up whose 95% interval over seeds includes 1, or overlapping loss intervals."""
    out = []
    for r in runs:
        if r.kind != "hybrid_benchmark":
            continue
        table = (r.extra.get("benchmark") or {}).get("table") or []
        rows = {row.get("arm"): row for row in table if isinstance(row, dict)}
        for arm, row in rows.items():
            sp = row.get("speedup_vs_baseline")
            if arm == "baseline" or not isinstance(sp, dict) or sp.get("mean") is None:
                continue
            lo, hi = sp.get("ci_low"), sp.get("ci_high")
            if lo is None:
                out.append(
                    Finding(
                        "noise",
                        "info",
                        f"`{r.label}`: `{arm}` speed-up {sp['mean']:.3f}x over the "
                        f"baseline from {sp.get('n')} seed(s): no interval, so it "
                        "cannot be told from seed noise.",
                        [r.label],
                        sp,
                    )
                )
            elif lo <= 1.0 <= hi:
                out.append(
                    Finding(
                        "noise",
                        "caution",
                        f"`{r.label}`: `{arm}` speed-up {sp['mean']:.3f}x "
                        f"[{lo:.3f}, {hi:.3f}] (95% t-interval over {sp.get('n')} "
                        "seeds) includes 1.0: no speed-up beyond seed noise.",
                        [r.label],
                        sp,
                    )
                )
    return out


def study_noise_findings(runs: list[RunInfo]) -> list[Finding]:
    out = []
    for r in runs:
        if r.kind != "study":
            continue
        rows = (r.extra.get("results") or {}).get("summary", [])
        within, small = [], []
        for row in rows:
            name = f"{row.get('size')}/{row.get('variant')}"
            p = row.get("p_vs_baseline")
            if p is None and row.get("note") and "baseline" not in str(row["note"]):
                small.append(f"{name} ({row['note']})")
            elif p is not None and p >= 0.05:
                within.append(f"{name} (p={format_p(float(p))})")
        if within:
            out.append(
                Finding(
                    "noise",
                    "caution",
                    f"study `{r.label}`: {len(within)} configuration(s) do not differ "
                    "from the baseline beyond seed noise (Welch t-test over seeds): "
                    + ", ".join(within)
                    + ".",
                    [r.label],
                    {"configs": within},
                )
            )
        if small:
            out.append(
                Finding(
                    "noise",
                    "info",
                    f"study `{r.label}`: no test possible for "
                    + ", ".join(small)
                    + "; run more seeds to compare them.",
                    [r.label],
                    {},
                )
            )
    return out


# ----------------------------------------------------------------------------- all together


def _speed_items(runs: list[RunInfo]) -> Iterable[tuple[list[SpeedItem], str]]:
    tr = [r for r in runs if r.kind in TRAINING_KINDS and r.finished]
    yield (
        [
            SpeedItem(
                r.label,
                r.name_text,
                r.summary.get("tokens_per_second"),
                "tokens/s",
                r.summary.get("session_wall_seconds"),
            )
            for r in tr
        ],
        "training runs",
    )
    grpo = [r for r in runs if r.kind == "grpo" and r.finished]
    yield (
        [
            SpeedItem(
                r.label,
                r.name_text,
                (1.0 / r.summary["seconds_per_step"]) * 60
                if r.summary.get("seconds_per_step")
                else None,
                "steps/min",
                r.summary.get("train_seconds"),
                "training time",
            )
            for r in grpo
        ],
        "GRPO runs",
    )
    for r in runs:
        if r.kind != "analysis":
            continue
        cfgs = [
            c for c in (r.extra.get("analysis") or {}).get("configs") or [] if isinstance(c, dict)
        ]
        yield (
            [
                SpeedItem(
                    str(c.get("label")),
                    f"{c.get('label')} {c.get('preset') or ''} {c.get('variant') or ''}",
                    c.get("tokens_per_second"),
                    "tokens/s",
                    None,
                )
                for c in cfgs
            ],
            f"configurations measured by analysis `{r.label}`",
        )
    bm = bench_models(runs)
    yield (
        [
            SpeedItem(m.label, m.name_text, m.tokens_per_second, "generated tokens/s", None)
            for m in bm
        ],
        "benchmarked models",
    )


def all_findings(runs: list[RunInfo]) -> list[Finding]:
    """Every rule over every run, most severe first (rule order kept within a severity)."""
    out: list[Finding] = []
    out += status_findings(runs)
    for items, group in _speed_items(runs):
        out += naming_findings(items, group)
    out += comparable_findings(runs)
    out += bench_noise_findings(bench_models(runs))
    out += val_loss_noise_findings(runs)
    out += rl_noise_findings(runs)
    out += study_noise_findings(runs)
    out += hybrid_benchmark_findings(runs)
    return sorted(out, key=lambda f: SEVERITY_ORDER[f.severity])
