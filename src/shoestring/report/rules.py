"""The rules every kind shares - ``status`` (runs that are not results) and ``naming`` (a name
that claims speed must be the fastest by what was measured) - and the order of findings.

Why rules: the hand-written comparisons this project grew from called a variant "extreme fast"
that measured slowest; each rule checks such a claim against the run directories and says what
the numbers say. A kind's own rules live in its module (:mod:`shoestring.report.kinds`), the
``protocol`` rule in :mod:`shoestring.report.accuracy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shoestring.report.blocks import Finding
from shoestring.report.run import RunInfo

__all__ = ["SPEED_WORDS", "SpeedItem", "cap_findings", "naming_findings", "order_findings"]
__all__ += ["speed_words_in", "status_findings"]

SEVERITY_ORDER = {"warning": 0, "caution": 1, "info": 2}
# within a severity, findings keep the order of the rules
RULE_ORDER = {"status": 0, "naming": 1, "comparable": 2, "protocol": 3, "input": 4, "vocabulary": 5}
RULE_ORDER |= {"noise": 6}
MAX_PAIR_FINDINGS = 20
# Word stems that claim speed. Matched against the words of a name (split at anything that is
# not a letter or digit, and at camelCase), so "wiki_cache_optimized" and "TurboNet" match and
# "breakfast" does not.
SPEED_WORDS = (
    *("fast", "faster", "fastest", "quick", "turbo", "speed", "speedy", "rapid", "accelerated"),
    *("accel", "optimized", "optimised", "optimal", "tuned", "performance", "perf", "boost"),
    *("boosted", "lightning", "swift"),
)


def order_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity, rule by rule (status, naming, ..., noise)."""
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], RULE_ORDER[f.rule]))


def cap_findings(findings: list[Finding], what: str) -> list[Finding]:
    """At most :data:`MAX_PAIR_FINDINGS` of ``findings``, most severe first, and a note of how
    many were left out (so twenty runs do not bury the report in 190 pair findings)."""
    if len(findings) <= MAX_PAIR_FINDINGS:
        return findings
    kept = sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])[:MAX_PAIR_FINDINGS]
    left = len(findings) - MAX_PAIR_FINDINGS
    text = f"{left} more {what} findings are left out; compare fewer directories to see them."
    return [*kept, Finding("noise", "info", text, [])]


# ----------------------------------------------------------------------------- status


def asked(run: RunInfo) -> tuple[Any, Any]:
    """(device, dtype) the run was asked for, from its config."""
    c = run.config
    train = c.get("train") if isinstance(c.get("train"), dict) else {}
    return (train.get("device", c.get("device")), train.get("dtype", c.get("dtype")))


def norm_device(d: Any) -> str:
    """``cuda:1`` and ``cuda`` are the same device for the asked-vs-ran check."""
    s = str(d or "").lower()
    return "cuda" if s.startswith("cuda") else s


def _state_finding(r: RunInfo) -> Finding | None:
    """A run that is not finished: its numbers are partial or not results at all."""
    st, who = r.status, f"`{r.label}` ({r.kind})"
    nums: dict[str, Any] = {"status": st}
    if st == "finished":
        return None
    if st == "running":
        text = f"{who} is {r.status_text()}: its numbers are partial and are not shown as results."
        nums["idle_seconds"] = r.idle_seconds
    elif st == "failed":
        err = str(r.summary.get("error") or "no error recorded")
        text = f"{who} failed: {err}. Its numbers are not results."
    elif st in ("interrupted", "pruned"):
        why = r.summary.get("error")
        text = f"{who} was {r.status_text()}" + (f": {why}" if why else "")
        text += "; it is listed apart from the finished runs."
        return Finding(
            "status", "warning" if st == "interrupted" else "info", text, [r.label], nums
        )
    else:
        text = f"{who} has status '{st}'."
    return Finding("status", "warning", text, [r.label], nums)


def status_findings(runs: list[RunInfo]) -> list[Finding]:
    """Runs that are not results, or did not run as asked: another device or dtype than asked,
    a batch backed off after an OOM, a host busy with other work."""
    out = []
    busy: list[tuple[str, float, float]] = []
    for r in runs:
        if (f := _state_finding(r)) is not None:
            out.append(f)
        (asked_dev, asked_dtype), rt = asked(r), r.summary.get("runtime") or {}
        ran_dev, ran_dtype = rt.get("device"), rt.get("dtype")
        if (
            asked_dev not in (None, "", "auto")
            and ran_dev
            and norm_device(asked_dev) != norm_device(ran_dev)
        ):
            text = (
                f"`{r.label}` was asked to run on {asked_dev} but ran on {ran_dev}: it fell back "
                "to another device, so its speed is not the speed of the device asked for."
            )
            nums = {"asked": asked_dev, "ran": ran_dev}
            out.append(Finding("status", "warning", text, [r.label], nums))
        if asked_dtype not in (None, "", "auto") and ran_dtype and asked_dtype != ran_dtype:
            text = f"`{r.label}` asked for dtype {asked_dtype} but ran in {ran_dtype}."
            nums = {"asked": asked_dtype, "ran": ran_dtype}
            out.append(Finding("status", "warning", text, [r.label], nums))
        if ooms := r.summary.get("oom_events") or []:
            first = ooms[0]
            text = (
                f"`{r.label}` ran out of memory {len(ooms)} time(s) and backed off its "
                f"micro-batch (first at step {first.get('step')}: {first.get('from')} -> "
                f"{first.get('to')}); its throughput is that of the smaller micro-batch."
            )
            out.append(Finding("status", "info", text, [r.label], {"oom_events": len(ooms)}))
        system = r.summary.get("system") or {}
        host, own = system.get("host_cpu_percent_mean"), system.get("cpu_percent_mean")
        if host is not None and own is not None and host - own > 25:
            busy.append((r.label, float(host), float(own)))
    if busy:
        text = (
            "Other processes competed for the CPU while "
            + ", ".join(f"`{b[0]}` ran (host {b[1]:.0f}% busy, the run {b[2]:.0f}%)" for b in busy)
            + ": their speeds are lower than this host can do and compare only with runs "
            "under the same load."
        )
        nums = {"busy": [{"run": b[0], "host_cpu": b[1], "run_cpu": b[2]} for b in busy]}
        out.append(Finding("status", "caution", text, [b[0] for b in busy], nums))
    return out


# ----------------------------------------------------------------------------- naming


def speed_words_in(name: str) -> list[str]:
    """The speed-claiming words of ``name`` (see :data:`SPEED_WORDS`)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    found: list[str] = []
    for w in re.split(r"[^A-Za-z0-9]+", spaced):
        stem = w.lower().rstrip("0123456789")  # "fast2" claims what "fast" claims
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
    best_rate = max(rated, key=lambda i: i.rate or 0.0) if len(rated) >= 2 else None
    best_wall = min(walled, key=lambda i: i.wall or 0.0) if len(walled) >= 2 else None
    if best_rate is None and best_wall is None:
        return []
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
            text = f"`{it.label}` is named {quoted} but is not the fastest of the {group}: "
            out.append(
                Finding("naming", "warning", text + "; ".join(facts) + ".", [it.label], nums)
            )
        elif not fast_rate or not fast_wall:
            which = "wall time" if fast_wall else it.rate_unit
            text = f"`{it.label}` is named {quoted}: it is the fastest of the {group} by "
            text += f"{which} only: "
            out.append(Finding("naming", "info", text + "; ".join(facts) + ".", [it.label], nums))
    return out
