"""One run lifecycle for every command: start, monitor, signals, status and summary.

Why one context manager: train, bench, grpo, progressive, analyze and search all need the same
SIGTERM handling, monitor thread and status bookkeeping, and separate copies each get a
different corner wrong. :class:`RunLifecycle` owns all of it::

    rundir = RunDir(path, "bench")
    with RunLifecycle(rundir, config=to_dict(cfg), summary=lambda: {"steps": state.step}) as life:
        ...                     # the command's work
        life.fields["extra"] = 1  # merged into summary.json at the end

The run directory's writer lock (:mod:`shoestring.rundir.lock`) is taken when the
:class:`~shoestring.rundir.directory.RunDir` is opened - before anything is written, so a second
writer is refused untouched - and released when the lifecycle closes it on the way out (or,
with ``close=False``, when the command closes it after its closing lines).

On entry it writes ``config.json`` and a ``running`` summary (versions, host), starts the
:class:`~shoestring.rundir.monitor.SystemMonitor` thread and turns SIGTERM into
``KeyboardInterrupt`` (only where no handler was installed, and only in the main thread). On
exit it decides the status - ``finished``; ``interrupted`` on Ctrl-C or SIGTERM; ``failed``
on any other exception, with its one-line message (:func:`shoestring.failures.short_reason`)
- unless the body chose one with :meth:`RunLifecycle.set_status`, restores the signal
handler, stops the monitor, and writes the final summary (``summary()`` is called then, so
it sees the end state), then runs the ``finalizers`` - callables of the run directory's path
that write what is built from the final summary (the report, a model card) - in order, before
the lock is released. A finalizer that fails is one warning line on stderr, never the run's
status: the run's own outcome is already on disk. Exceptions are never swallowed: the caller
still sees them. With ``rundir=None`` (a DDP rank other than 0) only the signal handling
applies.

A stop signal the body does not respond to within :attr:`RunLifecycle.STOP_GRACE_SECONDS`, or
three times its longest step (reported with :meth:`RunLifecycle.work_took`) - a step that
cannot end - is not waited on for ever: the lifecycle's
:class:`~shoestring.rundir.stop_watchdog.StopWatchdog` writes the final ``interrupted`` summary
(and that of every other run directory this process has open) and ends the process, so no
signal leaves a run at ``running``. A body that starts a long cleanup after a signal (a
checkpoint) says so with :meth:`RunLifecycle.responded`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from shoestring.failures import short_reason
from shoestring.rundir.directory import STATUSES, RunDir, abandon_open_run_dirs
from shoestring.rundir.monitor import SystemMonitor
from shoestring.rundir.stop_watchdog import StopWatchdog, stop_responded, work_took

__all__ = ["RunLifecycle", "StepBoundaryInterrupts", "raise_keyboard_interrupt"]


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: stop the way Ctrl-C does, so the same cleanup runs."""
    raise KeyboardInterrupt


class StepBoundaryInterrupts:
    """Ctrl-C and SIGTERM during a step loop stop it at the next step boundary.

    Why: Python raises ``KeyboardInterrupt`` wherever the signal lands, and one that lands in
    a Python function that autograd calls during ``backward`` (a custom ``Function``'s
    backward, a hook) can leave the autograd engine waiting forever - the run then neither
    trains nor exits. Inside this context manager the first signal only sets a flag that
    :meth:`check` turns into ``KeyboardInterrupt`` between steps, where the loop's usual
    cleanup (a checkpoint, the ``interrupted`` status) runs; a second signal raises at once,
    for a user who does not want to wait for the step to end. Outside the main thread it does
    nothing (only the main thread may set signal handlers).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, notice: Callable[[str], None] | None = None) -> None:
        self.requested: int | None = None  # the signal that asked to stop, if any
        self._previous: dict[int, Any] = {}
        # a step can take minutes: say at once that the signal was heard and what happens next
        self._notice = notice or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second time: stop now
            raise KeyboardInterrupt
        self.requested = signum
        self._notice(
            f"{signal.Signals(signum).name}: stopping after this step (a checkpoint is saved); "
            "send it again to stop at once"
        )

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was asked for since the last step."""
        if self.requested is not None:
            raise KeyboardInterrupt

    def __enter__(self) -> StepBoundaryInterrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()


class RunLifecycle:
    """Context manager that owns a run directory's status from ``running`` to the end."""

    #: Seconds a run may take to respond to SIGINT/SIGTERM before it is ended from outside.
    STOP_GRACE_SECONDS = 15.0

    def __init__(
        self,
        rundir: RunDir | None,
        *,
        config: dict[str, Any] | None = None,
        start_fields: dict[str, Any] | None = None,
        summary: Callable[[], dict[str, Any]] | None = None,
        monitor_interval: float = 0.5,
        close: bool = True,
        finalizers: Sequence[Callable[[Path], object]] = (),
    ) -> None:
        self.rundir = rundir
        self.config = config
        self.start_fields = start_fields or {}
        self.summary = summary
        self.monitor_interval = monitor_interval
        self.close_on_exit = close
        self.finalizers = list(finalizers)
        self.finalizer_failures: list[str] = []  # names of the finalizers that raised
        self.fields: dict[str, Any] = {}
        self.status: str | None = None
        self.error: str | None = None
        self.monitor: SystemMonitor | None = None
        self._prev_handler: Any = None
        self._installed = False
        self._t0 = 0.0
        self._watchdog: StopWatchdog | None = None

    # -- the body's say
    def set_status(self, status: str, error: str | None = None) -> None:
        """Choose the final status (e.g. ``pruned``, or ``failed`` for a handled error)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        self.status, self.error = status, error

    @staticmethod
    def responded() -> None:
        """The body has heard a stop signal and is cleaning up (saving a checkpoint, waiting
        for a child that saves one): the process's watchdog no longer ends it meanwhile."""
        stop_responded()

    @staticmethod
    def work_took(seconds: float) -> None:
        """One unit of work a stop waits for (a step, an evaluation) took ``seconds``: the
        watchdog then waits at least three times the longest before it ends the process."""
        work_took(seconds)

    @property
    def wall_seconds(self) -> float:
        """Seconds since the lifecycle started."""
        return time.perf_counter() - self._t0

    # -- context manager
    def __enter__(self) -> RunLifecycle:
        self._t0 = time.perf_counter()
        if self.rundir is not None:
            try:
                if self.config is not None:
                    self.rundir.start(self.config, **self.start_fields)
                else:
                    self.rundir.update_summary(status="running", **self.start_fields)
            except BaseException as exc:
                # e.g. a full disk: leave what can be written, release the lock, re-raise
                self.rundir.abandon(exc)
                raise
            self.monitor = SystemMonitor(self.monitor_interval).start()
            self._watchdog = StopWatchdog(self.STOP_GRACE_SECONDS, self._stop_from_outside)
            self._watchdog.start()
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            if prev in (signal.SIG_DFL, None):
                self._prev_handler, self._installed = prev, True
                signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            stop_responded()  # heard: an outer run's watchdog (if it has one) waits for us
        if self._watchdog is not None:  # the body ended: whatever follows is ours to finish
            self._watchdog.close()
        if self._installed:
            signal.signal(signal.SIGTERM, self._prev_handler or signal.SIG_DFL)
            self._installed = False
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.status = self.status or "interrupted"
        elif exc is not None and self.status in (None, "finished"):
            self.status, self.error = "failed", self.error or short_reason(exc)
        status = self.status or "finished"
        if self.rundir is None:
            return
        self.rundir.finish(status, **self._final_fields())
        self._finalize(self.rundir.path)
        if self.close_on_exit:
            self.rundir.close()

    def _final_fields(self) -> dict[str, Any]:
        """summary.json's closing fields: the body's ``summary()`` and ``fields``, the system
        metrics, the wall time and the error."""
        fields: dict[str, Any] = {}
        if self.summary is not None:
            try:
                fields.update(self.summary())
            except Exception as summary_exc:  # noqa: BLE001 - never mask the run's own error
                fields["summary_error"] = f"{type(summary_exc).__name__}: {summary_exc}"
        fields.update(self.fields)
        fields["system"] = self.monitor.stop() if self.monitor is not None else {}
        fields.setdefault("session_wall_seconds", round(self.wall_seconds, 3))
        fields["error"] = self.error
        return fields

    def _stop_from_outside(self, signum: int, reason: str) -> None:
        """The watchdog's last word (its thread; the main thread is stuck in a step): the
        final ``interrupted`` summary and report, every other open run directory finished
        too. Never raises - the process ends right after."""
        print(f"shoestring: {reason}", file=sys.stderr, flush=True)
        if self.rundir is None:
            return
        try:
            self.status, self.error = "interrupted", reason
            self.rundir.log(f"interrupted: {reason}", echo=False)
            self.rundir.finish("interrupted", **self._final_fields())
            self._finalize(self.rundir.path)
        except Exception as exc:  # noqa: BLE001 - the process ends either way
            print(f"warning: could not finish {self.rundir.path}: {exc}", file=sys.stderr)
        abandon_open_run_dirs(reason, "interrupted")  # e.g. a search trial inside a study

    def _finalize(self, path: Path) -> None:
        """Run every finalizer on the finished directory; a failure is a warning, not a status."""
        for finalizer in self.finalizers:
            try:
                finalizer(path)
            except Exception as exc:  # noqa: BLE001 - the run's outcome is already recorded
                name = getattr(finalizer, "__name__", repr(finalizer))
                self.finalizer_failures.append(name)
                print(
                    f"warning: {name} could not finish {path}: {short_reason(exc)}",
                    file=sys.stderr,
                    flush=True,
                )
