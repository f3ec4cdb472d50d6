"""One place that turns an error into the one line a user reads: what failed, where, what to do.

Why: left alone, a read-only ``--out`` ends in ``OSError: [Errno 30] Read-only file system``
under a 40-line traceback, a full disk the same, and a refused pickle in torch's text advising
``weights_only=False`` - the one thing a user must not do. :func:`failure_message` knows these
environment errors (permissions, read-only file systems, a full disk or quota, missing paths,
damaged files, refused pickles) and shoestring's own ``UserError``/``ConfigError``; the CLI
prints its line instead of a traceback (``--debug`` shows the traceback too), and the run
lifecycle writes the same line into ``summary.json``'s ``error``. An error it does not know is
a bug and keeps its traceback.

This module is light on purpose (no torch): ``shoestring --help`` imports the CLI that uses it.
"""

from __future__ import annotations

import errno
import os
import pickle

from shoestring.config import ConfigError
from shoestring.errors import UserError

__all__ = ["failure_message", "short_reason"]

_WHAT_TO_DO = {
    errno.EACCES: "permission denied; choose a directory you can write (e.g. another --out) "
    "or fix its permissions",
    errno.EPERM: "operation not permitted; choose a directory you can write (e.g. another "
    "--out) or fix its permissions",
    errno.EROFS: "read-only file system; choose a writable directory (e.g. another --out)",
    errno.ENOSPC: "no space left on the device; free space (fewer kept checkpoints: "
    "train.keep_checkpoints / grpo.save_total_limit) or write elsewhere (--out) - files and "
    "checkpoints written before this one are complete",
    errno.EDQUOT: "disk quota exceeded; free space or write elsewhere (--out)",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "is a directory where a file was expected; check the path",
    errno.ENAMETOOLONG: "file name too long; choose a shorter --out or --name",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and retry",
}


# how libraries that do their own I/O (safetensors in Rust, torch's zip writer) say "disk full"
_DISK_FULL_TEXTS = ("No space left on device", "StorageFull", "code: 28,", "Disk quota exceeded")


#: what gloo says on the surviving ranks when a peer process exits or stops answering
_PEER_RANK_TEXTS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting")


def _os_message(exc: OSError) -> str | None:
    what = _WHAT_TO_DO.get(exc.errno or -1)
    if what is None:
        return None
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(path not given by the system)"
    return f"{where}: {what}"


def _one(exc: BaseException) -> str | None:
    if isinstance(exc, (UserError, ConfigError)):
        return str(exc)
    if isinstance(exc, OSError):
        return _os_message(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
        # reached only where a reader did not name the file (see util/safe_load.py)
        return (
            "refused to unpickle a file that holds Python objects beyond tensors and plain "
            "values (unpickling can run code); use files written by shoestring, or convert "
            "trusted weights to safetensors"
        )
    if any(m in str(exc) for m in _DISK_FULL_TEXTS):
        return _WHAT_TO_DO[errno.ENOSPC] + " (the path was not given by the library that wrote)"
    if any(m in str(exc) for m in _PEER_RANK_TEXTS) and os.environ.get("WORLD_SIZE", "1") != "1":
        # gloo's words on this rank when another rank of the torchrun job died or hangs
        return (
            "another rank of this torchrun job stopped or is stuck (see its own output); the "
            "run directory is resumable: rerun the same command"
        )
    if type(exc).__name__ == "SafetensorError":
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        return f"a safetensors file is damaged ({first}); rewrite or re-download it"
    return None


def failure_message(exc: BaseException) -> str | None:
    """The one-line message for ``exc`` (or the error it was raised from); None for a bug."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        msg = _one(cur)
        if msg is not None:
            return msg
        cur = cur.__cause__
    return None


def short_reason(exc: BaseException) -> str:
    """What ``summary.json``'s ``error`` says: the one-line message, else ``Type: text``."""
    msg = failure_message(exc)
    if msg is not None:
        return msg
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
