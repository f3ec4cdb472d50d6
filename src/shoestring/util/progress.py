"""Progress bars that read well on a terminal and in a log file: the one way to make one.

Why: a tqdm bar redraws itself with ``\\r`` several times a second. On a terminal that is a
bar; in a redirected stderr (a log file, CI, ``2> run.log``) it is kilobytes of frames on one
line, and warnings glue onto bar fragments. :func:`progress_bar` is tqdm on a terminal and, when
stderr is not one, the same counters as plain lines - one when the bar starts, one every
:func:`plain_interval` seconds (``SHOESTRING_PROGRESS_SECONDS``, default 30) and one at the end -
with no ``\\r`` and no bar glyphs. Callers use it exactly like ``tqdm(...)``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["PlainLines", "plain_interval", "progress_bar", "silence_library_bars"]

DEFAULT_PLAIN_SECONDS = 30.0


def plain_interval() -> float:
    """Seconds between two plain progress lines (``SHOESTRING_PROGRESS_SECONDS``)."""
    try:
        return max(0.0, float(os.environ.get("SHOESTRING_PROGRESS_SECONDS", DEFAULT_PLAIN_SECONDS)))
    except ValueError:
        return DEFAULT_PLAIN_SECONDS


class PlainLines:
    """A stream for tqdm that turns its ``\\r`` frames into whole lines on ``stream``.

    tqdm writes ``\\r<frame>`` (and blank frames to clear); each non-blank frame becomes one
    line, and a frame equal to the last one is not repeated.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> int:
        for part in text.replace("\n", "\r").split("\r"):  # every frame, whichever ending
            line = part.strip()
            if line and line != self._last:
                self.stream.write(line + "\n")
                self._last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _PlainProgress(tqdm):
    """tqdm whose frames are rate-limited to one per :func:`plain_interval` seconds, whatever
    asks for a redraw (``set_postfix`` refreshes at once on a terminal); the final frame, on
    close, always shows."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        # getattr: tqdm's __init__ draws the first frame before these attributes exist
        last = getattr(self, "_plain_last", None)
        closing = getattr(self, "_plain_closing", False)
        if not closing and last is not None and now - last < plain_interval():
            return True
        self._plain_last = now
        return bool(super().display(msg, pos))

    def close(self) -> None:
        self._plain_closing = True
        super().close()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr; plain periodic lines when stderr (or the
    ``file=`` given) is not a terminal. ``disable=True`` still turns it off entirely."""
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.update(
        file=PlainLines(stream),
        mininterval=plain_interval(),
        maxinterval=max(plain_interval(), 1.0),
        ncols=0,  # counters only, no bar glyphs
        ascii=True,
        leave=True,  # the last line says how it ended
    )
    return _PlainProgress(iterable, **kwargs)


def silence_library_bars() -> None:
    """Turn off the bars transformers and huggingface_hub draw (loading weights, writing
    shards): ``\r`` frames in a log file and noise under ``--quiet``. Through the environment
    for libraries not imported yet (the usual case: the CLI defers them), and through their
    switches for any already imported; nothing is imported here."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        tf_logging.disable_progress_bar()
