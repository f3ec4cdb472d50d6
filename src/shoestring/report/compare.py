"""``shoestring compare``: a report over run directories that people would rather look at than read.

Why: the comparisons this project grew from were written by hand, slowly, and wrong in places a
tool catches (a variant named "extreme fast" that measured slowest, a 2-problem difference in
50 called a degradation). ``compare runs/a runs/b --out reports/ab`` builds one report from
every kind's sections and findings (:mod:`shoestring.report.kinds`) and writes it as
``report.md``, a self-contained ``report.html`` and ``report.json`` plus PNG plots; the report
directory is never a run directory. :func:`write_run_report` gives a command its own report.md
from the same sections.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from shoestring.errors import UserError
from shoestring.report.blocks import Report, render_markdown, report_to_dict
from shoestring.report.compare_config import CompareConfig
from shoestring.report.html import render_html
from shoestring.report.kinds import all_findings, build_sections, load_run, load_runs, run_record
from shoestring.report.parts import SectionContext
from shoestring.report.run import RunInfo
from shoestring.rundir.directory import atomic_write_text, now_iso, read_json

__all__ = ["build_report", "compare", "run", "write_run_report"]


def _intro(runs: list[RunInfo]) -> list[str]:
    kinds, states = (
        ", ".join(f"{n} {k}" for k, n in Counter(c).items())
        for c in ([r.kind for r in runs], [r.status for r in runs])
    )
    lines = [
        f"{len(runs)} director{'y' if len(runs) == 1 else 'ies'} ({kinds}); status: {states}"
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
    sections = build_sections(runs, SectionContext(out, own_dir))
    more = f" and {len(runs) - 6} more" if len(runs) > 6 else ""
    title = title or "shoestring compare: " + ", ".join(r.label for r in runs[:6]) + more
    runs_json = [run_record(r) for r in runs]
    return Report(title, now_iso(), _intro(runs), all_findings(runs), sections, runs_json)


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
    try:
        data = read_json(out / "report.json")
    except (OSError, json.JSONDecodeError):
        return  # no earlier report (or a damaged one): nothing to remove
    for name in data.get("images", []) if data.get("kind") == "compare_report" else []:
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


def run(cfg: CompareConfig) -> Path | None:
    """The command's API (wired by :mod:`shoestring.report.cli`): write the report into
    ``cfg.out`` and print its findings, or print the whole report as JSON. The report
    directory; None where ``--format json`` without ``--out`` wrote nothing."""
    cfg.check()
    out = Path(cfg.out) if cfg.out else None
    report, data = compare(cfg.dirs, out, cfg.title or None)
    if cfg.format == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return out
    if out is None or cfg.quiet:
        return out
    for f in report.findings:
        print(f"[{f.severity}] {f.rule}: {f.text}")
    if not report.findings:
        print("no findings")
    plots = f"{len(data['images'])} plots: " + ", ".join(data["images"])
    print(f"report: {out / 'report.md'}  {out / 'report.html'}  ({plots})")
    return out
