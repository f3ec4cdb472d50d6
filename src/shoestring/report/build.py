"""A report over loaded run directories: every kind's sections and findings
(:mod:`shoestring.report.kinds`) under one title and introduction.

Why one builder: ``shoestring compare`` (:mod:`shoestring.compare`) and every command's own
report.md (:func:`write_run_report`, run by the lifecycle's finalizers) show the same tables,
built by the same code.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from shoestring.report.blocks import Report, render_markdown
from shoestring.report.kinds import all_findings, build_sections, load_run, run_record
from shoestring.report.parts import SectionContext
from shoestring.report.run import RunInfo
from shoestring.rundir.directory import atomic_write_text, now_iso

__all__ = ["build_report", "write_run_report"]


def _intro(runs: list[RunInfo], own: bool, skipped: list[str]) -> list[str]:
    kinds, states = (
        ", ".join(f"{n} {k}" for k, n in Counter(c).items())
        for c in ([r.kind for r in runs], [r.status for r in runs])
    )
    lines = [
        f"{len(runs)} director{'y' if len(runs) == 1 else 'ies'} ({kinds}); status: {states}"
        + f". Written {now_iso()} by {'the run itself' if own else '`shoestring compare`'} "
        "from the run directories alone "
        "(summary.json, config.json, metrics.jsonl and each kind's result files).",
    ]
    if skipped:  # named, so a reader knows the report is not over every directory given
        lines.append(
            f"Left out: {len(skipped)} director{'y' if len(skipped) == 1 else 'ies'} that "
            "could not be read: " + "; ".join(skipped)
        )
    hosts = {
        (h.get("hostname"), h.get("cpu"), h.get("logical_cores"))
        for r in runs
        if (h := r.summary.get("host") or {})
    }
    if len(hosts) == 1:
        name, cpu, cores = next(iter(hosts))
        lines.append(f"Host: `{name}`, {cpu}, {cores} logical cores.")
    elif hosts:
        lines.append(f"{len(hosts)} different hosts: speeds compare only within a host.")
    lines.append(
        "Findings are written by rules and cite their numbers: names against measured speed, "
        "differences against their uncertainty, runs that did not finish or fell back to another "
        "device, and runs that are not comparable."
    )
    return lines


def build_report(
    runs: list[RunInfo],
    out: Path | None,
    title: str | None = None,
    own_dir: Path | None = None,
    skipped: list[str] | None = None,
) -> Report:
    """The report over loaded runs; plots are drawn into ``out`` (none when it is None).

    ``own_dir``: the run directory whose own report.md this is (its sections may then show the
    PNGs the command drew there). ``skipped``: why each directory that could not be read was
    left out (named in the introduction)."""
    sections = build_sections(runs, SectionContext(out, own_dir))
    more = f" and {len(runs) - 6} more" if len(runs) > 6 else ""
    title = title or "shoestring compare: " + ", ".join(r.label for r in runs[:6]) + more
    runs_json = [run_record(r) for r in runs]
    return Report(
        title,
        now_iso(),
        _intro(runs, own_dir is not None, skipped or []),
        all_findings(runs),
        sections,
        runs_json,
    )


def write_run_report(run_dir: str | Path, title: str | None = None) -> Path:
    """A command's own ``report.md``: the sections ``compare`` renders, for this one directory.

    Every command writes its report through here, so a run's report and a comparison that
    includes the run show the same tables built by the same code. A run that is still
    ``running`` or ended ``failed``/``interrupted`` gets a report too: its sections and the
    status finding say what state it is in, and its numbers are not shown as results.
    """
    path = Path(run_dir)
    run = load_run(path)
    report = build_report([run], None, title or f"shoestring {run.kind}: {run.label}", path)
    target = path / "report.md"
    atomic_write_text(target, render_markdown(report))
    return target
