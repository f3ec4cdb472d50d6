"""Input validation for ``prepare``: undecodable bytes and malformed lines, found and reported.

Why: nothing may be dropped silently. Undecodable bytes are reported as ``file:byte_offset``
and replaced, skipped with their document, or rejected (``on_decode_error``); malformed JSONL
lines are reported as ``file:line``. :class:`InputReport` keeps the first reports and exact
counts for ``meta.json``; :class:`DecodePolicy` applies the chosen policy line by line.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from shoestring.errors import UserError

DECODE_POLICIES = ("replace", "skip", "error")
MAX_REPORTS = 20

_ERROR_OFFSETS: list[int] = []


def _record_decode_error(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: remember where the bad bytes are, then replace them like 'replace'.

    One linear decode finds every error in a line (re-decoding after each error would be
    quadratic on binary files).
    """
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _ERROR_OFFSETS.append(exc.start)
    return "\ufffd", exc.end


codecs.register_error("shoestring.record", _record_decode_error)


def _decode(raw: bytes) -> tuple[str, list[int]]:
    """UTF-8 text of ``raw`` and the offsets (within ``raw``) of undecodable bytes."""
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        _ERROR_OFFSETS.clear()
        text = raw.decode("utf-8", errors="shoestring.record")
        offsets = list(_ERROR_OFFSETS)
        _ERROR_OFFSETS.clear()
        return text, offsets


@dataclass
class InputReport:
    """What was wrong with the input: kept for ``meta.json`` and printed as warnings.

    Only the first ``MAX_REPORTS`` of each kind are kept and printed; the counts are exact.
    ``echo=False`` collects silently (used on the second and third pass over the input,
    which would repeat the same reports).
    """

    echo: bool = True
    decode_errors: list[str] = field(default_factory=list)
    n_decode_errors: int = 0
    bad_lines: list[str] = field(default_factory=list)
    n_bad_lines: int = 0
    skipped_documents: int = 0

    def _warn(self, message: str, n: int) -> None:
        # tqdm.write clears and redraws progress bars around the line
        if self.echo and n <= MAX_REPORTS:
            tqdm.write(f"warning: {message}", file=sys.stderr)
        if self.echo and n == MAX_REPORTS + 1:
            tqdm.write(
                "warning: more input problems follow; only counting them now (see meta.json)",
                file=sys.stderr,
            )

    def decode_error(self, where: str, action: str) -> None:
        self.n_decode_errors += 1
        if len(self.decode_errors) < MAX_REPORTS:
            self.decode_errors.append(where)
        self._warn(f"{where}: invalid UTF-8, {action}", self.n_decode_errors)

    def bad_line(self, where: str, why: str) -> None:
        self.n_bad_lines += 1
        if len(self.bad_lines) < MAX_REPORTS:
            self.bad_lines.append(f"{where}: {why}")
        self._warn(f"{where}: {why}, skipped", self.n_bad_lines)

    def as_meta(self) -> dict[str, Any]:
        return {
            "decode_errors": self.decode_errors,
            "n_decode_errors": self.n_decode_errors,
            "bad_lines": self.bad_lines,
            "n_bad_lines": self.n_bad_lines,
            "skipped_documents": self.skipped_documents,
        }


def byte_lines(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) for each line of a binary file."""
    offset = 0
    for raw in f:
        yield offset, raw
        offset += len(raw)


class DecodePolicy:
    """Applies ``on_decode_error`` to one decoded line and reports what happened."""

    def __init__(self, mode: str, report: InputReport) -> None:
        if mode not in DECODE_POLICIES:
            raise UserError(f"on_decode_error={mode!r}; choose one of {', '.join(DECODE_POLICIES)}")
        self.mode, self.report = mode, report

    def line(self, path: Path, offset: int, raw: bytes) -> tuple[str, bool]:
        """Decoded text and whether it had undecodable bytes (the document is then tainted)."""
        text, errors = _decode(raw)
        if not errors:
            return text, False
        for e in errors:
            where = f"{path}:{offset + e}"
            if self.mode == "error":
                raise UserError(
                    f"{where}: invalid UTF-8 (byte 0x{raw[e]:02x}); fix the file or "
                    "use --on-decode-error replace (or skip) to continue"
                )
            action = "replaced with U+FFFD" if self.mode == "replace" else "document skipped"
            self.report.decode_error(where, action)
        return text, True

    def keep(self, tainted: bool) -> bool:
        if tainted and self.mode == "skip":
            self.report.skipped_documents += 1
            return False
        return True

    def bad_line(self, where: str, why: str) -> None:
        if self.mode == "error":
            raise UserError(
                f"{where}: {why}; fix the line or use --on-decode-error replace "
                "(or skip) to report and skip bad lines"
            )
        self.report.bad_line(where, why)


# ----------------------------------------------------------------------------- documents
