"""Prepared data directories (``shoestring prepare``): what the corpus became.

Why: this is ``prepare``'s own report.md as well as a part of every comparison that includes a
data directory, so it shows the figures a person checks before training on the data - documents
and tokens per split, vocabulary (asked for and obtained), bytes per token - and every input line
or byte sequence that was skipped or replaced, since nothing may be dropped silently. Every
number comes from ``meta.json`` (the record of the data, written last) or, for a prepare that
did not finish, ``summary.json``; nothing is recomputed except ratios.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Finding, Para, Section, Table, fmt, fmt_int
from shoestring.report.parts import Kind, SectionContext, of_kind, unfinished_blocks
from shoestring.report.run import RunInfo

__all__ = ["KIND"]


def _figures(r: RunInfo) -> dict[str, Any]:
    """meta.json when the directory has one (a finished prepare), else the summary's copy."""
    return r.result if isinstance(r.result, dict) else r.summary


def _pair(f: dict[str, Any], key: str) -> str:
    return f"{fmt_int(f.get('train_' + key))} / {fmt_int(f.get('val_' + key))}"


def _vocab(f: dict[str, Any]) -> str:
    asked = f.get("vocab_size_requested")
    if asked is None:
        return f"{fmt_int(f.get('vocab_size'))} (reused {f.get('tokenizer_source') or '-'})"
    return f"{fmt_int(f.get('vocab_size'))} of {fmt_int(asked)} asked"


def _bytes(f: dict[str, Any]) -> str:
    tokens = (f.get("train_tokens") or 0) + (f.get("val_tokens") or 0)
    if f.get("bytes") is None or not tokens:
        return fmt_int(f.get("bytes"))
    return f"{fmt_int(f.get('bytes'))} ({f['bytes'] / tokens:.2f} per token)"


def _input(f: dict[str, Any]) -> str:
    """Undecodable bytes, skipped documents and bad lines; '0' when the input was clean."""
    parts = [
        f"{f[k]:,} {what}"
        for k, what in (
            ("n_decode_errors", f"undecodable byte sequences ({f.get('on_decode_error')})"),
            ("skipped_documents", "documents skipped"),
            ("n_bad_lines", "bad lines skipped"),
        )
        if f.get(k)
    ]
    return "; ".join(parts) or "0 problems"


ROWS = (
    ("source", lambda f: str(f.get("source") or "-")),
    ("documents train / val", lambda f: _pair(f, "documents")),
    ("tokens train / val", lambda f: _pair(f, "tokens")),
    ("vocabulary", _vocab),
    ("UTF-8 bytes", _bytes),
    ("digits split", lambda f: fmt(f.get("split_digits"))),
    ("input problems", _input),
    ("held-out files left out", lambda f: str(len(f.get("held_out_files_skipped") or []))),
    ("seconds", lambda f: fmt(f.get("seconds"), ".1f")),
)


def prepare_sections(runs: list[RunInfo], ctx: SectionContext) -> list[Section]:
    prepared = of_kind(runs, "prepare")
    if not prepared:
        return []
    done = [r for r in prepared if r.finished]
    blocks: list[Any] = unfinished_blocks(
        prepared, "Prepares that did not finish (no meta.json: the directory is not usable):"
    )
    if done:
        rows = [[name, *[get(_figures(r)) for r in done]] for name, get in ROWS]
        blocks += [
            Para(
                "What each corpus became (from meta.json). The validation split takes whole "
                "documents; every document ends with the end-of-text token."
            ),
            Table(["", *[r.label for r in done]], rows, "l" + "r" * len(done)),
        ]
    return [Section("Prepared data", blocks, "prepare")]


def prepare_findings(runs: list[RunInfo]) -> list[Finding]:
    """Input that was skipped or replaced, and a vocabulary smaller than asked for."""
    out = []
    for r in of_kind(runs, "prepare"):
        f = _figures(r)
        if not r.finished:
            continue
        if any(f.get(k) for k in ("n_decode_errors", "skipped_documents", "n_bad_lines")):
            out.append(
                Finding(
                    "input",
                    "caution",
                    f"{r.label}: {_input(f)}; meta.json lists the first of them with file:line",
                    [r.label],
                )
            )
        asked, got = f.get("vocab_size_requested"), f.get("vocab_size")
        if asked is not None and got is not None and got < asked:
            out.append(
                Finding(
                    "vocabulary",
                    "info",
                    f"{r.label}: the tokenizer has {got:,} tokens of the {asked:,} asked for - "
                    "the training text supports no more at its minimum pair frequency",
                    [r.label],
                    {"vocab_size": got, "vocab_size_requested": asked},
                )
            )
    return out


def prepare_record(r: RunInfo) -> dict[str, Any]:
    """A prepared directory's part of report.json: the corpus figures."""
    f = _figures(r)
    keys = ("source", "train_documents", "val_documents", "train_tokens", "val_tokens")
    keys += ("vocab_size", "vocab_size_requested", "bytes", "n_bad_lines", "n_decode_errors")
    return {k: f.get(k) for k in keys + ("skipped_documents",)}


KIND = Kind(
    name="prepare",
    writer="`shoestring prepare` (summary.json kind 'prepare', or meta.json)",
    sections=prepare_sections,
    summary_kind="prepare",
    result_file="meta.json",
    result_key="train_tokens",
    record=prepare_record,
    findings=prepare_findings,
)
