"""What the engine is asked and how it runs: :class:`Sampling` (the request: what to generate),
:class:`TextOptions` (how prompts are read and answers written as text), :class:`EngineOptions`
(how the engine gets there: batching, cache, precision, backend) and :class:`GenerationResult`
(one generated sequence).

Why three dataclasses: a caller states what it wants once (``Sampling``), while the knobs that
only change speed or memory (``EngineOptions``) are set where the engine is built; this is the
split TRL's ``GRPOConfig`` makes between "parameters that control generation" and "generation
acceleration". Kept apart from the engine so callers (``bench``, GRPO, ``generate``) and the
engine's own modules share one definition without importing the decode loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shoestring.config import ConfigError, opt, validate

__all__ = ["EngineOptions", "FinishReason", "GenerationResult", "Prompt", "Sampling", "TextOptions"]

# Why a row stopped: an EOS token, a stop string, or max_new_tokens.
FinishReason = Literal["eos", "stop", "length"]
# A prompt is text (tokenised by the engine) or token ids (passed through untouched).
Prompt = str | Sequence[int]


@dataclass
class Sampling:
    """What to generate. The default is greedy decoding: ``temperature=0`` is the argmax, any
    positive temperature samples (after top-k and top-p)."""

    max_new_tokens: int = opt(256, "tokens generated per sequence at most", min=1)
    temperature: float = opt(0.0, "softmax temperature; 0 = greedy (argmax), > 0 samples", min=0.0)
    top_k: int = opt(0, "sample only among the k most likely tokens; 0 = all", min=0)
    top_p: float = opt(1.0, "nucleus sampling: smallest set with this much mass", min=0.0, max=1.0)
    seed: int = opt(
        0,
        "seed of the sampling streams: sample k of prompt i draws from (seed, stream of i, k, "
        "position)",
        min=0,
    )
    stop_strings: list[str] = opt([], "stop a row once its generated text contains any of these")
    eos_token_ids: list[int] | None = opt(
        None, "token ids that end a row; None = the model's generation config + tokenizer EOS"
    )
    ignore_eos: bool = opt(False, "keep generating after EOS (benchmarks that need equal work)")
    min_new_tokens: int = opt(0, "EOS is masked out until this many tokens exist", min=0)
    num_return_sequences: int = opt(1, "samples per prompt; they share the prompt's prefill", min=1)

    def check(self) -> Sampling:
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
        """True when the next token is the argmax: the one place temperature 0 means greedy."""
        return self.temperature == 0.0


@dataclass
class TextOptions:
    """How the engine's tokenizer turns text prompts into ids and generated ids into text."""

    add_special_tokens: bool = opt(True, "let the tokenizer add BOS etc. to text prompts")
    skip_special_tokens: bool = opt(True, "drop special tokens from the decoded text")
    keep_stop_string: bool = opt(False, "keep the matched stop string in the returned text")

    def check(self) -> TextOptions:
        validate(self)
        return self


@dataclass
class EngineOptions:
    """How the engine decodes: batch sizing, cache handling, precision and backend. None of
    these change greedy tokens in fp32; they trade memory, padding and host work for speed."""

    batch_size: int = opt(
        0, "rows per forward pass; 0 = auto from model shape and free memory", min=0
    )
    max_batch_size: int = opt(0, "cap of the auto batch size; 0 = device default", min=0)
    dtype: str = opt(
        "auto",
        "compute dtype; auto = the weights' dtype, bf16/fp16 = autocast",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
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
    lean_prefill: bool = opt(
        True,
        "with lean_decode: prompts are prefilled through the lean step's fused (on a CPU "
        "prepacked) weights too, not the model's own forward",
    )
    keep_packed: bool = opt(
        False,
        "keep the lean step's fused/packed weights between generate calls while the model's "
        "weights are unchanged, as a server with fixed weights would (costs their memory "
        "between calls; a write through .data is not seen)",
    )
    fp32_kernel: str = opt(
        "auto",
        "fp32 weights on a CPU are packed for this product: avx2 = shoestring's own AVX2+FMA "
        "kernel, onednn = oneDNN's; auto = avx2 on the avx2 host class, onednn elsewhere",
        choices=("auto", "onednn", "avx2"),
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
    merge_lora: bool = opt(
        True, "run peft LoRA layers as plain linear layers with merged weights (both backends)"
    )

    def check(self) -> EngineOptions:
        validate(self)
        return self


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
