"""The documents ``prepare`` reads: text files, JSONL rows, or generated math problems.

Why documents, not lines: the train/validation split is made over whole documents, because
splitting a token stream into windows lets the end of an article sit in train while its start
sits in validation, which makes the validation loss look better than it is. Documents come from
generators that open one file at a time and read it line by line, so nothing holds the corpus
in memory, and the sequence is deterministic so ``prepare`` can read it three times and address
documents by index.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.data.input_report import (
    DecodePolicy,
    InputReport,
    byte_lines,
    json_problem,
    refuse_binary,
)
from shoestring.data.synthetic import iter_problems, problems_to_text
from shoestring.errors import UserError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
DEFAULT_SYNTHETIC = 10000
# File names of held-out splits (first part of the name: "test.txt", "test_socratic.jsonl",
# "valid.txt", "wiki.valid.tokens" is not one - only the leading word counts)
HELD_OUT_SPLITS = ("valid", "validation", "val", "dev", "test")
# Names of a corpus directory's notes about the data (any suffix, any case: SOURCE.md,
# README.txt, LICENSE): documentation that came with the data, not part of it
NOTE_NAMES = ("readme", "source", "license", "licence", "notice", "changelog", "citation")
# WikiText article heading " = Title = " (sections are " = = Title = = " and deeper)
WIKITEXT_HEADING = re.compile(r"^ = [^=](?:.*[^=])? = ?$")


def _text_documents(path: Path, policy: DecodePolicy) -> Iterator[str]:
    """Documents of a plain text file.

    WikiText files (first non-blank line is an article heading `` = Title = ``) give one
    document per article, blank lines and section headings included. A heading counts only
    between blank lines, because table legends inside articles wrap into lines that look like
    headings (`` = Played , W = ``). Any other text gives one document per run of non-blank
    lines (paragraph or blank-line separated article). A document keeps its text exactly,
    except trailing whitespace.
    """
    wikitext: bool | None = None
    buf: list[str] = []
    tainted = False
    prev_blank = True
    pending: tuple[str, bool] | None = None  # a heading candidate waiting for a blank line

    def flush() -> Iterator[str]:
        nonlocal buf, tainted
        text = "".join(buf).rstrip()
        keep = policy.keep(tainted)
        buf, tainted = [], False
        if text and keep:
            yield text

    with path.open("rb") as f:
        for line_no, raw in byte_lines(f):
            line, bad = policy.line(path, line_no, raw)
            blank = not line.strip()
            if wikitext is None:  # the first non-blank line decides the file's format
                if blank:
                    continue
                wikitext = bool(WIKITEXT_HEADING.match(line.rstrip("\r\n")))
            if wikitext:
                if pending is not None:
                    if blank and buf:  # confirmed: the heading starts a new article
                        yield from flush()
                    buf.append(pending[0])  # heading or not, the line stays in the text
                    tainted = tainted or pending[1]
                    pending = None
                if prev_blank and not blank and WIKITEXT_HEADING.match(line.rstrip("\r\n")):
                    pending = (line, bad)
                else:
                    buf.append(line)
                    tainted = tainted or bad
            elif blank:
                if buf:
                    yield from flush()
            else:
                buf.append(line)
                tainted = tainted or bad
            prev_blank = blank
    if pending is not None:
        buf.append(pending[0])
        tainted = tainted or pending[1]
    if buf:
        yield from flush()


def _row_text(row: dict[str, Any], name: str) -> Any:
    """The document text of one JSONL row: ``row[name]``, or question + answer for GSM8K rows."""
    if name in row:
        return row[name]
    if (
        name == "text"
        and isinstance(row.get("question"), str)
        and isinstance(row.get("answer"), str)
    ):
        return f"Question: {row['question']}\nAnswer: {row['answer']}"
    return None


def _jsonl_documents(path: Path, name: str, policy: DecodePolicy) -> Iterator[str]:
    """One document per JSONL row; malformed rows are reported as ``file:line``."""
    with path.open("rb") as f:
        for lineno, raw in byte_lines(f):
            line, bad = policy.line(path, lineno, raw)
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                policy.bad_line(where, json_problem(exc))
                continue
            if not isinstance(row, dict):
                policy.bad_line(where, f"not a JSON object ({type(row).__name__})")
                continue
            text = _row_text(row, name)
            if text is None:
                keys = ", ".join(list(row)[:8])
                policy.bad_line(where, f"no '{name}' field (keys: {keys}); choose one with --field")
                continue
            if not isinstance(text, str):
                policy.bad_line(where, f"field '{name}' is {type(text).__name__}, not a string")
                continue
            if not text.strip():
                policy.bad_line(where, f"field '{name}' is empty")
                continue
            if policy.keep(bad):
                yield text


@dataclass(frozen=True)
class Source:
    """Where documents come from: files (text or JSONL), or the synthetic math generator."""

    kind: str  # "files" or "synthetic"
    root: Path | None = None
    exclude: Path | None = None
    synthetic_n: int = 0
    seed: int = 0
    all_splits: bool = False  # read a directory's validation/test files too

    @property
    def description(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic:{self.synthetic_n}:seed={self.seed}"
        return os.path.abspath(str(self.root))

    def files(self) -> list[Path]:
        """Input files in a fixed (sorted) order; for a directory, recursively.

        A directory contributes its ``*.txt``/``*.text``/``*.md`` and ``*.jsonl`` files, or all
        files when it has none of those. Hidden files and the output directory are skipped,
        and so are held-out split files (:meth:`held_out_files`) unless ``all_splits``.
        """
        left_out = set(self.held_out_files()) | set(self.note_files())
        return [p for p in self._all_files() if p not in left_out]

    def note_files(self) -> list[Path]:
        """Files of a directory that are notes about the data (``SOURCE.md``, ``README.txt``,
        ``LICENSE`` ...: :data:`NOTE_NAMES`), left out so a corpus is not trained on its own
        description. A file given as INPUT is always read."""
        if self.root is None or not self.root.is_dir():
            return []
        return [p for p in self._all_files() if p.stem.lower() in NOTE_NAMES]

    def held_out_files(self) -> list[Path]:
        """Files of a directory that are validation or test splits (``valid.txt``,
        ``test.jsonl``, ``test_socratic.jsonl`` ...), left out so a corpus directory like
        WikiText-2's or GSM8K's is never trained on its own test text. A file given as INPUT
        is always read, and so is everything with ``all_splits``; a directory of nothing but
        held-out files is an error rather than a silent choice."""
        if self.all_splits or self.root is None or not self.root.is_dir():
            return []
        files = self._all_files()
        # only the leading word counts: "test_socratic.jsonl" is held out, "contest.txt" is not
        held = [p for p in files if re.split(r"[._\-]", p.name.lower())[0] in HELD_OUT_SPLITS]
        notes = set(self.note_files())
        if held and len(held) == len([p for p in files if p not in notes]):
            names = ", ".join(p.name for p in held[:5])
            raise UserError(
                f"every file in {self.root} is a validation or test split ({names}); give one "
                "of them as INPUT to prepare it on purpose, or pass --all-splits"
            )
        return held

    def _all_files(self) -> list[Path]:
        if self.kind != "files" or self.root is None:
            return []
        if self.root.is_file():
            return [self.root]
        exclude = self.exclude.resolve() if self.exclude else None
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            # in place, so os.walk skips hidden and output directories; sorted for a fixed order
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
            )
            found += [here / n for n in sorted(filenames) if not n.startswith(".")]
        known = [p for p in found if p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES]
        return known or found


def resolve_source(
    source: str | Path | None,
    *,
    synthetic: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    all_splits: bool = False,
) -> Source:
    """Turn the INPUT argument into a :class:`Source`, with a clear error when it is unusable.

    ``"synthetic"`` (when no such file exists) or ``synthetic=N`` selects generated math
    problems; ``all_splits`` reads a directory's validation and test files too.
    """
    if synthetic is not None or (str(source) == "synthetic" and not Path("synthetic").exists()):
        n = DEFAULT_SYNTHETIC if synthetic is None else int(synthetic)
        if n < 2:
            raise UserError(f"--synthetic {n}: need at least 2 problems (one for validation)")
        return Source("synthetic", synthetic_n=n, seed=seed)
    if source is None or str(source) == "":
        raise UserError(
            "no INPUT given; pass a text file, a directory, a .jsonl file, or 'synthetic'"
        )
    root = Path(source)
    if not root.exists():
        raise UserError(f"INPUT {root} does not exist")
    return Source("files", root=root, exclude=Path(out) if out else None, all_splits=all_splits)


def iter_documents(
    source: Source | str | Path,
    *,
    field: str = "text",
    on_decode_error: str = "replace",
    report: InputReport | None = None,
) -> Iterator[str]:
    """Yield the documents of ``source`` lazily, one file open at a time.

    Bad input is reported into ``report`` (a silent one is used when it is None) according to
    ``on_decode_error``. The sequence is deterministic, which the three passes of :func:`run`
    rely on to address documents by index.
    """
    if not isinstance(source, Source):
        source = resolve_source(source)
    policy = DecodePolicy(
        on_decode_error, report if report is not None else InputReport(echo=False)
    )
    if source.kind == "synthetic":
        yield from problems_to_text(iter_problems(source.synthetic_n, None, source.seed))
        return
    for path in source.files():
        refuse_binary(path)
        if path.suffix.lower() in JSONL_SUFFIXES:
            yield from _jsonl_documents(path, field, policy)
        else:
            yield from _text_documents(path, policy)
