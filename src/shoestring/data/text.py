"""``prepare`` as a function: documents -> tokenizer -> token shards -> ``meta.json``.

What it does, and why it is done this way:

* **Documents, not lines.** Input is read as a stream of documents (articles, paragraphs,
  JSONL rows, synthetic problems). The train/validation split is made over whole documents,
  because splitting a token stream into windows lets the end of an article sit in train while
  its start sits in validation, which makes the validation loss look better than it is.
* **Streaming.** Documents come from generators that open one file at a time and read it line
  by line; nothing holds the corpus in memory. The input is read three times - a scan (count
  documents, report bad input), tokenizer training on the training documents only (so the
  vocabulary never saw validation text) and encoding - which costs far less than the
  tokenizer training itself.
* **Byte-level BPE.** A byte-level tokenizer never needs an unknown token and decodes back to
  the exact input text, so a shard can be checked against its source.
* **Flat shards.** ``train.bin``/``val.bin`` are raw little-endian ``uint16`` (``uint32`` for
  vocabularies over 65535) token ids, every document followed by the end-of-text token, read
  back with ``np.memmap`` so training never loads them either. Every file is written under a
  temporary name and renamed, and ``meta.json`` is written last: a directory with a
  ``meta.json`` whose sizes match is complete.
* **Nothing dropped silently.** Undecodable bytes are reported as ``file:byte_offset`` and
  replaced, skipped with their document, or rejected (``on_decode_error``); malformed JSONL
  lines are reported as ``file:line``. The first reports and the counts go into ``meta.json``.

The pieces: documents (``documents.py``), input reports (``input_report.py``), the tokenizer
(``tokenizer.py``), shard format and writer (``shards.py``), reading back
(``prepared.py``); the command - this inside the run lifecycle, with its report and CLI -
is :mod:`shoestring.prepare`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shoestring.data.documents import iter_documents, resolve_source
from shoestring.data.input_report import DECODE_POLICIES, InputReport
from shoestring.data.shards import EOS_TOKEN, FORMAT, ShardWriter, dtype_for
from shoestring.data.tokenizer import load_existing_tokenizer, save_hf_tokenizer, train_tokenizer
from shoestring.errors import UserError
from shoestring.rundir.directory import atomic_write_text
from shoestring.util.progress import progress_bar

__all__ = ["format_summary", "run"]


@contextlib.contextmanager
def _progress(
    iterable: Iterable[Any], quiet: bool, desc: str, total: int | None = None
) -> Iterator[Iterable[Any]]:
    """A tqdm bar on stderr around ``iterable`` that is closed even when the loop raises.

    Closing on error matters: a bar left open would end up on the same line as the error.
    """
    if quiet:
        yield iterable
        return
    bar = progress_bar(
        iterable,
        desc=desc,
        total=total,
        unit="doc",
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    try:
        yield bar
    finally:
        bar.close()


# ----------------------------------------------------------------------------- run


def run(
    source: str | Path | None,
    out: str | Path,
    *,
    vocab_size: int = 16000,
    tokenizer: str | Path | None = None,
    field: str = "text",
    val_fraction: float = 0.05,
    seed: int = 0,
    on_decode_error: str = "replace",
    min_frequency: int = 2,
    synthetic: int | None = None,
    quiet: bool = False,
    split_digits: bool = False,
    all_splits: bool = False,
) -> dict[str, Any]:
    """Prepare ``source`` into ``out``: tokenizer, ``train.bin``, ``val.bin``, ``meta.json``.

    Returns the meta dict (also written to ``out/meta.json``). ``quiet`` turns off progress
    bars and the summary; input warnings are always printed, because they mean data changed.
    A directory's validation/test split files (``valid.txt``, ``test.jsonl`` ...) are left
    out and named unless ``all_splits``: a corpus is never trained on its own test text.
    """
    t0 = time.perf_counter()
    if not 0.0 < val_fraction < 1.0:
        raise UserError(
            f"--val-fraction {val_fraction} must be between 0 and 1 (exclusive): "
            "validation needs at least one document and so does training"
        )
    if min_frequency < 0:
        raise UserError(f"--min-frequency {min_frequency} must be >= 0")
    if on_decode_error not in DECODE_POLICIES:
        raise UserError(
            f"--on-decode-error {on_decode_error!r}: choose one of {', '.join(DECODE_POLICIES)}"
        )
    if tokenizer is None and vocab_size < 257:
        train_tokenizer([], vocab_size)  # raises the explanatory UserError
    out = Path(out)
    src = resolve_source(source, synthetic=synthetic, seed=seed, out=out, all_splits=all_splits)
    held_out = [str(p) for p in src.held_out_files()]
    if held_out:
        # said even with --quiet: it changes what is trained on
        print(
            f"note: left out the held-out split file(s) {', '.join(held_out)} (the corpus "
            "directory's own validation/test text is never trained on; --all-splits reads them)",
            file=sys.stderr,
        )
    notes = [str(p) for p in src.note_files()]
    if notes:
        print(
            f"note: left out {', '.join(notes)} (notes about the data, not data; give a file "
            "as INPUT to prepare it on purpose)",
            file=sys.stderr,
        )
    if notes and not src.files():
        raise UserError(f"{src.root} holds no data files, only notes about the data: {notes[0]}")
    existing = load_existing_tokenizer(tokenizer) if tokenizer is not None else None
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    # a stale meta.json next to half-rewritten shards would describe the wrong data
    (out / "meta.json").unlink(missing_ok=True)

    def docs(report: InputReport | None = None) -> Iterator[str]:
        return iter_documents(src, field=field, on_decode_error=on_decode_error, report=report)

    # pass 1: count documents, report bad input once
    timings: dict[str, float] = {}
    report = InputReport(echo=True)
    n_docs = 0
    with _progress(docs(report), quiet, "scan") as scanned:
        for _ in scanned:
            n_docs += 1
    timings["scan"] = time.perf_counter() - t0
    if n_docs == 0:
        hint = (
            f" (first problem: {(report.bad_lines + report.decode_errors)[0]})"
            if (report.bad_lines or report.decode_errors)
            else ""
        )
        raise UserError(f"no documents with text found in {src.description}{hint}")
    if n_docs == 1:
        raise UserError(
            f"only one document found in {src.description}; the train/validation split is by "
            "document, so at least 2 are needed. Separate documents with a blank line, give "
            "several files, or use JSONL with one document per line"
        )
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).choice(n_docs, size=n_val, replace=False)] = True

    # pass 2: the tokenizer, trained on training documents only
    t1 = time.perf_counter()
    if existing is not None:
        tok, tok_file, eos = existing
        tok_source_dir: Path | None = tok_file.parent
    else:
        train_docs = (d for i, d in enumerate(docs()) if not is_val[i])
        with _progress(train_docs, quiet, "tokenizer", total=n_docs - n_val) as bar:
            tok = train_tokenizer(
                bar, vocab_size, min_frequency, length=n_docs - n_val, split_digits=split_digits
            )
        eos, tok_source_dir = EOS_TOKEN, None
    timings["tokenizer"] = time.perf_counter() - t1
    actual_vocab = tok.get_vocab_size(with_added_tokens=True)
    eos_id = tok.token_to_id(eos)
    dtype = dtype_for(actual_vocab)

    # pass 3: encode into the shards
    t2 = time.perf_counter()
    train_w = ShardWriter(out / "train.bin", tok, eos_id, dtype)
    val_w = ShardWriter(out / "val.bin", tok, eos_id, dtype)
    try:
        seen = 0
        with _progress(docs(), quiet, "encode", total=n_docs) as encoding:
            for i, doc in enumerate(encoding):
                if i >= n_docs:
                    raise UserError(f"{src.description} changed while it was being prepared")
                (val_w if is_val[i] else train_w).add(doc)
                seen += 1
        if seen != n_docs:
            raise UserError(f"{src.description} changed while it was being prepared")
        train_w.close()
        val_w.close()
        train_w.commit()
        val_w.commit()
    finally:
        train_w.discard()
        val_w.discard()
    timings["encode"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
    save_hf_tokenizer(tok, eos, tok_source_dir, out / "tokenizer")
    timings["save"] = time.perf_counter() - t3
    meta: dict[str, Any] = {
        "format": FORMAT,
        "dtype": dtype.name,
        "vocab_size": actual_vocab,
        "vocab_size_requested": None if existing is not None else vocab_size,
        "eos_id": eos_id,
        "eos_token": eos,
        "train_tokens": train_w.tokens,
        "val_tokens": val_w.tokens,
        "train_documents": train_w.documents,
        "val_documents": val_w.documents,
        "bytes": train_w.bytes + val_w.bytes,
        "train_bytes": train_w.bytes,
        "val_bytes": val_w.bytes,
        "seconds": round(time.perf_counter() - t0, 3),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "source": src.description,
        "files": [str(p) for p in src.files()],
        "held_out_files_skipped": held_out,
        "notes_skipped": notes,
        "field": field,
        "split": "document",
        "val_fraction": val_fraction,
        "seed": seed,
        "tokenizer": "tokenizer.json",
        "tokenizer_dir": "tokenizer",
        "tokenizer_source": "trained" if existing is None else os.path.abspath(existing[1]),
        "min_frequency": min_frequency if existing is None else None,
        "split_digits": split_digits if existing is None else None,
        "on_decode_error": on_decode_error,
        **report.as_meta(),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    if not quiet:
        print(format_summary(meta, out))
    return meta


def format_summary(meta: dict[str, Any], out: str | Path | None = None) -> str:
    """The human summary printed at the end of ``prepare`` (documents, tokens, bytes, time)."""
    tokens = meta["train_tokens"] + meta["val_tokens"]
    lines = [
        f"prepared {meta['source']}" + (f" -> {out}" if out is not None else ""),
        f"  documents  train {meta['train_documents']:,}  val {meta['val_documents']:,}  "
        f"(split by document, val fraction {meta['val_fraction']}, seed {meta['seed']})",
        f"  tokens     train {meta['train_tokens']:,}  val {meta['val_tokens']:,}  "
        f"({meta['dtype']}, EOS id {meta['eos_id']} after every document)",
        f"  bytes      {meta['bytes']:,} UTF-8  ({meta['bytes'] / max(tokens, 1):.2f} bytes/token)",
    ]
    requested = meta.get("vocab_size_requested")
    vocab = f"  vocab      {meta['vocab_size']:,}"
    if requested is None:
        vocab += f"  (reused {meta.get('tokenizer_source')})"
    elif meta["vocab_size"] < requested:
        vocab += (
            f"  (asked for {requested:,}; the training text only supports "
            f"{meta['vocab_size']:,} tokens at min frequency "
            f"{meta.get('min_frequency')} - more text gives a fuller vocabulary)"
        )
    else:
        vocab += "  (byte-level BPE trained on the training documents)"
    lines.append(vocab)
    if meta.get("held_out_files_skipped"):
        names = ", ".join(Path(f).name for f in meta["held_out_files_skipped"])
        lines.append(f"  held out   {names} left out (never trained on; --all-splits reads them)")
    if meta.get("notes_skipped"):
        names = ", ".join(Path(f).name for f in meta["notes_skipped"])
        lines.append(f"  notes      {names} left out (about the data, not data)")
    problems = []
    if meta.get("n_decode_errors"):
        problems.append(
            f"{meta['n_decode_errors']} undecodable byte sequences ({meta.get('on_decode_error')})"
        )
    if meta.get("skipped_documents"):
        problems.append(f"{meta['skipped_documents']} documents skipped")
    if meta.get("n_bad_lines"):
        problems.append(f"{meta['n_bad_lines']} bad lines skipped")
    if problems:
        lines.append("  input      " + "; ".join(problems) + " - see meta.json")
    t = meta.get("timings", {})
    lines.append(
        f"  time       {meta['seconds']:.1f} s  (scan {t.get('scan', 0):.1f} s, "
        f"tokenizer {t.get('tokenizer', 0):.1f} s, encode {t.get('encode', 0):.1f} s, "
        f"save {t.get('save', 0):.1f} s)"
    )
    return "\n".join(lines)
