"""The ``noise`` rule for benchmark accuracies: a difference against its uncertainty.

Why: a 2-problem difference out of 50 was once called a degradation. Two models' accuracies are
tested with McNemar's exact test on the problems both scored, or, without per-problem results,
by whether their 95% Wilson intervals overlap. Accuracies scored under different protocols are
not tested at all (the ``protocol`` rule says why).
"""

from __future__ import annotations

import itertools

from shoestring.report.blocks import Finding
from shoestring.report.findings.common import cap_findings
from shoestring.report.measures import BenchModel, acc_text, bench_pair

__all__ = ["bench_noise_findings"]


def bench_noise_findings(models: list[BenchModel]) -> list[Finding]:
    """Every pair of models scored under the same protocol whose accuracies differ."""
    out = []
    for a, b in itertools.combinations(models, 2):
        if a.protocol_key != b.protocol_key:
            continue  # scored under different protocols: not comparable (the protocol rule)
        res = bench_pair(a, b)
        if res is None or (a.correct * b.n == b.correct * a.n):
            continue
        gap = abs(a.correct - b.correct)
        head = f"`{a.label}` {acc_text(a.correct, a.n)} vs `{b.label}` {acc_text(b.correct, b.n)}"
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
    return cap_findings(out, "bench pairs")
