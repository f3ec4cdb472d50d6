"""``SearchConfig``: what one ``shoestring search`` call is asked - a study, and how this
process works on it.

The study itself is the :class:`~shoestring.search.spec.StudySpec` this config extends: the
grid that is stored in the study and compared on resume. Everything added here - the storage,
the workers, threads, heartbeat, isolation, the placement and ``quiet`` - may differ between two
invocations of the same study, so none of it is part of the spec or of its identity. With
``join`` set the call adds a worker to an existing study, whose spec comes from the storage.

Kept apart from the study code so the command line builds and checks it without Optuna or
torch. Layers, lowest first: defaults < ``--config FILE`` < the shortcut flags < ``--set``; a
``--set`` under a training config's section (``train.max_steps=100``) is no key of this config:
it joins ``overrides``, the overrides of every trial.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoestring.cli_options import OutputConfig, layered_config, split_overrides
from shoestring.config import opt, validate
from shoestring.errors import UserError
from shoestring.run_config import RunConfig
from shoestring.search.location import DEFAULT_HEARTBEAT
from shoestring.search.spec import StudySpec

__all__ = ["RUN_SECTIONS", "SearchConfig", "StudyOutput", "default_worker_id", "search_config"]


def default_worker_id() -> str:
    """``HOST-PID``: a name no other live worker has, on this machine or another (a fixed
    default made two ``search`` processes on one study both ``w0``)."""
    return f"{socket.gethostname()}-{os.getpid()}"


#: The sections of a training config: a ``--set`` under one of them goes to every trial.
RUN_SECTIONS = tuple(
    f.name
    for f in dataclasses.fields(RunConfig)
    if dataclasses.is_dataclass(getattr(RunConfig(), f.name))
)


@dataclass
class StudyOutput(OutputConfig):
    """The ``output`` section, read for a study: resuming means running into the same directory
    again, so ``dir`` is the study directory itself and is never made unique."""

    dir: str = opt("", "the study directory; '' = ./study, or the joined study's directory")
    name: str = opt("", "a name under output.dir (default .) for the study directory")


@dataclass
class SearchConfig(StudySpec):
    """A study and this invocation's way of working on it; ``run(cfg)`` needs nothing else."""

    join: str = opt("", "join an existing study: its directory (SQLite) or its name in storage")
    storage: str = opt("", "Optuna storage URL; '' = sqlite study.db in the study directory")
    study_name: str = opt("", "study name in the storage; '' = the study directory's name")
    workers: int = opt(1, "local worker processes (threads are divided among them)", min=1)
    threads: int = opt(0, "torch threads per worker; 0 = physical cores / workers", min=0)
    heartbeat: float = opt(
        DEFAULT_HEARTBEAT, "seconds between trial heartbeats; 2x silent = re-queued", min=0.1
    )
    isolate: bool = opt(True, "train each trial in a child process (false: peak memory adds up)")
    max_trials: int = opt(0, "this worker stops after N trials; 0 = when the study is done", min=0)
    worker_id: str = opt("", "this worker's name in the results; '' = HOST-PID (unique)")
    progress: bool = opt(True, "a progress bar on stderr")
    output: StudyOutput = field(default_factory=StudyOutput)

    @property
    def echo(self) -> bool:
        """Per-trial lines and the closing table on the terminal (``output.quiet`` off)."""
        return not self.output.quiet

    @property
    def progress_bars(self) -> bool:
        """Whether to draw the progress bar: asked for, and not silenced by ``quiet``."""
        return self.progress and not self.output.quiet

    def study_dir(self) -> Path:
        """``output.dir`` (default ``./study``, or the ``join`` directory), or
        ``output.dir``/``output.name`` (default ``./NAME``) when a name is given."""
        if self.output.name:
            return Path(self.output.dir or ".") / self.output.name
        return Path(self.output.dir or self.join or "study")

    def check(self) -> SearchConfig:
        """Validate this invocation's fields and, for a new or resumed study, the spec."""
        validate(self)
        # two processes on one study must never share a name in its results
        self.worker_id = self.worker_id or default_worker_id()
        if self.join:  # the spec is the stored one; only where its data lives may differ here
            if self.data:
                self.data = str(Path(self.data).resolve())
            return self
        if not self.sizes or not self.variants:
            raise UserError(
                "say what to search: --sizes tiny,small --variants baseline,rope_only "
                "(or 'all'); --join STUDY adds a worker to an existing study"
            )
        super().check()
        return self


def search_config(*, config_file: str | None = None, overrides: Sequence[str] = ()) -> SearchConfig:
    """The checked config: defaults < ``config_file`` < ``overrides``, the training-config ones
    added to ``overrides`` after the file's own."""
    own, per_trial = split_overrides(overrides, RUN_SECTIONS)
    cfg = layered_config(SearchConfig(), config_file=config_file, overrides=own)
    cfg.overrides = [*cfg.overrides, *per_trial]
    return cfg.check()
