"""Prepared data directories (``shoestring prepare``): what the corpus became.

Why: this is ``prepare``'s own report.md and a part of every comparison with a data directory,
so it shows what a person checks before training on the data - documents and tokens per split,
vocabulary (asked for and obtained), bytes per token - and every input line or byte sequence
skipped or replaced, since nothing may be dropped silently. Every number comes from
``meta.json`` (written last) or, for a prepare that did not finish, ``summary.json``.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Finding, Para, Section, Table, fmt, fmt_int
from shoestring.report.parts import Kind, SectionContext, of_kind, unfinished_blocks
from shoestring.report.run import RunInfo

__all__ = ["KIND"]

ROWS = ["source", "documents train / val", "tokens train / val", "vocabulary", "UTF-8 bytes"]
ROWS += ["digits split", "input problems", "held-out files left out", "seconds"]
CLEAN = "0 problems"
RECORD_KEYS = ("source", "train_documents", "val_documents", "train_tokens", "val_tokens")
RECORD_KEYS += ("vocab_size", "vocab_size_requested", "bytes", "n_bad_lines", "n_decode_errors")


def _figures(r: RunInfo) -> dict[str, Any]:
    """meta.json when the directory has one (a finished prepare), else the summary's copy."""
    return r.result if isinstance(r.result, dict) else r.summary


def _input(f: dict[str, Any]) -> str:
    """Undecodable bytes, skipped documents and bad lines; :data:`CLEAN` when there were none."""
    problems = (("n_decode_errors", f"undecodable byte sequences ({f.get('on_decode_error')})"),)
    problems += (("skipped_documents", "documents skipped"), ("n_bad_lines", "bad lines skipped"))
    return "; ".join(f"{f[k]:,} {what}" for k, what in problems if f.get(k)) or CLEAN


def _column(f: dict[str, Any]) -> list[str]:
    """One directory's figures, a cell per name in :data:`ROWS`."""
    pair = lambda key: f"{fmt_int(f.get('train_' + key))} / {fmt_int(f.get('val_' + key))}"
    asked, vocab, size = f.get("vocab_size_requested"), fmt_int(f.get("vocab_size")), f.get("bytes")
    tokens = (f.get("train_tokens") or 0) + (f.get("val_tokens") or 0)
    per_token = f" ({size / tokens:.2f} per token)" if size is not None and tokens else ""
    reused = f"{vocab} (reused {f.get('tokenizer_source') or '-'})"
    return [str(f.get("source") or "-"), pair("documents"), pair("tokens")] + [
        reused if asked is None else f"{vocab} of {fmt_int(asked)} asked",
        fmt_int(size) + per_token,
        fmt(f.get("split_digits")),
        _input(f),
        str(len(f.get("held_out_files_skipped") or [])),
        fmt(f.get("seconds"), ".1f"),
    ]


def prepare_sections(prepared: list[RunInfo], ctx: SectionContext) -> list[Section]:
    done = [r for r in prepared if r.finished]
    blocks: list[Any] = unfinished_blocks(
        prepared, "Prepares that did not finish (no meta.json: the directory is not usable):"
    )
    if done:
        rows = [list(row) for row in zip(ROWS, *[_column(_figures(r)) for r in done], strict=True)]
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
    for r, f in ((r, _figures(r)) for r in of_kind(runs, "prepare") if r.finished):
        if (problems := _input(f)) != CLEAN:
            text = f"{r.label}: {problems}; meta.json lists the first of them with file:line"
            out.append(Finding("input", "caution", text, [r.label]))
        asked, got = f.get("vocab_size_requested"), f.get("vocab_size")
        if asked is not None and got is not None and got < asked:
            text = f"{r.label}: the tokenizer has {got:,} tokens of the {asked:,} asked for - "
            text += "the training text supports no more at its minimum pair frequency"
            nums = {"vocab_size": got, "vocab_size_requested": asked}
            out.append(Finding("vocabulary", "info", text, [r.label], nums))
    return out


KIND = Kind(
    name="prepare",
    writer="`shoestring prepare` (summary.json kind 'prepare', or meta.json)",
    sections=prepare_sections,
    summary_kind="prepare",
    result_file="meta.json",
    result_key="train_tokens",
    record=lambda r: {k: _figures(r).get(k) for k in (*RECORD_KEYS, "skipped_documents")},
    findings=prepare_findings,
)
