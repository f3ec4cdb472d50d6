"""The report as data (sections of paragraphs, tables, images; findings), as Markdown and JSON.

Why: every command's report.md, ``compare``'s report.md, report.json and ``--format json`` (and
its HTML page, :mod:`shoestring.compare.html`) render one report built once, so they cannot
drift apart. Inline text uses only ``**bold**`` and ```code```.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["NO_FINDINGS", "Block", "Bullets", "Code", "Finding", "Image", "Para", "Report"]
__all__ += ["Section", "Severity", "Table", "fmt", "fmt_cpu", "fmt_duration", "fmt_int", "fmt_mib"]
__all__ += ["fmt_millions", "fmt_size", "md_table", "render_markdown"]
__all__ += ["report_to_dict"]


@dataclass
class Para:
    text: str
    kind: Literal["para"] = "para"


@dataclass
class Bullets:
    items: list[str]
    kind: Literal["bullets"] = "bullets"


@dataclass
class Code:
    """Verbatim text (a model's response, a question), cut at ``limit`` characters."""

    text: str
    limit: int = 700
    kind: Literal["code"] = "code"

    def shown(self) -> str:
        """The text as shown: cut with a note of how much was left out."""
        t, n = self.text, self.limit
        return t if len(t) <= n else t[:n] + f" [... {len(t) - n} chars]"


@dataclass
class Table:
    """``align``: one letter per column, "l" or "r" (numbers right-aligned); "l" where absent."""

    headers: list[str]
    rows: list[list[str]]
    align: str = ""
    caption: str = ""
    kind: Literal["table"] = "table"

    def aligns(self) -> list[str]:
        return list(self.align.ljust(len(self.headers), "l"))


@dataclass
class Image:
    """A PNG written next to the report; ``file`` is relative to the report directory."""

    file: str
    alt: str
    caption: str = ""
    kind: Literal["image"] = "image"


Block = Para | Bullets | Code | Table | Image
Severity = Literal["warning", "caution", "info"]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""


@dataclass
class Finding:
    """One rule's verdict. ``severity``: warning (the data contradicts a claim or a run is not
    a result), caution (a difference that cannot be trusted), info (context)."""

    rule: str
    severity: Severity
    text: str
    runs: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    title: str
    generated_at: str
    intro: list[str]
    findings: list[Finding]
    sections: list[Section]
    runs: list[dict[str, Any]]


def fmt(x: Any, spec: str = ".1f", unit: str = "") -> str:
    """A number for a table cell; None and non-numbers print as a dash."""
    if x is None or isinstance(x, bool):
        return "-" if x is None else str(x)
    if isinstance(x, (int, float)):
        return "nan" if x != x else f"{x:{spec}}{unit}"  # x != x: NaN
    return str(x)


def fmt_cpu(system: dict[str, Any]) -> str:
    """A process's CPU share of all host cores, ``mean / peak`` percent, from its ``system``."""
    mean, peak = system.get("cpu_percent_mean"), system.get("cpu_percent_peak")
    return f"{fmt(mean, '.0f')} / {fmt(peak, '.0f')}"


def fmt_int(x: Any) -> str:
    return "-" if x is None else f"{int(x):,}"


def fmt_mib(b: Any) -> str:
    """Bytes as MiB with thousands separators ("1,234.5"); None prints as a dash."""
    return "-" if b is None else f"{float(b) / 2**20:,.1f}"


def fmt_millions(n: Any) -> str:
    """A count in millions ("12.35M"), for parameter counts; None prints as a dash."""
    return "-" if n is None else f"{float(n) / 1e6:.2f}M"


def fmt_size(b: Any) -> str:
    """A cache or buffer size: "1.5 MiB" from a MiB up, else "48 KiB"; None prints as a dash."""
    if b is None:
        return "-"
    return f"{float(b) / 2**20:.1f} MiB" if b >= 2**20 else f"{float(b) / 2**10:.0f} KiB"


def fmt_duration(s: Any) -> str:
    """Seconds in the unit a person reads them in: s, min, h or d; None prints as a dash."""
    if s is None:
        return "-"
    for limit, div, unit in ((120, 1, "s"), (7200, 60, "min"), (2 * 86400, 3600, "h")):
        if s < limit:
            return f"{s / div:.0f} s" if unit == "s" else f"{s / div:.1f} {unit}"
    return f"{s / 86400:.1f} d"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> list[str]:
    lines = []
    if t.caption:
        lines += [t.caption, ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in t.aligns()) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return lines


NO_FINDINGS = "No rule fired: nothing contradicts the names, and no difference was tested."
_SEVERITY_MARK = {"warning": "WARNING", "caution": "CAUTION", "info": "note"}
#: Each block kind as Markdown lines (the renderer puts a blank line after each block).
_MARKDOWN: dict[str, Callable[[Any], list[str]]] = {
    "para": lambda b: [b.text],
    "bullets": lambda b: [f"- {i}" for i in b.items],
    # a fence inside the text would end the block early: break it up
    "code": lambda b: ["```text", b.shown().replace("```", "` ` `"), "```"],
    "table": md_table,
    "image": lambda b: [f"![{b.alt}]({b.file})"] + (["", f"*{b.caption}*"] if b.caption else []),
}


def render_markdown(report: Report) -> str:
    """report.md: GitHub-flavoured Markdown with the PNGs referenced by relative path."""
    lines = [f"# {report.title}", ""]
    for p in report.intro:
        lines += [p, ""]
    lines += ["## Findings", ""]
    if not report.findings:
        lines += [NO_FINDINGS, ""]
    for f in report.findings:
        lines.append(f"- **{_SEVERITY_MARK[f.severity]}** ({f.rule}): {f.text}")
    lines.append("")
    for s in report.sections:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            lines += [*_MARKDOWN[b.kind](b), ""]
    return "\n".join(lines).rstrip() + "\n"


def report_to_dict(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready data (``--format json`` and report.json)."""
    d = asdict(report)
    for block in (b for s in d["sections"] for b in s["blocks"] if b["kind"] == "table"):
        block["align"] = list(block["align"])  # JSON readers get one entry per column given
    d["kind"] = "compare_report"
    d["schema_version"] = 1
    d["images"] = [b.file for s in report.sections for b in s.blocks if isinstance(b, Image)]
    return d
