"""``run(cfg) -> Path``: ``prepare`` as a run - the data layer's work inside the run lifecycle.

Why a lifecycle around :func:`shoestring.data.text.run`: the prepared data directory is then a
run directory like every command's (``config.json``, ``summary.json`` of kind ``prepare`` with
the corpus figures, ``log.txt``, ``report.md``), so a failed or interrupted prepare says so, and
``compare`` reads it. Nothing the data layer writes clashes: its readers
(:mod:`shoestring.data.prepared`) read ``meta.json``, the shards and the tokenizer only, and
``meta.json`` stays the record of the data itself (written last, removed first).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shoestring.data import text
from shoestring.data.documents import resolve_source
from shoestring.errors import UserError
from shoestring.prepare.config import PrepareConfig
from shoestring.report.finalize import command_finalizers
from shoestring.rundir.directory import RunDir
from shoestring.rundir.lifecycle import RunLifecycle

__all__ = ["corpus_summary", "run"]

#: The meta.json figures summary.json repeats (what the report and compare show).
SUMMARY_KEYS = (
    "source",
    "train_documents",
    "val_documents",
    "train_tokens",
    "val_tokens",
    "vocab_size",
    "vocab_size_requested",
    "tokenizer_source",
    "bytes",
    "dtype",
    "split_digits",
    "on_decode_error",
    "n_bad_lines",
    "n_decode_errors",
    "skipped_documents",
    "held_out_files_skipped",
    "notes_skipped",
    "timings",
)


def corpus_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What ``summary.json`` holds of a finished prepare: the corpus figures of ``meta.json``."""
    fields = {k: meta[k] for k in SUMMARY_KEYS if k in meta}
    tokens = meta["train_tokens"] + meta["val_tokens"]
    fields["tokens"] = tokens
    fields["bytes_per_token"] = round(meta["bytes"] / max(tokens, 1), 4)
    fields["seconds"] = meta["seconds"]
    return fields


def run(cfg: PrepareConfig) -> Path:
    """Prepare ``cfg.input`` (or synthetic problems) into ``cfg.out``; the data directory."""
    cfg.check()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    synthetic = cfg.synthetic or None
    # an unusable INPUT is refused before the directory becomes a (failed) run: one that does
    # not exist, a directory of nothing but notes (SOURCE.md) or held-out splits
    source = resolve_source(
        cfg.input or None, synthetic=synthetic, seed=cfg.seed, out=out, all_splits=cfg.all_splits
    )
    notes = ", ".join(p.name for p in source.note_files())
    if notes and not source.files():
        raise UserError(
            f"INPUT {source.root} holds no data files (only notes about the data: {notes}); "
            "give the file itself as INPUT to prepare a note on purpose"
        )
    created_here = not out.exists()
    meta: dict[str, Any] = {}
    rundir = RunDir(out, "prepare", echo=not cfg.quiet)
    life = RunLifecycle(
        rundir,
        config=cfg.run_dict(),
        summary=lambda: corpus_summary(meta) if meta else {},
        finalizers=command_finalizers(),
    )
    try:
        _prepare_in(out, cfg, synthetic, rundir, life, meta)
    except Exception:
        # a failure before any data was written leaves no directory of ours behind: --out
        # held nothing before this run, and a failed one without shards is nothing to keep
        if created_here and not (out / "train.bin").exists() and rundir.closed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _prepare_in(
    out: Path,
    cfg: PrepareConfig,
    synthetic: int | None,
    rundir: RunDir,
    life: RunLifecycle,
    meta: dict[str, Any],
) -> None:
    """The data layer's work inside the lifecycle; ``meta`` gets the corpus figures."""
    with life:
        meta.update(
            text.run(
                cfg.input or None,
                out,
                vocab_size=cfg.vocab_size,
                tokenizer=cfg.tokenizer or None,
                field=cfg.field,
                val_fraction=cfg.val_fraction,
                seed=cfg.seed,
                on_decode_error=cfg.on_decode_error,
                min_frequency=cfg.min_frequency,
                synthetic=synthetic,
                quiet=cfg.quiet,
                split_digits=cfg.split_digits,
                all_splits=cfg.all_splits,
            )
        )
        for line in text.format_summary(meta, out).splitlines():
            rundir.log(line, echo=False)  # the library printed it already (unless quiet)
