"""``shoestring compare``: one report over run directories - report.md, a self-contained
report.html, report.json and PNG plots - that people would rather look at than read.

Why a command of its own: the comparisons this project grew from were written by hand, slowly,
and wrong in places a tool catches (a variant named "extreme fast" that measured slowest, a
2-problem difference in 50 called a degradation). The report itself is built by
:mod:`shoestring.report`; this module loads the directories, keeps the report out of them, and
writes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shoestring.compare.config import CompareConfig
from shoestring.compare.html import render_html
from shoestring.errors import UserError
from shoestring.report.blocks import Report, render_markdown, report_to_dict
from shoestring.report.build import build_report
from shoestring.report.kinds import load_runs
from shoestring.report.run import RunInfo
from shoestring.rundir.directory import atomic_write_text, read_json

__all__ = ["compare", "print_json", "run"]


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
    """Load ``dirs``, build the report and (with ``out``) write report.md/.html/.json + PNGs;
    the report directory is never a run directory. A directory that cannot be read is one
    ``skipped:`` line on stderr, in the report's introduction and in report.json's
    ``skipped``; the report covers the others."""
    if not dirs:
        raise UserError("compare needs at least one run directory")
    skipped: list[str] = []  # directories that could not be read: reported, not fatal
    runs = load_runs(list(dirs), skipped)
    for reason in skipped:
        print(f"shoestring compare: skipped: {reason}", file=sys.stderr, flush=True)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        _check_out(out_path, runs)
        out_path.mkdir(parents=True, exist_ok=True)
        _remove_old_images(out_path)
    report = build_report(runs, out_path, title, skipped=skipped)
    data = report_to_dict(report)
    data["skipped"] = skipped
    if out_path is not None:
        atomic_write_text(out_path / "report.md", render_markdown(report))
        atomic_write_text(out_path / "report.html", render_html(report, out_path))
        atomic_write_text(out_path / "report.json", json.dumps(data, indent=2, default=str) + "\n")
    return report, data


def run(cfg: CompareConfig) -> Path:
    """The command's API (wired by :mod:`shoestring.compare.cli`): write the report into
    ``cfg.out`` and print its findings (or, with ``format=json``, the whole report as JSON);
    the report directory."""
    cfg.check()
    if not cfg.out:
        raise UserError("compare.run writes a report directory: set out (print_json prints only)")
    out = Path(cfg.out)
    report, data = compare(cfg.dirs, out, cfg.title or None)
    if cfg.format == "json":
        _dump(data)
    elif not cfg.quiet:
        for f in report.findings:
            print(f"[{f.severity}] {f.rule}: {f.text}")
        if not report.findings:
            print("no findings")
        plots = f"{len(data['images'])} plots: " + ", ".join(data["images"])
        print(f"report: {out / 'report.md'}  {out / 'report.html'}  ({plots})")
    return out


def print_json(cfg: CompareConfig) -> None:
    """``--format json`` without ``--out``: the report as JSON on stdout, nothing written (for
    scripts: ``compare runs/a runs/b --format json | jq``)."""
    cfg.check()
    _dump(compare(cfg.dirs, None, cfg.title or None)[1])


def _dump(data: dict[str, Any]) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
