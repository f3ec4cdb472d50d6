"""A stop signal is never lost on a step that cannot end: after a grace period the run stops.

Why: Ctrl-C and SIGTERM are Python-level handlers, which run only when the main thread executes
Python again, and the trainer's handler waits for the step boundary on purpose (a
``KeyboardInterrupt`` inside autograd's backward can hang it). A step that never ends - a
``batch_size`` of a billion building its window list, a kernel that does not return - then
ignores SIGTERM, and the SIGKILL that follows leaves ``summary.json`` at ``running``.

How: :class:`StopWatchdog` registers a socket with :func:`signal.set_wakeup_fd`, into which the
interpreter's C-level handler writes each signal's number at once, even while the main thread is
stuck in C. A thread waits on it; after SIGINT or SIGTERM it gives the run ``grace`` seconds to
respond (reach its cleanup: :meth:`StopWatchdog.responded`) - or three times the longest unit
of work the run reported (:meth:`StopWatchdog.work_took`: a step, an evaluation), so a host
where one step honestly takes a minute still stops at a step boundary - and 2 seconds after a
second signal.
A run that has not responded by then is ended from this thread: ``stop(signum, reason)`` writes
the final ``interrupted`` summary, and the process exits with ``128 + signum``. The newest
checkpoint stays the last good one (checkpoints are written to a temporary name and renamed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["StopWatchdog", "stop_responded", "work_took"]

#: Seconds after a repeated stop signal before the run is ended from outside.
SECOND_SIGNAL_GRACE = 2.0
#: The grace is at least this many times the longest step the run reported.
WORK_GRACE_FACTOR = 3.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# the one watchdog that owns the wakeup fd (there is one per process): an inner run's response
# (a search trial trained in the study's process) reaches it through stop_responded()
_ACTIVE: list[StopWatchdog] = []


def work_took(seconds: float) -> None:
    """Tell the process's watchdog, if any, how long one unit of the run's work took."""
    for watchdog in _ACTIVE:
        watchdog.work_took(seconds)


def stop_responded() -> None:
    """Tell the process's watchdog, if any, that a stop signal was heard and cleanup began."""
    for watchdog in _ACTIVE:
        watchdog.responded()


class StopWatchdog:
    """Ends the process ``grace`` seconds after a stop signal the run did not respond to."""

    def __init__(self, grace: float, stop: Callable[[int, str], None]) -> None:
        self.grace = grace
        self._stop = stop  # writes the final record; called from the watchdog's thread
        self._responded = threading.Event()
        self._longest_work = 0.0  # seconds of the longest step/evaluation reported
        self._closed = threading.Event()
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StopWatchdog:
        """Start watching (main thread only, and only where no one else owns the wakeup fd:
        asyncio, or an outer run's watchdog, which then covers this run too)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # set_wakeup_fd requires a non-blocking fd
        previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's: give it back and do not watch
            signal.set_wakeup_fd(previous)
            self._close_sockets()
            return self
        self._thread = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
        self._thread.start()
        _ACTIVE.append(self)
        return self

    def work_took(self, seconds: float) -> None:
        """A unit of work the run waits for before it stops (a step) took ``seconds``."""
        self._longest_work = max(self._longest_work, seconds)

    def responded(self) -> None:
        """The run has reached its cleanup: a stop signal needs no help from here on."""
        self._responded.set()

    def close(self) -> None:
        """Stop watching and give the wakeup fd back (called by the owner on its way out)."""
        self._responded.set()
        if self._thread is None:
            return
        with contextlib.suppress(ValueError):  # not the main thread: nothing was registered
            signal.set_wakeup_fd(-1)  # start() registered only where none was set
        self._closed.set()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.send(b"\0")  # wakes the thread's recv; it sees _closed and ends
        self._thread.join(timeout=5)
        self._thread = None
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._reader, self._writer):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._reader = self._writer = None

    def _next_signal(self, timeout: float | None) -> int | None:
        """The next signal number written by the interpreter, None on timeout or close."""
        reader = self._reader
        if reader is None:
            return None
        try:
            reader.settimeout(timeout)
            data = reader.recv(1)
        except (TimeoutError, OSError):
            return None
        return data[0] if data else None

    def _watch(self) -> None:
        """Wait for a stop signal; then for the run to respond, or end it."""
        first: int | None = None
        while not self._closed.is_set():
            signum = self._next_signal(None)
            if signum is None:
                return  # closed
            if signum in _STOP_SIGNALS and not self._responded.is_set():
                first = signum
                break
        if first is None:
            return
        grace = max(self.grace, WORK_GRACE_FACTOR * self._longest_work)
        deadline = time.monotonic() + grace
        while (left := deadline - time.monotonic()) > 0:
            again = self._next_signal(left)
            if self._closed.is_set() or self._responded.is_set():
                return
            if again in _STOP_SIGNALS:  # asked again: the user will not wait out the grace
                deadline = min(deadline, time.monotonic() + SECOND_SIGNAL_GRACE)
        if self._closed.is_set() or self._responded.is_set():
            return
        name = signal.Signals(first).name
        self._stop(
            first,
            f"{name}: the step in progress did not end within {grace:.0f} s of the signal; "
            "the run was stopped without it (checkpoints written before it are intact)",
        )
        os._exit(128 + first)  # the main thread cannot be made to return: end the process
