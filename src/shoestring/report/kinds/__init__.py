"""The run kinds ``compare`` knows, one module each: detect a directory's kind from its files,
load it, and ask every kind for its sections, findings and report.json entries.

Why a registry: each kind hands over one :class:`~shoestring.report.parts.Kind` record, so a
new kind is one module plus one line in :data:`KINDS`. Detection goes by the files alone, never
the directory's name; an unknown directory is an error naming what was found and which kinds are
known, never silently left out of the report.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from shoestring.errors import UserError
from shoestring.report.accuracy import protocol_findings
from shoestring.report.blocks import Finding, Section
from shoestring.report.parts import Kind, SectionContext, of_kind, overview_section
from shoestring.report.rules import naming_findings, order_findings, status_findings
from shoestring.report.run import RunInfo, last_step, read_json_or_error
from shoestring.rundir.directory import read_metrics
from shoestring.rundir.lock import dead_holder

from . import analysis, bench, generate, grpo, hybrid, prepare, progressive, study, train

__all__ = ["KINDS", "all_findings", "build_sections", "detect_kind", "load_run", "load_runs"]
__all__ += ["run_record"]

#: Every kind, in the order of the report's sections.
KINDS: tuple[Kind, ...] = tuple(
    m.KIND for m in (train, hybrid, bench, grpo, progressive, study, analysis, prepare, generate)
)


def _known_kinds_text() -> str:
    return "; ".join(f"{k.name}: {k.writer}" for k in KINDS)


def _kind_of_result(path: Path) -> str | None:
    """The kind whose own result file ``path`` holds (a directory without summary.json)."""
    for k in KINDS:
        if k.result_file and (path / k.result_file).is_file():
            data = read_json_or_error(path / k.result_file) if k.result_key else {}
            if k.result_key is None or (isinstance(data, dict) and k.result_key in data):
                return k.name
    return None


def detect_kind(path: Path) -> str:
    """The kind of ``path`` from its files (see :data:`KINDS`); UserError when unknown."""
    if not path.exists():
        raise UserError(f"{path} does not exist; give run directories written by shoestring")
    if not path.is_dir():
        raise UserError(f"{path} is a file; compare takes run directories (the folder it is in?)")
    if (path / "summary.json").is_file():
        summary = read_json_or_error(path / "summary.json")
        skind = summary.get("kind") if isinstance(summary, dict) else None
        for k in KINDS:
            if k.summary_kind is not None and k.summary_kind == skind and k.claims(summary):
                return k.name
        raise UserError(
            f"{path}/summary.json says kind {skind!r}, which compare does not know. Known kinds: "
            f"{_known_kinds_text()}. A newer shoestring may know it."
        )
    if (name := _kind_of_result(path)) is not None:
        return name
    if (path / "report.json").is_file():
        data = read_json_or_error(path / "report.json")
        if isinstance(data, dict) and data.get("kind") == "compare_report":
            raise UserError(
                f"{path} is a report written by `shoestring compare`, not a run; compare the "
                "run directories it was made from: "
                + " ".join(str(r.get("path")) for r in data.get("runs", []))
            )
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
    files = ["summary.json"] + [
        f"{k.result_file}" + (f" with {k.result_key}" if k.result_key else "")
        for k in KINDS
        if k.result_file
    ]
    raise UserError(
        f"{path} is not a run directory compare knows: found {shown or 'nothing (it is empty)'}; "
        f"looked for {', '.join(files[:-1])}, or {files[-1]}. Known kinds: {_known_kinds_text()}"
    )


def _kind(name: str) -> Kind:
    return next(k for k in KINDS if k.name == name)


def load_run(path: str | Path) -> RunInfo:
    """Detect the kind of ``path`` and read its files."""
    p = Path(path)
    kind = _kind(detect_kind(p))

    def read(name: str | None, default: Any) -> Any:
        return read_json_or_error(p / name) if name and (p / name).is_file() else default

    # a result file without summary.json (analysis.json, results.json) is written once, at the
    # end, atomically: its presence means the work it reports finished
    inferred = {"kind": kind.name, "status": "finished", "status_inferred": True}
    summary = read("summary.json", {}) or inferred
    run = RunInfo(p, kind.name, str(summary.get("run_name") or p.resolve().name), summary)
    run.config, run.result = read("config.json", {}), read(kind.result_file, None)
    if not isinstance(run.config, dict):
        raise UserError(
            f"{p / 'config.json'} does not hold a JSON object; the directory is damaged"
        )
    if (p / "metrics.jsonl").is_file():
        run.metrics = read_metrics(p)
    if kind.load is not None:
        kind.load(run)
    if run.status == "running":
        files = (p / "summary.json", p / "metrics.jsonl")
        mtimes = [f.stat().st_mtime for f in files if f.exists()]
        run.idle_seconds = time.time() - max(mtimes) if mtimes else None
        pid = str((dead_holder(p) or {}).get("pid", ""))
        run.dead_writer = int(pid) if pid.isdigit() else None
    return run


def _claims_to_be_a_run(path: Path) -> bool:
    """Whether ``path`` has a run directory's summary.json (so a failure to read it is news;
    a model directory's config.json alone is not)."""
    return (path / "summary.json").is_file()


def _expand(path: Path, skipped: list[str] | None, depth: int = 2) -> list[Path]:
    """A directory that is not a run but holds runs (``runs/``; a benchmark's output folder
    holding ``runs/``, ``depth`` levels down at most) stands for those runs.

    A child that looks like a run (it has summary.json) but cannot be read goes to
    ``skipped`` with its one-line reason (raised where ``skipped`` is None); other folders
    (``data/``, ``model/``) are not runs and are passed over."""
    try:
        detect_kind(path)
        return [path]
    except UserError as err:
        if not path.is_dir() or depth == 0 or _claims_to_be_a_run(path):
            raise
        children = []
        for child in sorted(c for c in path.iterdir() if c.is_dir()):
            try:
                children += _expand(child, skipped, depth - 1)
            except UserError as child_err:
                if _claims_to_be_a_run(child):
                    if skipped is None:
                        raise
                    skipped.append(str(child_err))
        if not children:
            raise err from None
        return children


def load_runs(paths: list[str | Path], skipped: list[str] | None = None) -> list[RunInfo]:
    """Load every directory (a parent of run directories stands for its runs); labels unique.

    With ``skipped`` (a list), a directory that cannot be read (a binary summary.json, a
    config.json that is not JSON ...) is left out and its one-line reason appended, so one bad
    directory never stops a report on the good ones; when none can be read the first reason is
    raised. Without it, the first bad directory raises."""
    expanded: list[Path] = []
    first_error: UserError | None = None
    for p in paths:
        try:
            found = _expand(Path(p), skipped)
        except UserError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            first_error = first_error or err
            continue
        for q in found:
            if q.resolve() not in {e.resolve() for e in expanded}:
                expanded.append(q)
    runs = []
    for p in expanded:
        try:
            runs.append(load_run(p))
        except UserError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            first_error = first_error or err
    if not runs and first_error is not None:
        raise first_error
    seen = Counter(r.label for r in runs)
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.path.resolve().parent.name}/{r.path.resolve().name}"
    return runs


def _own(runs: list[RunInfo]) -> list[tuple[Kind, list[RunInfo]]]:
    """Every kind present, with its own runs (see :attr:`Kind.covers`)."""
    return [(k, mine) for k in KINDS if (mine := of_kind(runs, k.name, *k.covers))]


def build_sections(runs: list[RunInfo], ctx: SectionContext) -> list[Section]:
    """The overview, then each kind's sections for the kinds present, in :data:`KINDS` order
    (a report on one bench or one analysis adds the detail sections its command showed)."""
    return [overview_section(runs)] + [s for k, mine in _own(runs) for s in k.sections(mine, ctx)]


def all_findings(runs: list[RunInfo]) -> list[Finding]:
    """Every rule over every run: the shared ones (status, naming, protocol) and each kind's."""
    out = status_findings(runs)
    for k, mine in _own(runs):
        out += [f for items, group in k.speed(mine) for f in naming_findings(items, group)]
    out += protocol_findings([a for k, mine in _own(runs) for a in k.accuracies(mine)])
    return order_findings(out + [f for k in KINDS for f in k.findings(runs)])


def run_record(r: RunInfo) -> dict[str, Any]:
    """One run for ``--format json``: identity, status, and its kind's headline numbers."""
    return {
        "label": r.label,
        "kind": r.kind,
        "path": str(r.path),
        "status": r.status,
        "status_text": r.status_text(),
        "is_result": r.finished,
        "last_step": last_step(r),
        **_kind(r.kind).record(r),
    }
