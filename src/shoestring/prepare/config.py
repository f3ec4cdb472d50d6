"""``PrepareConfig``: what one ``shoestring prepare`` call is asked, and where it writes.

Why a module apart from :mod:`shoestring.prepare.run`: the command line builds this config
(defaults < ``--config FILE`` < the shortcut flags < ``--set key=value``) before anything heavy
is imported, so it imports no tokenizers or numpy. ``out`` is the prepared data directory itself
(written in place: a rerun replaces its contents, as ``train``'s ``data.path`` expects one fixed
directory), not a parent of uniquely named runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoestring.config import ConfigError, opt, run_dict, validate
from shoestring.errors import UserError

__all__ = ["PLACEMENT_KEYS", "PrepareConfig"]

#: The keys of a PrepareConfig that place the output rather than say what is prepared.
PLACEMENT_KEYS = ("out", "quiet")


@dataclass
class PrepareConfig:
    """What ``prepare`` is asked; the command-line wiring is :mod:`shoestring.prepare.cli`."""

    input: str = opt("", "text file, directory, .jsonl file, or 'synthetic'")
    synthetic: int = opt(0, "use N generated math problems as the corpus (0 = off)", min=0)
    out: str = opt("", "the prepared data directory (required; written in place)")
    vocab_size: int = opt(16000, "vocabulary size of the trained tokenizer (257 at least)", min=1)
    tokenizer: str = opt("", "reuse this tokenizer.json (or a directory holding one); '' = train")
    field: str = opt("text", "JSONL field holding the text")
    val_fraction: float = opt(0.05, "fraction of documents held out for validation")
    seed: int = opt(0, "seed of the document split and of synthetic data", min=0)
    on_decode_error: str = opt(
        "replace",
        "invalid UTF-8: replace with U+FFFD, skip the document, or stop",
        choices=("replace", "skip", "error"),
    )
    min_frequency: int = opt(2, "minimum pair frequency for a BPE merge", min=0)
    split_digits: bool = opt(False, "make every digit its own token (as Llama and Qwen)")
    all_splits: bool = opt(False, "also read a directory's validation/test split files")
    quiet: bool = opt(False, "no progress bars and no summary (warnings still print)")

    def check(self) -> PrepareConfig:
        """Validate ranges and choices, and that there is an input and an output."""
        validate(self)
        if not self.input and not self.synthetic:
            raise UserError(
                "give an INPUT (file, directory, .jsonl or 'synthetic') or --synthetic N"
            )
        if not self.out:
            raise ConfigError("out is required: the prepared data directory (--out DIR)")
        if not self.tokenizer and self.vocab_size < 257:
            raise ConfigError(
                f"vocab_size {self.vocab_size} is too small: a byte-level tokenizer needs "
                "256 byte tokens + 1 special token = 257 at least"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction {self.val_fraction} must be between 0 and 1 (exclusive): "
                "validation needs at least one document and so does training"
            )
        return self

    def run_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the request without its placement."""
        return run_dict(self, PLACEMENT_KEYS)
