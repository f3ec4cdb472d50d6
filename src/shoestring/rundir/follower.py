"""What a rank other than 0 holds of a run directory under ``torchrun``: its paths, no writes.

Why a stand-in rather than ``None``: a GRPO rank runs the same step loop as rank 0 (it
generates its share, computes its share of the loss, joins every collective), and that loop
logs, records metrics and merges summary fields as it goes. Giving the other ranks an object
with :class:`~shoestring.rundir.directory.RunDir`'s surface that writes nothing keeps one loop
for every rank, while the directory keeps one writer (rank 0, which holds its lock). The
paths stay real: every rank reads the newest checkpoint from them on ``--resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoestring.rundir.directory import RunPaths

__all__ = ["RunDirFollower"]


class RunDirFollower(RunPaths):
    """A read-only view of the run directory rank 0 writes (same attribute names as RunDir)."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.summary: dict[str, Any] = {}  # this rank's fields; never written to disk

    def log(self, message: str, *, echo: bool = True) -> None:
        """Rank 0 logs the run; another rank's lines would repeat its own."""

    def metric(self, record: dict[str, Any]) -> None:
        """Rank 0 writes ``metrics.jsonl``; every rank computes the same records."""

    def truncate_metrics_after(self, step: int) -> None:
        """Rank 0 owns ``metrics.jsonl``."""

    def update_summary(self, **fields: Any) -> None:
        """Kept in memory only: ``summary.json`` is rank 0's."""
        self.summary.update(fields)

    def close(self) -> None:
        """Nothing is open."""
