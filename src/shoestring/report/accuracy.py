"""Accuracies as every kind shows them - with their 95% Wilson interval and the protocol that
scored them - and the ``protocol`` rule.

Why one place: an accuracy belongs to a model *and* the protocol that asked and judged it
(prompt, shots, stop strings, extractor; :mod:`shoestring.scoring.protocols`). Bench models,
GRPO evaluations and progressive gates all report one; reading protocols and writing intervals
alike keeps a table and its finding from disagreeing. Accuracies under different protocols are
flagged, and no paired test is made between them.
"""

from __future__ import annotations

import json
from typing import Any

from shoestring.report.blocks import Finding
from shoestring.report.parts import group_by
from shoestring.util.stats import wilson_interval

__all__ = ["NOT_RECORDED", "acc_text", "eval_cell", "eval_text", "evals_overlap", "interval_row"]
__all__ += ["protocol_findings", "protocol_label", "protocol_of", "valid_eval"]

#: Shown for an accuracy whose run recorded no scoring protocol (written before protocols).
NOT_RECORDED = "not recorded"
# An older bench recorded only its protocol's name, not what the protocol was.
NAME_ONLY = "(name only)"


def protocol_of(rec: dict[str, Any]) -> tuple[str | None, str]:
    """(identity, name) of the scoring protocol ``rec`` (a summary or a bench model) names.

    The identity is ``protocol_key`` when recorded (e.g. ``qa@de7c6963``: name and a hash of
    everything that decides a score); a protocol dict without a key is identified by its
    content; an older bench's bare protocol name by that name alone. None: nothing recorded.
    """
    key, proto = rec.get("protocol_key"), rec.get("protocol")
    name = proto.get("name") if isinstance(proto, dict) else proto
    if key:
        return str(key), str(name or str(key).split("@")[0])
    if isinstance(proto, dict):
        return f"{name}#" + json.dumps(proto, sort_keys=True, default=str), str(name or "?")
    if proto:
        return f"{proto} {NAME_ONLY}", str(proto)
    return None, NOT_RECORDED


def protocol_label(key: str | None, name: str) -> str:
    """How a finding names a protocol: its key where one was recorded, else what is known."""
    if key is None:
        return NOT_RECORDED
    if key.endswith(NAME_ONLY):
        return f"{name} (name only, its definition not recorded)"
    return name if "#" in key else key


def acc_text(k: int, n: int, count: str = "") -> str:
    """``20.0% [11.2, 33.0] (10/50)``: an accuracy with its 95% Wilson interval (``count``
    replaces the ``10/50``)."""
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({count or f'{k}/{n}'})"


def eval_text(e: Any) -> str:
    """An evaluation record as ``14.0% [7.0, 26.2] (7/50)``, or a dash."""
    return acc_text(int(e["correct"]), int(e["n"])) if valid_eval(e) else "-"


def valid_eval(e: Any) -> bool:
    """An evaluation record (``{"correct", "n", ...}``) with something in it."""
    return isinstance(e, dict) and bool(e.get("n")) and e.get("correct") is not None


def eval_cell(e: Any) -> str:
    """An evaluation record as a table cell: ``12.0% [5.6, 23.8] (n=50)``, or a dash."""
    return acc_text(int(e["correct"]), int(e["n"]), f"n={int(e['n'])}") if valid_eval(e) else "-"


def evals_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do the 95% Wilson intervals of two evaluation records overlap?"""
    la, ha = wilson_interval(int(a["correct"]), int(a["n"]))
    lb, hb = wilson_interval(int(b["correct"]), int(b["n"]))
    return not (ha < lb or hb < la)


def interval_row(label: str, correct: int, n: int, color: Any) -> dict[str, Any]:
    """One point of :func:`shoestring.report.plots.intervals`: accuracy and interval, in %."""
    lo, hi = wilson_interval(int(correct), int(n))
    return {"label": label, "x": 100 * correct / n, "lo": 100 * lo, "hi": 100 * hi, "color": color}


def protocol_findings(sources: list[tuple[str, str | None, str]]) -> list[Finding]:
    """One warning when the accuracies of a report - ``sources``: (label, protocol identity,
    protocol name) from every kind - were scored under more than one protocol."""
    # group the sources by protocol identity; an unrecorded protocol is a group of its own
    if len(groups := group_by(sources, lambda s: s[1])) < 2:
        return []
    text = "; ".join(
        f"{protocol_label(key, g[0][2])}: " + ", ".join(f"`{x[0]}`" for x in g)
        for key, g in groups.items()
    )
    text = (
        f"The accuracies compared here were scored under different protocols ({text}): a "
        "prompt, shots, stop strings or extractor of its own makes each a different "
        "measurement, so these accuracies are not comparable and no paired or noise test is "
        "made between them."
    )
    nums = {"protocols": {(k or NOT_RECORDED): [x[0] for x in g] for k, g in groups.items()}}
    return [Finding("protocol", "warning", text, [label for label, _, _ in sources], nums)]
