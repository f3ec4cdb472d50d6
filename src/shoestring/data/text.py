"""Documents, tokenizer and token shards: the work behind ``shoestring prepare``.

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
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from shoestring.errors import UserError
from shoestring.runs.rundir import atomic_write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "EOS_TOKEN",
    "FORMAT",
    "InputReport",
    "PreparedData",
    "Source",
    "format_summary",
    "iter_documents",
    "load_prepared",
    "resolve_source",
    "run",
    "train_tokenizer",
]

FORMAT = 1
EOS_TOKEN = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
DECODE_POLICIES = ("replace", "skip", "error")
MAX_REPORTS = 20
DEFAULT_SYNTHETIC = 10000
# WikiText article heading " = Title = " (sections are " = = Title = = " and deeper)
WIKITEXT_HEADING = re.compile(r"^ = [^=](?:.*[^=])? = ?$")
# encode this many characters per encode_batch call: big enough to keep the tokenizer's
# threads busy, small enough that memory stays bounded whatever the corpus size
ENCODE_BATCH_CHARS = 4 << 20
ENCODE_BATCH_DOCS = 2048

# ----------------------------------------------------------------------------- decoding

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
        from tqdm import tqdm  # write() clears and redraws progress bars around the line

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


def _lines(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) for each line of a binary file."""
    offset = 0
    for raw in f:
        yield offset, raw
        offset += len(raw)


class _Policy:
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


def _text_documents(path: Path, policy: _Policy) -> Iterator[str]:
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
        for offset, raw in _lines(f):
            line, bad = policy.line(path, offset, raw)
            blank = not line.strip()
            if wikitext is None:
                if blank:
                    continue
                wikitext = bool(WIKITEXT_HEADING.match(line.rstrip("\r\n")))
            if wikitext:
                if pending is not None:
                    if blank and buf:  # confirmed: the heading starts a new article
                        yield from flush()
                    buf.append(pending[0])
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


def _jsonl_documents(path: Path, name: str, policy: _Policy) -> Iterator[str]:
    """One document per JSONL row; malformed rows are reported as ``file:line``."""
    with path.open("rb") as f:
        for lineno, (offset, raw) in enumerate(_lines(f), start=1):
            line, bad = policy.line(path, offset, raw)
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                msg = exc.msg.removesuffix(" at")
                policy.bad_line(where, f"invalid JSON ({msg} at column {exc.colno})")
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

    @property
    def description(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic:{self.synthetic_n}:seed={self.seed}"
        return os.path.abspath(str(self.root))

    def files(self) -> list[Path]:
        """Input files in a fixed (sorted) order; for a directory, recursively.

        A directory contributes its ``*.txt``/``*.text``/``*.md`` and ``*.jsonl`` files, or all
        files when it has none of those. Hidden files and the output directory are skipped.
        """
        if self.kind != "files" or self.root is None:
            return []
        if self.root.is_file():
            return [self.root]
        exclude = self.exclude.resolve() if self.exclude else None
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
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
) -> Source:
    """Turn the INPUT argument into a :class:`Source`, with a clear error when it is unusable.

    ``"synthetic"`` (when no such file exists) or ``synthetic=N`` selects generated math
    problems.
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
    return Source("files", root=root, exclude=Path(out) if out else None)


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
    policy = _Policy(on_decode_error, report if report is not None else InputReport(echo=False))
    if source.kind == "synthetic":
        from shoestring.data.synthetic import iter_problems, problems_to_text

        yield from problems_to_text(iter_problems(source.synthetic_n, None, source.seed))
        return
    for path in source.files():
        if path.suffix.lower() in JSONL_SUFFIXES:
            yield from _jsonl_documents(path, field, policy)
        else:
            yield from _text_documents(path, policy)


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(
    docs: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    length: int | None = None,
    split_digits: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer with ``<|endoftext|>`` as its only special token.

    ``docs`` may be a generator; the ``tokenizers`` trainer pulls from it, so the corpus is
    never materialised. The special token gets id 0. ``split_digits`` makes every digit its own
    token (as the Llama and Qwen tokenizers do): plain BPE merges digits into chunks that depend
    on the corpus ("374" -> "37" + "4", "243" -> "24" + "3"), so the same place value is a
    different token from number to number and arithmetic becomes a lookup table a small model
    cannot generalise.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    minimum = 256 + 1
    if vocab_size < minimum:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: a byte-level tokenizer needs "
            f"256 byte tokens + 1 special token = {minimum} at least"
        )
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=length)
    return tok


def _special_from_config(directory: Path, key: str) -> str | None:
    cfg = directory / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get(key)
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_existing_tokenizer(path: str | Path) -> tuple[Tokenizer, Path, str]:
    """(tokenizer, its tokenizer.json, its end-of-text token) for ``--tokenizer``."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(
            f"--tokenizer {p}: no tokenizer.json there (give a tokenizer.json file "
            "or a directory holding one, e.g. a prepared data directory)"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 - the tokenizers error text says what is wrong
        raise UserError(f"--tokenizer {file}: cannot load it ({exc})") from exc
    eos = _special_from_config(file.parent, "eos_token")
    candidates = [eos] if eos else []
    candidates += [EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>"]
    for name in candidates:
        if tok.token_to_id(name) is not None:
            return tok, file, name
    raise UserError(
        f"--tokenizer {file} has no end-of-text token ({', '.join(candidates)}); "
        "documents need one as separator - train a new tokenizer instead"
    )


def _save_hf_tokenizer(tok: Tokenizer, eos: str, source_dir: Path | None, out: Path) -> None:
    """Save a ``transformers``-loadable tokenizer directory (atomically, via a rename).

    The trainer copies this directory next to the model, so ``AutoTokenizer`` finds
    eos/bos/pad set; a reused tokenizer's own bos/pad tokens are kept when its directory names
    them.
    """
    from transformers import PreTrainedTokenizerFast

    bos = pad = eos
    if source_dir is not None:
        bos = _special_from_config(source_dir, "bos_token") or eos
        pad = _special_from_config(source_dir, "pad_token") or eos
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token=pad)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- writing


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class _ShardWriter:
    """Appends encoded documents (each followed by EOS) to one shard, in bounded batches."""

    def __init__(self, path: Path, tok: Tokenizer, eos_id: int, dtype: np.dtype) -> None:
        self.final = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.f = self.tmp.open("wb")
        self.tok, self.eos_id, self.dtype = tok, eos_id, dtype
        self.batch: list[str] = []
        self.chars = 0
        self.tokens = 0
        self.documents = 0
        self.bytes = 0
        encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
        self._encode: Callable[..., list[Any]] = encode

    def add(self, doc: str) -> None:
        self.batch.append(doc)
        self.chars += len(doc)
        if self.chars >= ENCODE_BATCH_CHARS or len(self.batch) >= ENCODE_BATCH_DOCS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        encodings = self._encode(self.batch, add_special_tokens=False)
        lengths = [len(e.ids) for e in encodings]
        out = np.empty(sum(lengths) + len(lengths), dtype=self.dtype)
        pos = 0
        for enc, n in zip(encodings, lengths, strict=True):
            out[pos : pos + n] = enc.ids
            out[pos + n] = self.eos_id
            pos += n + 1
        out.tofile(self.f)
        self.tokens += len(out)
        self.documents += len(self.batch)
        self.bytes += sum(len(d.encode("utf-8")) for d in self.batch)
        self.batch, self.chars = [], 0

    def close(self) -> None:
        self.flush()
        self.f.close()

    def commit(self) -> None:
        os.replace(self.tmp, self.final)

    def discard(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)


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
    from tqdm import tqdm

    bar = tqdm(
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
) -> dict[str, Any]:
    """Prepare ``source`` into ``out``: tokenizer, ``train.bin``, ``val.bin``, ``meta.json``.

    Returns the meta dict (also written to ``out/meta.json``). ``quiet`` turns off progress
    bars and the summary; input warnings are always printed, because they mean data changed.
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
    src = resolve_source(source, synthetic=synthetic, seed=seed, out=out)
    existing = _load_existing_tokenizer(tokenizer) if tokenizer is not None else None
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
    dtype = _dtype_for(actual_vocab)

    # pass 3: encode into the shards
    t2 = time.perf_counter()
    train_w = _ShardWriter(out / "train.bin", tok, eos_id, dtype)
    val_w = _ShardWriter(out / "val.bin", tok, eos_id, dtype)
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
    _save_hf_tokenizer(tok, eos, tok_source_dir, out / "tokenizer")
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


# ----------------------------------------------------------------------------- reading back


@dataclass
class PreparedData:
    """A prepared data directory opened for training: shards memory-mapped read-only."""

    path: Path
    meta: dict[str, Any]
    train: np.memmap
    val: np.memmap
    tokenizer_path: Path
    tokenizer_dir: Path | None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    def load_tokenizer(self) -> Any:
        """The ``transformers`` tokenizer (``PreTrainedTokenizerFast``) saved with the shards."""
        from transformers import PreTrainedTokenizerFast

        if self.tokenizer_dir is not None:
            return PreTrainedTokenizerFast.from_pretrained(str(self.tokenizer_dir))
        eos = self.meta.get("eos_token", EOS_TOKEN)
        return PreTrainedTokenizerFast(
            tokenizer_file=str(self.tokenizer_path), eos_token=eos, bos_token=eos, pad_token=eos
        )


_REQUIRED_META = ("format", "dtype", "vocab_size", "eos_id", "train_tokens", "val_tokens")


def load_prepared(path: str | Path) -> PreparedData:
    """Open a directory written by ``prepare``; every inconsistency is a UserError saying why.

    Shard sizes are checked against ``meta.json`` because a truncated shard (full disk, killed
    copy) would otherwise train silently on less data.
    """
    d = Path(path)
    again = f"run `shoestring prepare INPUT --out {d}` to (re)create it"
    if not d.is_dir():
        raise UserError(f"prepared data directory {d} does not exist; {again}")
    meta_file = d / "meta.json"
    if not meta_file.is_file():
        raise UserError(
            f"{d} has no meta.json: not a prepared data directory, or prepare was "
            f"interrupted; {again}"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_file} is not valid JSON ({exc}); {again}") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{meta_file} does not hold a JSON object; {again}")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"{meta_file} lacks {', '.join(missing)}; {again}")
    if meta["format"] != FORMAT:
        raise UserError(
            f"{meta_file} has format {meta['format']!r}; this shoestring reads "
            f"format {FORMAT}; {again}"
        )
    if meta["dtype"] not in ("uint16", "uint32"):
        raise UserError(f"{meta_file}: dtype {meta['dtype']!r} is not uint16 or uint32; {again}")
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split in ("train", "val"):
        file = d / f"{split}.bin"
        n = int(meta[f"{split}_tokens"])
        if not file.is_file():
            raise UserError(f"{file} is missing; {again}")
        size = file.stat().st_size
        if size != n * dtype.itemsize:
            raise UserError(
                f"{file} has {size:,} bytes but meta.json says {n:,} {dtype.name} "
                f"tokens ({n * dtype.itemsize:,} bytes): the file is truncated or "
                f"from another prepare run; {again}"
            )
        if n == 0:
            raise UserError(f"{file} holds no tokens; {again}")
        arrays[split] = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
    tok_file = d / str(meta.get("tokenizer", "tokenizer.json"))
    if not tok_file.is_file():
        raise UserError(f"{tok_file} is missing; {again}")
    tok_dir = d / str(meta.get("tokenizer_dir", "tokenizer"))
    return PreparedData(
        path=d,
        meta=meta,
        train=arrays["train"],
        val=arrays["val"],
        tokenizer_path=tok_file,
        tokenizer_dir=tok_dir if (tok_dir / "tokenizer.json").is_file() else None,
    )
