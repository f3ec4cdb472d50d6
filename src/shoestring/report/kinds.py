"""Which kind of directory is this? Detect it from its files and load what ``compare`` needs.

Why a separate module: every command writes a run directory with a ``summary.json`` whose
``kind`` names the writer (docs/run-directory.md), but a few result directories are written by
benchmark scripts or by older versions and only have their own result file. Detection goes by
the files alone, never by the directory's name, and a directory that is none of the known kinds
is an error that says what was found there and which kinds are known, instead of a report that
silently leaves it out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.errors import UserError
from shoestring.rundir.directory import read_json, read_metrics
from shoestring.rundir.lock import dead_holder

__all__ = [
    "KNOWN_KINDS",
    "TRAINING_KINDS",
    "RunInfo",
    "detect_kind",
    "flatten",
    "load_run",
    "load_runs",
]

#: kind -> what writes it (shown in the error for an unknown directory).
KNOWN_KINDS: dict[str, str] = {
    "train": "`shoestring train` (summary.json kind 'train', trainer 'plain')",
    "hybrid": "`shoestring train --trainer hybrid` (summary.json kind 'train', trainer 'hybrid')",
    "bench": "`shoestring bench` (summary.json kind 'bench')",
    "grpo": "`shoestring grpo` (summary.json kind 'grpo')",
    "progressive": "`shoestring progressive` (summary.json kind 'progressive')",
    "study": "`shoestring search` studies (summary.json kind 'study' or results.json with trials)",
    "analysis": "`shoestring analyze` (summary.json kind 'analysis' or analysis.json)",
    "hybrid_benchmark": "benchmarks/hybrid_vs_baseline.py (hybrid_benchmark.json)",
}
#: Kinds whose loss curves and throughput share the training-run section.
TRAINING_KINDS = ("train", "hybrid")
#: Statuses that mean the numbers of a run are its results.
FINISHED = "finished"
# A run that says "running" but has written nothing for this long was probably killed.
STALE_SECONDS = 600.0


@dataclass
class RunInfo:
    """One input directory, loaded: everything a report section or a finding rule reads."""

    path: Path
    kind: str
    label: str
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific files
    idle_seconds: float | None = None  # since the last write, for a run that says "running"
    # for a run that says "running": its writer's pid when the lock file names a dead process
    dead_writer: int | None = None

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "unknown")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def name_text(self) -> str:
        """Everything a person reads as this run's name: label, directory, preset, variant."""
        parts = [self.label, self.path.name, str(self.config.get("preset") or "")]
        parts.append(str(self.config.get("variant") or ""))
        return " ".join(p for p in parts if p)

    def status_text(self) -> str:
        """``finished``, or e.g. ``running (step 12 of 30; nothing written for 14 min)``."""
        s = self.status
        if s == FINISHED:
            return s
        step = last_step(self)
        total = self.summary.get("max_steps") or _dig(self.config, "train.max_steps")
        total = total or self.config.get("max_steps")
        bits = []
        if step is not None:
            bits.append(f"step {step}" + (f" of {total}" if total else ""))
        if s == "running" and self.dead_writer is not None:
            bits.append(f"its process {self.dead_writer} is gone: killed")
        elif s == "running" and self.idle_seconds is not None and self.idle_seconds > STALE_SECONDS:
            bits.append(f"nothing written for {self.idle_seconds / 60:.0f} min: probably killed")
        return s + (f" ({'; '.join(bits)})" if bits else "")


def _dig(d: dict[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def last_step(run: RunInfo) -> int | None:
    """The last step a run logged (its progress when it did not finish)."""
    if run.summary.get("steps") is not None:
        return int(run.summary["steps"])
    steps = [r["step"] for r in run.metrics if isinstance(r.get("step"), int)]
    return max(steps) if steps else None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (shown as JSON)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_json_or_error(path: Path) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc}); the run directory is damaged - rerun the "
            "command that wrote it, or leave this directory out of the comparison"
        ) from None


def _known_kinds_text() -> str:
    return "; ".join(f"{k}: {v}" for k, v in KNOWN_KINDS.items())


def detect_kind(path: Path) -> str:
    """The kind of ``path`` from its files (see :data:`KNOWN_KINDS`); UserError when unknown."""
    if not path.exists():
        raise UserError(f"{path} does not exist; give run directories written by shoestring")
    if not path.is_dir():
        raise UserError(f"{path} is a file; compare takes run directories (the folder it is in?)")
    summary_path = path / "summary.json"
    if summary_path.is_file():
        summary = _read_json_or_error(summary_path)
        kind = summary.get("kind") if isinstance(summary, dict) else None
        if kind == "train":
            return "hybrid" if summary.get("trainer") == "hybrid" else "train"
        if kind in KNOWN_KINDS:
            return str(kind)
        raise UserError(
            f"{path}/summary.json says kind {kind!r}, which compare does not know. Known kinds: "
            f"{_known_kinds_text()}. A newer shoestring may know it."
        )
    if (path / "hybrid_benchmark.json").is_file():
        return "hybrid_benchmark"
    results = path / "results.json"
    if results.is_file():
        data = _read_json_or_error(results)
        if isinstance(data, dict) and "trials" in data:
            return "study"
    if (path / "analysis.json").is_file():
        return "analysis"
    report = path / "report.json"
    if report.is_file():
        data = _read_json_or_error(report)
        if isinstance(data, dict) and data.get("kind") == "compare_report":
            raise UserError(
                f"{path} is a report written by `shoestring compare`, not a run; compare the "
                "run directories it was made from: "
                + " ".join(str(r.get("path")) for r in data.get("runs", []))
            )
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
    raise UserError(
        f"{path} is not a run directory compare knows: found {shown or 'nothing (it is empty)'}; "
        f"looked for summary.json, hybrid_benchmark.json, results.json with trials, or "
        f"analysis.json. Known kinds: {_known_kinds_text()}"
    )


def _idle_seconds(path: Path) -> float | None:
    mtimes = [
        p.stat().st_mtime for p in (path / "summary.json", path / "metrics.jsonl") if p.exists()
    ]
    return time.time() - max(mtimes) if mtimes else None


def _bench_problems(path: Path, summary: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """Per-model problem records (idx -> record) for paired tests across bench directories."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for m in summary.get("models", []):
        rel = m.get("problems_file")
        if not rel:
            continue
        recs = read_metrics(path / rel)  # same JSONL reader: skips a line cut by a kill
        shash = m.get("settings_hash")
        out[m["label"]] = {
            int(r["idx"]): r
            for r in recs
            if "idx" in r and (shash is None or r.get("settings_hash") in (None, shash))
        }
    return out


def load_run(path: str | Path) -> RunInfo:
    """Detect the kind of ``path`` and read its files."""
    p = Path(path)
    kind = detect_kind(p)
    summary: dict[str, Any] = {}
    if (p / "summary.json").is_file():
        summary = _read_json_or_error(p / "summary.json")
    config: dict[str, Any] = {}
    if (p / "config.json").is_file():
        config = _read_json_or_error(p / "config.json")
    if not summary:
        # a result file without summary.json (analysis.json, results.json) is written once, at
        # the end, atomically: its presence means the work it reports finished
        summary = {"kind": kind, "status": FINISHED, "status_inferred": True}
    label = str(summary.get("run_name") or p.resolve().name)
    run = RunInfo(path=p, kind=kind, label=label, summary=summary, config=config)
    if (p / "metrics.jsonl").is_file():
        run.metrics = read_metrics(p)
    if run.status == "running":
        run.idle_seconds = _idle_seconds(p)
        pid = str((dead_holder(p) or {}).get("pid", ""))
        run.dead_writer = int(pid) if pid.isdigit() else None
    if kind == "bench":
        run.extra["problems"] = _bench_problems(p, summary)
    elif kind == "study":
        if (p / "results.json").is_file():
            run.extra["results"] = _read_json_or_error(p / "results.json")
    elif kind == "analysis":
        if (p / "analysis.json").is_file():
            run.extra["analysis"] = _read_json_or_error(p / "analysis.json")
    elif kind == "hybrid_benchmark":
        data = _read_json_or_error(p / "hybrid_benchmark.json")
        run.extra["benchmark"] = data
        if run.summary.get("status_inferred"):
            run.summary["status"] = data.get("status", FINISHED)
    return run


def _expand(path: Path) -> list[Path]:
    """A directory that is not a run but holds runs (``runs/``) stands for those runs."""
    try:
        detect_kind(path)
        return [path]
    except UserError as err:
        if not path.is_dir():
            raise
        children = []
        for child in sorted(c for c in path.iterdir() if c.is_dir()):
            try:
                detect_kind(child)
            except UserError:
                continue
            children.append(child)
        if not children:
            raise err from None
        return children


def load_runs(paths: list[str | Path]) -> list[RunInfo]:
    """Load every directory (a parent of run directories stands for its runs); labels unique."""
    expanded: list[Path] = []
    for p in paths:
        for q in _expand(Path(p)):
            if q.resolve() not in {e.resolve() for e in expanded}:
                expanded.append(q)
    runs = [load_run(p) for p in expanded]
    for kind_run in runs:
        if kind_run.kind == "hybrid_benchmark":
            # its arms' run directories are training runs: bring them into the same report
            for sub in _benchmark_run_dirs(kind_run):
                if sub.resolve() not in {r.path.resolve() for r in runs}:
                    try:
                        runs.append(load_run(sub))
                    except UserError:
                        continue
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.path.resolve().parent.name}/{r.path.resolve().name}"
    return runs


def _benchmark_run_dirs(run: RunInfo) -> list[Path]:
    """Run directories named by a hybrid_benchmark.json (arms -> seeds -> run dirs)."""
    data = run.extra.get("benchmark", {})
    found: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data.get("arms", {}))
    out: list[Path] = []
    for s in found:
        for cand in (Path(s), run.path / s):
            if (cand / "summary.json").is_file():
                out.append(cand)
                break
    if not out and (run.path / "runs").is_dir():
        out = sorted(c for c in (run.path / "runs").iterdir() if (c / "summary.json").is_file())
    return out
