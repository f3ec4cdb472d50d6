"""Reading a prepared data directory back: ``meta.json`` checked, shards memory-mapped.

Why the checks: ``meta.json`` is written last by ``prepare``, so a directory with a
``meta.json`` whose sizes match is complete; a truncated shard (full disk, killed copy) would
otherwise train silently on less data. Every inconsistency is a ``UserError`` that says how to
recreate the directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from shoestring.data.shards import EOS_TOKEN, FORMAT
from shoestring.errors import UserError

__all__ = ["PreparedData", "load_prepared"]


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
