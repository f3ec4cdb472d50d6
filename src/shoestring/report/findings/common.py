"""What every rule family shares: the severity order and the cap on pairwise findings.

Why: a report over twenty runs has 190 pairs; the rules that compare pairs keep the most severe
findings and say how many they left out, and they all do it the same way.
"""

from __future__ import annotations

from shoestring.report.blocks import Finding

__all__ = ["MAX_PAIR_FINDINGS", "SEVERITY_ORDER", "cap_findings"]


SEVERITY_ORDER = {"warning": 0, "caution": 1, "info": 2}
MAX_PAIR_FINDINGS = 20


def cap_findings(findings: list[Finding], what: str) -> list[Finding]:
    """At most :data:`MAX_PAIR_FINDINGS` of ``findings``, most severe first, and a note of how
    many were left out (so twenty runs do not bury the report in 190 pair findings)."""
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
