"""One bad-input policy for every reader: where, what, how many - never a flood, never silent.

Why one module: ``prepare`` (text, JSONL), ``bench`` and GRPO (GSM8K JSONL) read user files, and
a user who fixes a bad byte must find it at the same place whichever command complained. So:

* a problem is located as ``file:line`` (1-based line, lines split at ``\n``) and, for a bad
  byte, its 1-based byte column: ``data.txt:25: invalid UTF-8 (byte 0xff at byte column 7)``;
  :func:`utf8_problem` and :func:`json_problem` write the same text for every reader;
* the first :data:`MAX_REPORTS` problems are printed and kept, then only counted, and the
  count is exact (``meta.json``, ``summary.json``);
* a file that is not text at all (NUL bytes, or mostly invalid UTF-8 in its first 64 KiB) is
  refused by :func:`refuse_binary` before anything is trained on it or skipped line by line.

For ``prepare``, undecodable bytes are replaced, skipped with their document, or rejected
(``on_decode_error``); malformed JSONL lines are skipped and reported. :class:`InputReport`
keeps the first reports and exact counts for ``meta.json``; :class:`DecodePolicy` applies the
chosen policy line by line.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shoestring.errors import UserError

DECODE_POLICIES = ("replace", "skip", "error")
MAX_REPORTS = 20
BINARY_SAMPLE_BYTES = 64 * 1024
# share of the sample's characters that may be undecodable before a file counts as binary
BINARY_BAD_FRACTION = 0.1

# where the registered codec handler records bad bytes: a handler is found by name and gets
# no context of its own, so the offsets of the decode in progress live here
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


# ----------------------------------------------------------------------------- shared texts


def utf8_problem(path: str | Path, line_no: int, raw_line: bytes, index: int) -> str:
    """``file:line: invalid UTF-8 (byte 0xNN at byte column C)`` for the bad byte at
    ``raw_line[index]``: the one way every reader names an undecodable byte."""
    byte = raw_line[index]
    return f"{path}:{line_no}: invalid UTF-8 (byte 0x{byte:02x} at byte column {index + 1})"


def json_problem(exc: json.JSONDecodeError) -> str:
    """``invalid JSON (Expecting value at column 3)``; json's own message sometimes ends in
    " at" already ("Invalid control character at"), which must not read "at at"."""
    return f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"


def split_lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its ``\n``) of a byte string, as JSON Lines splits
    it (only ``\n`` ends a line, so every reader numbers lines alike)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    yield from enumerate(lines, start=1)


def refuse_binary(path: str | Path, what: str = "text") -> None:
    """Raise :class:`UserError` when ``path`` is not text: a NUL byte, or more than
    :data:`BINARY_BAD_FRACTION` undecodable characters in its first 64 KiB.

    Why refuse instead of skipping: replacing or skipping bad lines is right for a text file
    with a few broken bytes, but a binary file (an archive, a model, UTF-16 text) would be
    "read" as thousands of skipped lines or a tokenizer trained on noise.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            sample = f.read(BINARY_SAMPLE_BYTES)
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if not sample:
        return
    reason = ""
    if b"\0" in sample:
        offset = sample.index(b"\0")
        line = sample.count(b"\n", 0, offset) + 1
        reason = f"a NUL byte at line {line}"
    else:
        # a multi-byte character cut by the end of the sample is not an error of the file
        text = sample.decode("utf-8", errors="replace")
        if len(sample) == BINARY_SAMPLE_BYTES:
            text = text[:-3]
        bad = text.count("\ufffd")
        if text and bad / len(text) > BINARY_BAD_FRACTION:
            reason = f"{bad:,} of its first {len(text):,} characters are not UTF-8"
    if reason:
        raise UserError(
            f"{p} looks like a binary file ({reason}), not UTF-8 {what}; give a UTF-8 "
            "text or JSONL file (convert UTF-16 with iconv -f UTF-16 -t UTF-8)"
        )


def skipped_fields(skipped: list[str]) -> dict[str, Any]:
    """summary.json's record of skipped input lines: the first :data:`MAX_REPORTS` and the
    count (``bench`` and ``grpo`` write it under their data keys)."""
    return {"skipped_lines": skipped[:MAX_REPORTS], "n_skipped_lines": len(skipped)}


def report_capped(
    problems: list[str], emit: Callable[[str], None], what: str = "bad line(s)"
) -> None:
    """Emit the first :data:`MAX_REPORTS` problems, then one line with how many more there
    were: the summary count instead of a flood."""
    for msg in problems[:MAX_REPORTS]:
        emit(msg)
    if len(problems) > MAX_REPORTS:
        emit(
            f"... and {len(problems) - MAX_REPORTS:,} more {what} ({len(problems):,} in all); "
            "only the first are listed"
        )


# ----------------------------------------------------------------------------- prepare


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
        # deferred: tqdm is slow to import and gsm8k (which `--help` loads) imports this
        # module; tqdm.write clears and redraws progress bars around the line
        from tqdm import tqdm

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
        self._warn(f"{where}, {action}", self.n_decode_errors)

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
    """(1-based line number, raw line) for each line of a binary file, lines split at
    ``\n`` as :func:`split_lines` does."""
    yield from enumerate(f, start=1)


class DecodePolicy:
    """Applies ``on_decode_error`` to one decoded line and reports what happened."""

    def __init__(self, mode: str, report: InputReport) -> None:
        if mode not in DECODE_POLICIES:
            raise UserError(f"on_decode_error={mode!r}; choose one of {', '.join(DECODE_POLICIES)}")
        self.mode, self.report = mode, report

    def line(self, path: Path, line_no: int, raw: bytes) -> tuple[str, bool]:
        """Decoded text and whether it had undecodable bytes (the document is then tainted)."""
        text, errors = _decode(raw)
        if not errors:
            return text, False
        for e in errors:
            problem = utf8_problem(path, line_no, raw, e)
            if self.mode == "error":
                raise UserError(
                    f"{problem}; fix the file or use --on-decode-error replace (or skip) to "
                    "continue"
                )
            action = "replaced with U+FFFD" if self.mode == "replace" else "document skipped"
            self.report.decode_error(problem, action)
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
