"""What every command's run lifecycle does last: write ``report.md`` (and a model card where the
run saved a model), so no command has to remember to.

Why here and not in :mod:`shoestring.rundir.lifecycle`: the run directory is the lowest layer and
the report is built on top of it; the lifecycle takes finalizers as callables, and this module,
above both, names the ones a command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shoestring.models.card import write_model_card
from shoestring.report.build import write_run_report

__all__ = ["command_finalizers"]


def command_finalizers(*, model_card: bool = False) -> list[Callable[[Path], object]]:
    """The finalizers of a command's :class:`~shoestring.rundir.lifecycle.RunLifecycle`: the
    model card first where ``model/`` was saved (it quotes the final summary), then the report."""
    return [write_model_card, write_run_report] if model_card else [write_run_report]
