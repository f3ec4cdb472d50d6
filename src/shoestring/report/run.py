"""One input directory as ``compare`` sees it: its summary, config, metrics and result files.

Why: every kind reads the same loaded directory, and the state questions every report asks of a
run - did it finish, where did it stop, is its writer gone - are answered here once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.errors import UserError
from shoestring.rundir.directory import read_json

__all__ = ["FINISHED", "RunInfo", "dig", "flatten", "last_step", "read_json_or_error"]

#: The status that means the numbers of a run are its results.
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
    result: Any = None  # the kind's own result file (results.json, analysis.json), if any
    extra: dict[str, Any] = field(default_factory=dict)  # what a kind's loader read besides
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

    def series(self, **data: Any) -> dict[str, Any]:
        """This run's curve data for :mod:`shoestring.report.plots`: identity, state, ``data``."""
        return {"label": self.label, "finished": self.finished, "status": self.status, **data}

    def status_text(self) -> str:
        """``finished``, or e.g. ``running (step 12 of 30; nothing written for 14 min)``."""
        s = self.status
        if s == FINISHED:
            return s
        step = last_step(self)
        total = self.summary.get("max_steps") or dig(self.config, "train", "max_steps")
        total = total or self.config.get("max_steps")
        bits = []
        if step is not None:
            bits.append(f"step {step}" + (f" of {total}" if total else ""))
        if s == "running" and self.dead_writer is not None:
            bits.append(f"its process {self.dead_writer} is gone: killed")
        elif s == "running" and self.idle_seconds is not None and self.idle_seconds > STALE_SECONDS:
            bits.append(f"nothing written for {self.idle_seconds / 60:.0f} min: probably killed")
        return s + (f" ({'; '.join(bits)})" if bits else "")


def dig(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not a dict (older files)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


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
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_json_or_error(path: Path) -> Any:
    """``path`` parsed, or a UserError that says the directory is damaged and what to do.

    Binary garbage (a ``UnicodeDecodeError``) and an unreadable file are the same one line as
    invalid JSON: a reader of run directories names the bad file, never a traceback."""
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        what = "is not valid JSON" if isinstance(exc, json.JSONDecodeError) else "is unreadable"
        if isinstance(exc, UnicodeDecodeError):
            what = "is not text (binary or damaged)"
        raise UserError(
            f"{path} {what}; the run directory is damaged - rerun the command that wrote it, or "
            "leave this directory out of the comparison"
        ) from None
