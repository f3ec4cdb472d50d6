"""What ``bench`` was asked: :class:`BenchConfig`, written to config.json.

Kept apart from the runner (and free of torch) so the command-line wiring in
:mod:`shoestring.bench.cli` can build and check a config without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoestring.config import ConfigError, opt, validate
from shoestring.scoring.protocols import PROTOCOLS

__all__ = ["PROTOCOL_CHOICES", "BenchConfig"]

#: ``--protocol`` values: ``auto`` (chat-cot with a chat template, else plain) or any protocol.
PROTOCOL_CHOICES: tuple[str, ...] = ("auto", *PROTOCOLS)


@dataclass
class BenchConfig:
    """Everything ``bench`` was asked; written to config.json."""

    models: list[str] = opt(
        [], "HF model dirs, shoestring run dirs, Hub names, or llama2.c MODEL.bin[:TOKENIZER.model]"
    )
    data: str = opt("", "GSM8K JSONL file, a directory with {split}.jsonl, or openai/gsm8k")
    split: str = opt("test", "split: file in a data directory / hub split")
    limit: int | None = opt(None, "score only N problems (None = all)", min=1)
    subset_seed: int | None = opt(None, "seeded random subset of --limit problems (None = first N)")
    protocol: str = opt(
        "auto",
        "scoring protocol; auto = chat-cot with a chat template, else plain",
        choices=PROTOCOL_CHOICES,
    )
    max_new_tokens: int = opt(256, "tokens generated per problem at most", min=1)
    batch_size: int = opt(
        0, "rows per forward pass; 0 = auto from model shape and free memory", min=0
    )
    dtype: str = opt(
        "auto",
        "weights dtype; auto = bf16 where the host computes it fast",
        choices=("auto", "fp32", "bf16"),
    )
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    threads: int = opt(0, "CPU threads for torch; 0 = physical cores", min=0)
    out: str = opt("runs/bench", "results directory (rerun into it to resume)")
    tokenizer_model: str | None = opt(None, "sentencepiece .model for llama2.c .bin models")
    trust_remote_code: bool = opt(False, "allow models that ship their own Python code")
    strict_data: bool = opt(
        False, "reject the data on the first malformed line instead of skipping and reporting it"
    )
    log_prompts: bool = opt(
        False,
        "keep each problem's full prompt text in problems.jsonl (its lm-eval prompt_hash is "
        "always kept)",
    )
    examples: int = opt(2, "correct and incorrect responses shown per model in report.md", min=0)
    progress: bool = opt(True, "progress bars on stderr")
    quiet: bool = opt(False, "no progress bars or log lines on stderr (log.txt keeps them)")

    @property
    def progress_bars(self) -> bool:
        """Whether to draw progress bars: asked for, and not silenced by ``quiet``."""
        return self.progress and not self.quiet

    def check(self) -> BenchConfig:
        """Validate ranges/choices and cross-field rules; returns self so calls can chain."""
        validate(self)
        if not self.models:
            raise ConfigError("bench needs at least one MODEL")
        if not self.data:
            raise ConfigError("bench needs --data (a GSM8K JSONL file or openai/gsm8k)")
        if self.subset_seed is not None and self.limit is None:
            raise ConfigError(
                "--subset-seed picks a random subset of --limit problems; give --limit N too"
            )
        return self
