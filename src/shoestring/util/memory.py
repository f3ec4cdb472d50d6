"""Memory facts every command needs the same way: is this exception an OOM, what is the peak RSS.

One definition, so the trainer's micro-batch back-off, search's OOM retry, the generation
engine's batch halving and bench/analyze's per-model peak memory agree on what an OOM is and
what "peak" measures.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import psutil
import torch

__all__ = ["current_rss_bytes", "is_oom_error", "peak_rss_bytes", "reset_peak_rss"]


def is_oom_error(exc: BaseException) -> bool:
    """True for CUDA and CPU allocator failures (torch raises several kinds)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None where /proc is absent)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, Linux >= 4.0) so a later read is the peak of
    what ran since; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM (proc(5))
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set since the last reset (VmHWM), or ru_maxrss where /proc is absent."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except OSError:
        return None
    # getrusage(2): Linux counts ru_maxrss in KiB, macOS in bytes
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    """This process's resident set now."""
    return int(psutil.Process().memory_info().rss)
