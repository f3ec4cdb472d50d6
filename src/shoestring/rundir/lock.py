"""One writer per run directory: an exclusive lock held from the first write to the last.

Why: without it, ``shoestring train --resume R`` while R is still training would be accepted,
and both processes would train the same steps into the same files. :class:`RunDirLock` is taken by
:class:`~shoestring.rundir.directory.RunDir` before it opens or writes anything, and released when
the run directory is closed (the :class:`~shoestring.rundir.lifecycle.RunLifecycle` closes it on
any exit; the kernel drops the lock when a process dies, even by SIGKILL).

How: ``RUN/.lock`` is locked with ``flock(LOCK_EX | LOCK_NB)`` and holds one JSON line naming
the holder (pid, host, process start time, start time, command). A second writer finds the lock
taken and gets :class:`~shoestring.errors.RunDirLockedError` naming the holder. A lock file left
by a dead process is stale: its flock is gone, and where the holder ran on this host its pid is
checked too (no such process, or a different process that reused the pid); the new writer takes
it over and says so. Where the file system has no flock, the pid/host check alone decides.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import weakref
from pathlib import Path
from typing import Any

import psutil

from shoestring.errors import RunDirLockedError

__all__ = ["LOCK_NAME", "RunDirLock", "dead_holder", "describe_holder", "refuse_if_held"]

LOCK_NAME = ".lock"
# a holder's recorded process start time may differ from psutil's by rounding
_CREATE_TIME_SLACK = 1.0


def _command_line() -> str:
    """This process's command line as a user typed it (``python -m shoestring`` shown as
    ``shoestring``), cut to 300 characters."""
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    argv[0] = "shoestring" if name in ("__main__.py", "shoestring") else name
    return shlex.join(argv)[:300]


def _this_holder() -> dict[str, Any]:
    me = psutil.Process()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_started": round(me.create_time(), 3),
        "locked_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": _command_line(),
    }


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 2026-...: shoestring train ...`` (or what is known of it)."""
    if not holder:
        return "an unknown process (the lock file is empty)"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("locked_at"):
        text += f", since {holder['locked_at']}"
    if holder.get("command"):
        text += f", running `{holder['command']}`"
    return text


def _holder_alive_here(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is a live process on this host (not a reused pid)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(holder["pid"]))
        started = float(holder.get("process_started") or 0.0)
        return not started or abs(proc.create_time() - started) <= _CREATE_TIME_SLACK
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _read_holder(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "command": f"(unreadable lock file: {raw[:60]!r})"}
    return data if isinstance(data, dict) else None


def dead_holder(run_dir: str | Path) -> dict[str, Any] | None:
    """The holder recorded in ``run_dir``'s lock file when it ran on this host and is gone
    (a killed writer); None when there is no lock file, it is live, or it ran elsewhere.

    Reads only: taking even a shared lock to test it could refuse a writer starting now.
    """
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read_holder(fd)
    finally:
        os.close(fd)
    if not holder or holder.get("host") != socket.gethostname() or _holder_alive_here(holder):
        return None
    return holder


def refuse_if_held(run_dir: str | Path) -> None:
    """Raise :class:`RunDirLockedError` now if a live process on this host holds ``run_dir``.

    Why: ``--resume`` of a run that is still training is refused by :class:`RunDirLock` when the
    run directory opens, which comes after torch and the model have loaded; this read-only
    check lets the command line refuse in the first moment instead. It only reads (like
    :func:`dead_holder`), so it never gets in a writer's way; the lock itself still decides.
    """
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return
    try:
        holder = _read_holder(fd)
    finally:
        os.close(fd)
    if holder and holder.get("host") == socket.gethostname() and _holder_alive_here(holder):
        raise RunDirLock(run_dir)._refusal(holder)


class RunDirLock:
    """The exclusive writer lock of one run directory (``acquire`` / ``release``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise :class:`RunDirLockedError`; returns a message when a stale
        lock of a dead process was taken over (the caller logs it), else None."""
        for _ in range(5):  # retry when the file is replaced between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                has_flock = self._flock(fd)
                holder = _read_holder(fd)
                if self._replaced_meanwhile(fd):
                    # the holder released and removed the file while we opened it: again
                    os.close(fd)
                    continue
                # with a flock the kernel already refused a live holder; without one, ask psutil
                if holder is not None and (not has_flock) and _holder_alive_here(holder):
                    raise self._refusal(holder)
                self._write_holder(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            # a RunDir dropped unclosed releases its lock when it is garbage-collected
            self._finalizer = weakref.finalize(self, os.close, fd)
            mine = holder is not None and holder.get("pid") == os.getpid()
            if holder is None or (mine and holder.get("host") == socket.gethostname()):
                return None  # a fresh lock, or this process's own left-over file
            gone = (
                "which is no longer running"
                if holder.get("host") == socket.gethostname()
                else "whose file-system lock is gone (it ended or its host went down)"
            )
            return (
                f"took over the stale lock of {self.path.parent}: it was held by "
                f"{describe_holder(holder)}, {gone}"
            )
        raise RunDirLockedError(f"could not lock {self.path}: it kept being replaced; retry")

    def _flock(self, fd: int) -> bool:
        """flock the file; False where the file system cannot (the pid check then decides)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            raise self._refusal(_read_holder(fd)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise

    def _replaced_meanwhile(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            return True

    def _refusal(self, holder: dict[str, Any] | None) -> RunDirLockedError:
        if (
            holder
            and holder.get("pid") == os.getpid()
            and holder.get("host") == socket.gethostname()
        ):
            return RunDirLockedError(
                f"{self.path.parent} is already open for writing in this process "
                f"(pid {os.getpid()}); close the first writer before opening another"
            )
        return RunDirLockedError(
            f"{self.path.parent} is in use by another shoestring process: "
            f"{describe_holder(holder)}. Wait for it to end (or stop it), or write elsewhere"
        )

    def _write_holder(self, fd: int) -> None:
        data = (json.dumps(_this_holder()) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)  # a stale holder's longer line must not leave a tail behind
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if self._finalizer is not None:
            self._finalizer.detach()
        # unlink while still holding the flock, and only our own file: a writer that opened it
        # meanwhile sees its inode vanish (_replaced_meanwhile) and retries on a fresh file
        with contextlib.suppress(OSError):
            if not self._replaced_meanwhile(fd):
                os.unlink(self.path)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self.fd is not None
