"""Token shards: the on-disk format ``prepare`` writes and ``train`` reads, and its writer.

Why flat shards: ``train.bin``/``val.bin`` are raw little-endian ``uint16`` (``uint32`` for
vocabularies over 65535) token ids, every document followed by the end-of-text token, read back
with ``np.memmap`` so training never loads them. Every file is written under a temporary name
and renamed, so a half-written shard never carries the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

FORMAT = 1
EOS_TOKEN = "<|endoftext|>"
# encode this many characters per encode_batch call: big enough to keep the tokenizer's
# threads busy, small enough that memory stays bounded whatever the corpus size
ENCODE_BATCH_CHARS = 4 << 20
ENCODE_BATCH_DOCS = 2048


def dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest shard dtype that holds every token id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class ShardWriter:
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

    def add(self, doc: str) -> None:
        self.batch.append(doc)
        self.chars += len(doc)
        if self.chars >= ENCODE_BATCH_CHARS or len(self.batch) >= ENCODE_BATCH_DOCS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        # the fast variant skips the character offsets, which a shard never stores
        encodings = self.tok.encode_batch_fast(self.batch, add_special_tokens=False)
        lengths = [len(e.ids) for e in encodings]
        # the whole batch as one array (each document's ids, then EOS) and one write
        out = np.empty(sum(lengths) + len(lengths), dtype=self.dtype)
        pos = 0
        for enc, n in zip(encodings, lengths, strict=True):
            out[pos : pos + n] = enc.ids
            out[pos + n] = self.eos_id
            pos += n + 1
        out.tofile(self.f)
        self.tokens += len(out)
        self.documents += len(self.batch)
        self.bytes += sum(len(d.encode("utf-8")) for d in self.batch)  # for bytes/token
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
