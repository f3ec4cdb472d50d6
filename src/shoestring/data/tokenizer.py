"""The tokenizer ``prepare`` trains (byte-level BPE) or reuses, and its transformers copy.

Why byte-level BPE: a byte-level tokenizer never needs an unknown token and decodes back to the
exact input text, so a shard can be checked against its source. The tokenizer is trained on the
training documents only, so the vocabulary never saw validation text. A ``transformers``
directory is saved next to ``tokenizer.json`` so ``AutoTokenizer`` finds eos/bos/pad set.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from shoestring.data.shards import EOS_TOKEN
from shoestring.errors import UserError


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


def load_existing_tokenizer(path: str | Path) -> tuple[Tokenizer, Path, str]:
    """(tokenizer, its tokenizer.json, its end-of-text token) for ``--tokenizer``."""
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


def save_hf_tokenizer(tok: Tokenizer, eos: str, source_dir: Path | None, out: Path) -> None:
    """Save a ``transformers``-loadable tokenizer directory (atomically, via a rename).

    The trainer copies this directory next to the model, so ``AutoTokenizer`` finds
    eos/bos/pad set; a reused tokenizer's own bos/pad tokens are kept when its directory names
    them.
    """
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
