"""``shoestring compare``: a report over run directories that people would rather look at than read.

Why: the comparisons this project grew from were written by hand - config tables next to
completion times, loss tables, phase distributions - and were slow to write and wrong in places
a tool catches (a variant named "extreme fast" that measured slowest, a 2-problem difference in
50 called a degradation). ``compare`` writes them from the run directories alone:

    shoestring compare runs/a runs/b runs/c --out reports/abc [--title ...] [--format json]

It detects each directory's kind from its files (:mod:`shoestring.report.kinds`), builds one
report (one section per kind, :mod:`shoestring.report.sections`; findings by the rules of
:mod:`shoestring.report.findings`, from the numbers of :mod:`shoestring.report.measures`) and writes
it three ways into ``--out``: ``report.md``, a self-contained ``report.html`` and
``report.json``, plus the PNG plots. The report directory is not a run directory (it has no
summary.json), and compare refuses to write into one. The CLI wiring is
:mod:`shoestring.report.cli`; :func:`write_run_report` gives a command its own report.md from the
same sections.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from shoestring.errors import UserError
from shoestring.report.blocks import Report, render_markdown, report_to_dict
from shoestring.report.findings import all_findings
from shoestring.report.html import render_html
from shoestring.report.kinds import RunInfo, load_run, load_runs
from shoestring.report.sections import build_sections, run_record
from shoestring.report.sections.common import SectionContext
from shoestring.rundir.directory import atomic_write_text, now_iso, read_json

__all__ = ["build_report", "compare", "run", "write_run_report"]


def _intro(runs: list[RunInfo]) -> list[str]:
    kinds = Counter(r.kind for r in runs)
    kinds_text = ", ".join(f"{n} {k}" for k, n in kinds.items())
    states = Counter(r.status for r in runs)
    lines = [
        f"{len(runs)} director{'y' if len(runs) == 1 else 'ies'} ({kinds_text}); status: "
        + ", ".join(f"{n} {s}" for s, n in states.items())
        + f". Written {now_iso()} by `shoestring compare` from the run directories alone "
        "(summary.json, config.json, metrics.jsonl and each kind's result files).",
    ]
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
    runs: list[RunInfo], out: Path | None, title: str | None = None, own_dir: Path | None = None
) -> Report:
    """The report over loaded runs; plots are drawn into ``out`` (none when it is None).

    ``own_dir``: the run directory whose own report.md this is (its sections may then show the
    PNGs the command drew there)."""
    ctx = SectionContext(out, own_dir)
    sections = build_sections(runs, ctx)
    return Report(
        title=title
        or "shoestring compare: "
        + ", ".join(r.label for r in runs[:6])
        + (f" and {len(runs) - 6} more" if len(runs) > 6 else ""),
        generated_at=now_iso(),
        intro=_intro(runs),
        findings=all_findings(runs),
        sections=sections,
        runs=[run_record(r) for r in runs],
    )


def _check_out(out: Path, runs: list[RunInfo]) -> None:
    """Never write a report into a run directory or over one of the inputs."""
    if (out / "summary.json").exists():
        raise UserError(
            f"{out} is a run directory (it has summary.json); give --out a new or report directory"
        )
    for r in runs:
        rp = r.path.resolve()
        if out.resolve() == rp or rp in out.resolve().parents:
            raise UserError(f"--out {out} is inside the run directory {r.path}; choose another")


def _remove_old_images(out: Path) -> None:
    """A report rewritten into the same directory drops the PNGs of the previous report."""
    old = out / "report.json"
    if not old.is_file():
        return
    try:
        data = read_json(old)
    except (OSError, json.JSONDecodeError):
        return
    if data.get("kind") != "compare_report":
        return
    for name in data.get("images", []):
        p = out / Path(name).name
        if p.suffix == ".png" and p.is_file():
            p.unlink()


def compare(
    dirs: list[str | Path], out: str | Path | None, title: str | None = None
) -> tuple[Report, dict[str, Any]]:
    """Load ``dirs``, build the report and (with ``out``) write report.md/.html/.json + PNGs."""
    if not dirs:
        raise UserError("compare needs at least one run directory")
    runs = load_runs(list(dirs))
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        _check_out(out_path, runs)
        out_path.mkdir(parents=True, exist_ok=True)
        _remove_old_images(out_path)
    report = build_report(runs, out_path, title)
    data = report_to_dict(report)
    if out_path is not None:
        atomic_write_text(out_path / "report.md", render_markdown(report))
        atomic_write_text(out_path / "report.html", render_html(report, out_path))
        atomic_write_text(out_path / "report.json", json.dumps(data, indent=2, default=str) + "\n")
    return report, data


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


def run(args: argparse.Namespace) -> int:
    """The command (wired by :mod:`shoestring.report.cli`): write the report, print findings."""
    if args.out is None and args.format != "json":
        raise UserError(
            "give --out REPORT_DIR for report.md/report.html (or --format json to "
            "print the report as JSON only)"
        )
    report, data = compare(args.dirs, args.out, args.title)
    if args.format == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    for f in report.findings:
        print(f"[{f.severity}] {f.rule}: {f.text}")
    if not report.findings:
        print("no findings")
    out = Path(args.out)
    images = data["images"]
    print(
        f"report: {out / 'report.md'}  {out / 'report.html'}  ({len(images)} plots: "
        + ", ".join(images)
        + ")"
    )
    return 0
