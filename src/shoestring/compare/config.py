"""``CompareConfig``: what one ``shoestring compare`` call is asked, and where the report goes.

Why a module apart from :mod:`.cli` and :mod:`.run`: the command line builds this config
(defaults < ``--config FILE`` < the shortcut flags < ``--set``) before matplotlib is imported,
and the API :func:`shoestring.compare.run.run` takes it; kept here, neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoestring.config import opt, validate
from shoestring.errors import UserError

__all__ = ["CompareConfig"]


@dataclass
class CompareConfig:
    """What ``compare`` is asked; the command-line wiring is :mod:`shoestring.compare.cli`."""

    dirs: list[str] = opt([], "run directories (a directory holding runs stands for them)")
    out: str = opt("", "report directory (created; not a run directory); '' = none (json only)")
    title: str = opt("", "report title; '' = the run names")
    format: str = opt(
        "text",
        "stdout: findings and paths (text) or the whole report as JSON",
        choices=("text", "json"),
    )
    quiet: bool = opt(False, "text format: print only the report directory, not the findings")

    def check(self) -> CompareConfig:
        """Validate choices, and that there is something to compare and somewhere to put it."""
        validate(self)
        if not self.dirs:
            raise UserError("compare needs at least one run directory")
        if not self.out and self.format != "json":
            raise UserError(
                "give --out REPORT_DIR for report.md/report.html (or --format json to "
                "print the report as JSON only)"
            )
        return self
