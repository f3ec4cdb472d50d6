"""What the engine is asked to do and what it hands back: :class:`SamplingConfig` (how to decode)
and :class:`GenerationResult` (one generated sequence).

Kept apart from the engine so callers (``bench``, GRPO, ``generate``) and the engine's own
modules share one definition of a request and a result without importing the decode loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shoestring.config import ConfigError, opt, validate

__all__ = ["FinishReason", "GenerationResult", "Prompt", "SamplingConfig"]

# Why a row stopped: an EOS token, a stop string, or max_new_tokens.
FinishReason = Literal["eos", "stop", "length"]
# A prompt is text (tokenised by the engine) or token ids (passed through untouched).
Prompt = str | Sequence[int]


@dataclass
class SamplingConfig:
    """How to decode. Defaults are greedy; ``temperature=0`` also means greedy."""

    max_new_tokens: int = opt(256, "tokens generated per sequence at most", min=1)
    do_sample: bool = opt(False, "sample from the distribution; false = greedy (argmax)")
    temperature: float = opt(1.0, "softmax temperature when sampling; 0 = greedy", min=0.0)
    top_k: int = opt(0, "sample only among the k most likely tokens; 0 = all", min=0)
    top_p: float = opt(1.0, "nucleus sampling: smallest set with this much mass", min=0.0, max=1.0)
    seed: int = opt(0, "seed of the sampling generator (per call)", min=0)
    stop_strings: list[str] = opt([], "stop a row once its generated text contains any of these")
    eos_token_ids: list[int] | None = opt(
        None, "token ids that end a row; None = the model's generation config + tokenizer EOS"
    )
    ignore_eos: bool = opt(False, "keep generating after EOS (benchmarks that need equal work)")
    min_new_tokens: int = opt(0, "EOS is masked out until this many tokens exist", min=0)
    num_return_sequences: int = opt(1, "samples per prompt; they share the prompt's prefill", min=1)
    batch_size: int = opt(
        0, "rows per forward pass; 0 = auto from model shape and free memory", min=0
    )
    max_batch_size: int = opt(0, "cap of the auto batch size; 0 = device default", min=0)
    dtype: str = opt(
        "auto",
        "compute dtype; auto = the weights' dtype, bf16/fp16 = autocast",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    add_special_tokens: bool = opt(True, "let the tokenizer add BOS etc. to text prompts")
    skip_special_tokens: bool = opt(True, "drop special tokens from the decoded text")
    keep_stop_string: bool = opt(False, "keep the matched stop string in the returned text")
    compact: bool = opt(True, "drop finished rows from the batch and the KV cache")
    preallocate: bool = opt(True, "reserve the KV cache once instead of growing it every step")
    refill: bool = opt(
        True,
        "continuous batching: queued prompts take the places of finished rows (needs compact "
        "and preallocate)",
    )
    group_prefill: bool = opt(True, "prefill prompts of similar length together (less padding)")
    cpu_fp32_attention: bool = opt(True, "bf16/fp16 model on CPU: fp32 KV cache and attention")
    lean_decode: bool = opt(
        True, "Llama/Qwen2/Mistral/shoestring GPT: decode steps skip the forward's overhead"
    )
    static_cache: str = opt(
        "auto",
        "fixed-shape KV cache + replayed decode step; auto = on CUDA for models the lean "
        "step supports, on = also on a CPU (no graphs), off = the dynamic engine",
        choices=("auto", "on", "off"),
    )
    cuda_graphs: bool = opt(True, "static cache on CUDA: capture the decode step as a graph")
    stop_check_interval: int = opt(
        8, "static cache: decode steps between host checks for EOS and stop strings", min=1
    )

    def check(self) -> SamplingConfig:
        """Validate ranges and cross-field rules; returns self so calls can chain."""
        validate(self)
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens="
                f"{self.max_new_tokens}; lower min_new_tokens or raise max_new_tokens"
            )
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ConfigError(f"stop_strings={self.stop_strings!r} must be non-empty strings")
        return self

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (no sampling, or temperature 0)."""
        return not self.do_sample or self.temperature == 0.0


@dataclass
class GenerationResult:
    """One generated sequence.

    ``token_ids`` are the generated ids (an EOS that ended the row included, as
    ``model.generate`` returns it); ``text`` is their decoding, cut before a matched stop string
    unless ``keep_stop_string``. ``seconds`` runs from the start of the row's prefill (with
    continuous batching a prompt joins the running batch later) to the step the row finished,
    so it is latency, not a share of the batch time.
    """

    text: str
    token_ids: list[int]
    n_tokens: int
    finish_reason: FinishReason
    seconds: float
    prompt_tokens: int = 0
    stop_string: str | None = None
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for problems.jsonl and friends)."""
        return {
            "index": self.index,
            "text": self.text,
            "token_ids": self.token_ids,
            "n_tokens": self.n_tokens,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "stop_string": self.stop_string,
            "seconds": self.seconds,
        }
