"""The ``noise`` rule for RL accuracies: GRPO before/after and progressive stage gains.

Why: a GRPO run or a progressive stage that "improved" accuracy by a few problems out of 50 has
not shown anything; the change is set against McNemar's exact test on the same problems where
the run recorded it, else against overlapping 95% Wilson intervals.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Finding
from shoestring.report.kinds import RunInfo
from shoestring.report.measures import acc_text, evals_overlap, valid_eval
from shoestring.util.stats import format_p

__all__ = ["rl_noise_findings"]


def _eval_text(e: dict[str, Any]) -> str:
    return acc_text(int(e["correct"]), int(e["n"]))


def rl_noise_findings(runs: list[RunInfo]) -> list[Finding]:
    """GRPO before/after and progressive stage gains against their uncertainty: McNemar's exact
    test on the same problems where the run recorded it, else overlapping Wilson intervals."""
    out = []
    for r in runs:
        if r.kind == "grpo":
            eb, ea = r.summary.get("eval_before"), r.summary.get("eval_after")
            if (
                valid_eval(eb)
                and valid_eval(ea)
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
                    within = evals_overlap(eb, ea)
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
                if st.get("status") == "accepted" and valid_eval(ev) and valid_eval(prev):
                    gain = ev["correct"] / ev["n"] > prev["correct"] / prev["n"]
                    p = st.get("p_vs_start")
                    within = float(p) >= 0.05 if p is not None else evals_overlap(prev, ev)
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
