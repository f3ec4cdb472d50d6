"""Batched KV-cache text generation for any Hugging Face causal LM.

Why not ``model.generate``? The original study generated GSM8K answers one problem at a time in
fp32, which on a CPU leaves almost all of the machine idle: one sequence per forward pass is a
matrix-vector product bound by memory bandwidth. This engine decodes many prompts together
(left padding, an attention mask and position ids derived from it, one shared KV cache), and it
owns the decode loop so it can:

* stop every row on its own - EOS or a stop string, found by decoding only the new tail of each
  row instead of re-tokenising whole sequences;
* stop paying for finished rows - the batch is compacted (rows dropped from the ids, mask, and
  every cache layer; leading all-padding columns trimmed) as soon as a row finishes;
* share a prompt's prefill between its samples (``num_return_sequences``), which GRPO needs;
* pick the batch size from the model's shape and the memory that is actually free.

Greedy decoding in fp32 reproduces ``model.generate(do_sample=False)`` token for token (the
tests check it for Llama and GPT-2), so speed never costs correctness. Sampling uses one
``torch.Generator`` seeded per call, so a seed gives the same samples for the same prompts,
config and batch size.

The public entry points are :func:`generate_batch` (one batch, one forward per step) and
:func:`generate_all` (any number of prompts: length-sorted batches, progress bar, per-item
callback for resumable benchmarks, results in input order).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from shoestring.config import ConfigError, opt, validate
from shoestring.errors import UserError
from shoestring.eval.lean_decode import LeanDecoder
from shoestring.eval.sampling import choose_next_tokens
from shoestring.runtime import DTYPE_NAMES

FinishReason = Literal["eos", "stop", "length"]
Prompt = str | Sequence[int]

# Largest batch the auto sizing picks. On a CPU throughput stops improving long before memory
# runs out, while a larger batch pads more and waits longer for its slowest row.
DEFAULT_MAX_BATCH = {"cpu": 64, "cuda": 256, "mps": 64}
# Fraction of the free memory the auto batch size may plan to use.
MEMORY_FRACTION = {"cpu": 0.5, "cuda": 0.8, "mps": 0.5}
# Grouped prefill: a prompt joins the current group if it is at least this fraction of the
# group's longest prompt, or while the group holds fewer tokens than the minimum.
PREFILL_GROUP_RATIO = 0.8
PREFILL_GROUP_MIN_TOKENS = 256


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
    group_prefill: bool = opt(True, "prefill prompts of similar length together (less padding)")
    cpu_fp32_attention: bool = opt(True, "bf16/fp16 model on CPU: fp32 KV cache and attention")
    lean_decode: bool = opt(
        True, "Llama/Qwen2/Mistral/shoestring GPT: decode steps skip the forward's overhead"
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
    unless ``keep_stop_string``. ``seconds`` runs from the start of the row's batch (prefill
    included) to the step the row finished, so it is latency, not a share of the batch time.
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


# ----------------------------------------------------------------------------- small helpers


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (HF models keep all weights on one device here)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """Dtype of the model's first floating-point parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids of each prompt; id lists pass through untouched (callers that tokenised
    already, like GRPO, must not be re-tokenised)."""
    texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    out: list[list[int]] = [[] if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    if texts:
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer")
        enc = tokenizer([prompts[i] for i in texts], add_special_tokens=add_special_tokens)
        for i, ids in zip(texts, enc["input_ids"], strict=True):
            out[i] = list(ids)
    for i, ids in enumerate(out):
        if not ids:
            raise ValueError(
                f"prompt {i} is empty after tokenisation; the model needs at least "
                "one token to condition on"
            )
    return out


def resolve_eos_ids(model: Any, tokenizer: Any, cfg: SamplingConfig) -> set[int]:
    """The ids that end a row: the config's list if given, else the union of the model's
    generation config (what ``model.generate`` uses) and the tokenizer's EOS."""
    if cfg.eos_token_ids is not None:
        return {int(t) for t in cfg.eos_token_ids}
    ids: set[int] = set()
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None)]
    for src in sources:
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else [int(e) for e in eos])
            break
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if tok_eos is not None:
        ids.add(int(tok_eos))
    return ids


def _pad_id(tokenizer: Any, model: Any, eos_ids: set[int]) -> int:
    """Any valid id works for padding (it is masked out); prefer the declared pad token."""
    for value in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
    ):
        if isinstance(value, int) and value >= 0:
            return value
    return min(eos_ids) if eos_ids else 0


def _forward_params(model: Any) -> set[str]:
    """Keyword arguments the model's forward declares (cached on the model object)."""
    cached = getattr(model, "_shoestring_forward_params", None)
    if cached is None:
        try:
            cached = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            cached = set()
        with contextlib.suppress(AttributeError, TypeError):
            model._shoestring_forward_params = cached
    return cached


@contextlib.contextmanager
def _compute_dtype(model: torch.nn.Module, dtype: str) -> Iterator[None]:
    """Autocast when the config asks for a lower precision than the weights hold.

    bf16 *weights* (``load_model_and_tokenizer(dtype="bf16")``) are faster than autocast, which
    re-casts every weight on every step; autocast is the fallback for an fp32 model.
    """
    weights = model_dtype(model)
    want = None if dtype == "auto" else DTYPE_NAMES[dtype]
    if want is None or want == weights:
        yield
        return
    if want == torch.float32:
        raise ConfigError(
            f"dtype=fp32 was asked for but the weights are {weights}; load the "
            "model in fp32 (--dtype fp32) instead of up-casting low-precision weights"
        )
    device_type = model_device(model).type
    with torch.autocast(device_type=device_type, dtype=want):
        yield


# ----------------------------------------------------------------------------- KV cache surgery


def _cache_layers(cache: Any) -> list[Any] | None:
    """The per-layer objects of a transformers >= 4.56 ``Cache`` (``cache.layers``)."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list | tuple):
        return list(layers)
    return None


try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - transformers < 4.56 has no layer classes
    DynamicCache = DynamicLayer = None  # type: ignore[assignment,misc]


if DynamicLayer is not None:

    class PreallocatedLayer(DynamicLayer):  # type: ignore[misc,valid-type]
        """A full-attention cache layer that writes into a reserved buffer instead of growing
        by ``torch.cat``.

        ``DynamicLayer`` concatenates on every step, which allocates and copies the whole
        cache once per token and layer; on a CPU those large short-lived allocations (page
        faults included) cost more than the matmuls of a small model. This layer reserves
        ``prompt + max_new_tokens`` positions once and exposes ``keys``/``values`` as views of
        the filled part, so everything that reads a ``DynamicLayer`` keeps working. Dropping
        rows and trimming leading padding are O(buffer) and O(1) respectively.

        ``store_dtype`` keeps the cache in another dtype than the model computes in (fp32 for a
        bf16 model on a CPU, see :func:`_cpu_fp32_attention`).
        """

        def __init__(self, reserve: int = 0, store_dtype: torch.dtype | None = None) -> None:
            super().__init__()
            self.reserve = reserve
            self.store_dtype = store_dtype
            self._kbuf: torch.Tensor | None = None
            self._vbuf: torch.Tensor | None = None
            self._len = 0

        def _views(self) -> None:
            assert self._kbuf is not None and self._vbuf is not None
            self.keys = self._kbuf[:, :, : self._len]
            self.values = self._vbuf[:, :, : self._len]

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._len + key_states.shape[-2]
            if self._kbuf is None or need > self._kbuf.shape[-2]:
                self._grow(key_states, value_states, need)
            assert self._kbuf is not None and self._vbuf is not None
            self._kbuf[:, :, self._len : need].copy_(key_states)
            self._vbuf[:, :, self._len : need].copy_(value_states)
            self._len = need
            self._views()
            return self.keys, self.values

        def _grow(self, k: torch.Tensor, v: torch.Tensor, need: int) -> None:
            old = 0 if self._kbuf is None else self._kbuf.shape[-2]
            cap = max(need + self.reserve, 2 * old)
            b, h, _, d = k.shape
            dtype = self.store_dtype or k.dtype
            kbuf = k.new_empty((b, h, cap, d), dtype=dtype)
            vbuf = v.new_empty((b, h, cap, v.shape[-1]), dtype=dtype)
            if self._kbuf is not None and self._len:
                kbuf[:, :, : self._len].copy_(self._kbuf[:, :, : self._len])
                assert self._vbuf is not None
                vbuf[:, :, : self._len].copy_(self._vbuf[:, :, : self._len])
            self._kbuf, self._vbuf = kbuf, vbuf
            self.reserve = 0  # the reserve is for the first allocation; later growth doubles

        def place(
            self,
            rows: torch.Tensor,
            keys: torch.Tensor,
            values: torch.Tensor,
            batch: int,
            width: int,
        ) -> None:
            """Write a sub-batch's prefill (``rows`` of the full batch, right-aligned to
            ``width`` columns) into this layer; the buffer is zero-filled first so the left
            padding holds finite values (masked, but 0 * NaN would still be NaN)."""
            if self._kbuf is None:
                self.lazy_initialization(keys, values)
                b, h, _, d = keys.shape
                dtype = self.store_dtype or keys.dtype
                self._kbuf = keys.new_zeros((batch, h, width + self.reserve, d), dtype=dtype)
                self._vbuf = values.new_zeros(
                    (batch, h, width + self.reserve, values.shape[-1]), dtype=dtype
                )
                self.reserve = 0
                self._len = width
            assert self._kbuf is not None and self._vbuf is not None
            w = keys.shape[-2]
            idx = rows.to(self._kbuf.device)
            self._kbuf[idx, :, width - w : width] = keys.to(self._kbuf.dtype)
            self._vbuf[idx, :, width - w : width] = values.to(self._vbuf.dtype)
            self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep rows ``indices``; only the filled positions are copied (the reserve past
            them is allocated, not copied: early in a batch it is most of the buffer)."""
            if self._kbuf is None or self._vbuf is None:
                return
            idx = indices.to(self._kbuf.device)
            self._kbuf = self._select(self._kbuf, idx)
            self._vbuf = self._select(self._vbuf, idx)
            self._views()

        def _select(self, buf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if 2 * self._len >= buf.shape[2]:
                return buf.index_select(0, idx)
            out = buf.new_empty((idx.numel(), *buf.shape[1:]))
            torch.index_select(buf[:, :, : self._len], 0, idx, out=out[:, :, : self._len])
            return out

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._kbuf is None or self._vbuf is None:
                return
            self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
            self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
            self._views()

        def trim_left(self, n: int) -> None:
            """Forget the first ``n`` positions (a view: no copy)."""
            if self._kbuf is None or self._vbuf is None or n <= 0:
                return
            self._kbuf = self._kbuf[:, :, n:]
            self._vbuf = self._vbuf[:, :, n:]
            self._len -= n
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            if self._kbuf is not None:
                self._len = max(0, self._len + tokens_to_remove)
                self._views()

        def reset(self) -> None:
            self._kbuf = self._vbuf = None
            self._len = 0
            super().reset()

else:  # pragma: no cover
    PreallocatedLayer = None  # type: ignore[assignment,misc]


def make_cache(model: Any, reserve: int, store_dtype: torch.dtype | None = None) -> Any | None:
    """A ``DynamicCache`` for ``model`` whose full-attention layers are preallocated
    (:class:`PreallocatedLayer`), or ``None`` to let the model build its own cache.

    Built from the model config like ``model.generate`` does, so sliding-window and other
    special layers keep their own classes; only plain ``DynamicLayer`` entries are swapped.
    """
    if DynamicCache is None or PreallocatedLayer is None:
        return None
    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    except Exception:  # noqa: BLE001 - an exotic config: let the model make its own cache
        return None
    layers = _cache_layers(cache)
    if layers is None:
        return None
    if layers:
        cache.layers = [
            PreallocatedLayer(reserve, store_dtype) if type(layer) is DynamicLayer else layer
            for layer in layers
        ]
    elif getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = lambda: PreallocatedLayer(reserve, store_dtype)
    else:
        return None
    return cache


def _sliceable(layer: Any) -> bool:
    return DynamicLayer is not None and isinstance(layer, DynamicLayer)


def _trimmable(layer: Any) -> bool:
    return (PreallocatedLayer is not None and isinstance(layer, PreallocatedLayer)) or (
        DynamicLayer is not None and type(layer) is DynamicLayer
    )


def select_cache_rows(cache: Any, index: torch.Tensor) -> Any | None:
    """Keep only the batch rows in ``index`` of a KV cache; returns the cache, or ``None`` when
    this cache type cannot be sliced (the caller then keeps finished rows instead).

    Handles transformers ``DynamicCache`` (every ``DynamicLayer`` subclass - preallocated,
    sliding-window, indexed - through its ``batch_select_indices``) and legacy tuple caches
    ``((k, v), ...)``. Anything else (static, quantised, offloaded, linear-attention states)
    is left alone rather than risk corrupting it halfway.
    """
    if cache is None:
        return None
    if isinstance(cache, tuple | list):
        try:
            return type(cache)(
                tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache
            )
        except (AttributeError, TypeError, RuntimeError):
            return None
    layers = _cache_layers(cache)
    if DynamicCache is None or not isinstance(cache, DynamicCache) or layers is None:
        return None
    if getattr(cache, "offloading", False) or not all(_sliceable(layer) for layer in layers):
        return None
    for layer in layers:
        if getattr(layer, "is_initialized", True):
            layer.batch_select_indices(index)
    return cache


def trim_cache_left(cache: Any, n: int) -> bool:
    """Drop the first ``n`` positions of every layer (columns that are padding in every row
    left after compaction). Only for full-attention dynamic layers; returns success."""
    if n <= 0:
        return True
    layers = _cache_layers(cache)
    if DynamicCache is None or not isinstance(cache, DynamicCache) or not layers:
        return False
    if not all(_trimmable(layer) for layer in layers):
        return False
    for layer in layers:
        if isinstance(layer, PreallocatedLayer):
            layer.trim_left(n)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, n:, :]
            layer.values = layer.values[:, :, n:, :]
    return True


def repeat_cache_rows(cache: Any, repeats: int) -> Any | None:
    """Repeat every row ``repeats`` times (row i -> rows i*r .. i*r+r-1); None if unsupported."""
    if repeats == 1:
        return cache
    if isinstance(cache, tuple | list):
        return type(cache)(
            tuple(t.repeat_interleave(repeats, dim=0) for t in layer) for layer in cache
        )
    layers = _cache_layers(cache)
    if DynamicCache is None or not isinstance(cache, DynamicCache) or layers is None:
        return None
    if not all(_sliceable(layer) for layer in layers):
        return None
    cache.batch_repeat_interleave(repeats)
    return cache


_CPU_ATTENTION = "shoestring_cpu_fp32_sdpa"
_cpu_attention_registered: bool | None = None


def _register_cpu_attention() -> bool:
    """Register an SDPA variant that runs attention in the KV cache's dtype (fp32) when the
    model computes in bf16/fp16. Returns False where this transformers has no registry."""
    global _cpu_attention_registered
    if _cpu_attention_registered is not None:
        return _cpu_attention_registered
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # pragma: no cover - older transformers
        _cpu_attention_registered = False
        return False

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> Any:
        dtype = query.dtype
        if key.dtype == dtype:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(key.dtype)
        out, weights = sdpa_attention_forward(
            module, query.to(key.dtype), key, value, attention_mask, **kwargs
        )
        return out.to(dtype), weights

    AttentionInterface.register(_CPU_ATTENTION, attention)
    AttentionMaskInterface.register(_CPU_ATTENTION, sdpa_mask)
    _cpu_attention_registered = True
    return True


@contextlib.contextmanager
def _cpu_fp32_attention(model: Any, enabled: bool) -> Iterator[torch.dtype | None]:
    """For a bf16/fp16 model on a CPU: keep the KV cache in fp32 and attend in fp32.

    Why: PyTorch's CPU flash-attention kernel is several times slower in bf16 than in fp32 for
    one query token (decode) - on a 2-core AVX512-BF16 host it took ~45% of a bf16 generation
    step. The matmuls of the weights stay bf16 (where bf16 is fast). Only models whose
    attention goes through the transformers attention registry (Llama, Qwen2, GPT-2, ...) and
    that use ``sdpa`` are switched; the setting is restored on exit. Yields the cache dtype
    to use (``None`` = the model's own).
    """
    config = getattr(model, "config", None)
    module = sys.modules.get(type(model).__module__)
    ok = (
        enabled
        and config is not None
        and not getattr(model, "_shoestring_no_fp32_attention", False)
        and model_device(model).type == "cpu"
        and model_dtype(model) in (torch.bfloat16, torch.float16)
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and module is not None
        and hasattr(module, "ALL_ATTENTION_FUNCTIONS")
        and _register_cpu_attention()
    )
    if not ok:
        yield None
        return
    config._attn_implementation = _CPU_ATTENTION
    try:
        yield torch.float32
    finally:
        config._attn_implementation = "sdpa"


# ----------------------------------------------------------------------------- incremental text


class IncrementalText:
    """Text of a growing token list, decoded a few tokens at a time.

    Decoding the whole sequence every step costs O(length) per token; this keeps two offsets
    (the technique of vLLM/TGI): it decodes ``tokens[prefix:]`` and ``tokens[prefix:read]`` and
    appends the difference, so SentencePiece leading spaces and multi-byte characters split over
    tokens come out right while each step decodes only a short tail.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.text = ""
        self._prefix = 0
        self._read = 0

    def update(self, tokens: Sequence[int]) -> str:
        """Consume ``tokens`` (the full generated list so far); return the new text."""
        decode = self.tokenizer.decode
        before = decode(tokens[self._prefix : self._read], skip_special_tokens=self.skip)
        after = decode(tokens[self._prefix :], skip_special_tokens=self.skip)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            self._prefix, self._read = self._read, len(tokens)
            self.text += delta
            return delta
        return ""


def _find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest occurrence (position, string) of any stop string at or after ``start``."""
    best: tuple[int, str] | None = None
    for s in stops:
        pos = text.find(s, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best


# ----------------------------------------------------------------------------- the decode loop


@dataclass
class _Row:
    """Book-keeping of one output sequence while its batch runs."""

    prompt_index: int
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: IncrementalText | None = None
    emitted: int = 0  # characters already streamed to on_text
    stop: tuple[int, str] | None = None


def _forward(
    model: Any,
    params: set[str],
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
) -> tuple[torch.Tensor, Any]:
    """One forward pass returning fp32 logits of the last position and the updated cache."""
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "past_key_values": cache,
        "use_cache": True,
    }
    if "position_ids" in params:
        kwargs["position_ids"] = positions
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # prefill: skip the vocab projection of every prompt token
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    new_cache = getattr(out, "past_key_values", None)
    if new_cache is None and isinstance(out, tuple) and len(out) > 1:
        new_cache = out[1]
    return logits[:, -1, :].float(), new_cache


def _left_pad(
    ids_list: Sequence[Sequence[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, mask and position ids with every prompt right-aligned (its next token is then in
    the last column for every row); positions count real tokens only, as ``generate`` does."""
    width = max(len(x) for x in ids_list)
    input_ids = torch.full((len(ids_list), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids_list), width), dtype=torch.long)
    for i, ids in enumerate(ids_list):
        input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return input_ids, mask, pos


def prefill_groups(
    lengths: Sequence[int], ratio: float | None = None, min_tokens: int | None = None
) -> list[list[int]]:
    """Split rows (longest first) into groups whose prompts are within ``ratio`` of the
    group's longest, so a group pads little; a group is only closed once it holds
    ``min_tokens`` tokens, since many tiny forward passes waste the matmul efficiency that
    batching is for."""
    ratio = PREFILL_GROUP_RATIO if ratio is None else ratio
    min_tokens = PREFILL_GROUP_MIN_TOKENS if min_tokens is None else min_tokens
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            longest = lengths[g[0]]
            if lengths[i] >= ratio * longest or longest * len(g) < min_tokens:
                g.append(i)
                continue
        groups.append([i])
    return groups


def _prefill(
    model: Any,
    params: set[str],
    ids_list: list[list[int]],
    cfg: SamplingConfig,
    pad: int,
    device: torch.device,
    store_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """Run the prompts through the model; returns last-position logits, the cache and the
    attention mask, rows in input order.

    With a preallocated cache the prompts are prefilled in groups of similar length and
    placed into one right-aligned cache, which skips most of the padding a single padded
    prefill of very different prompt lengths (GSM8K: 33 to 112 tokens) would compute.
    """
    groups = prefill_groups([len(x) for x in ids_list]) if cfg.group_prefill else []
    if cfg.preallocate and len(groups) > 1:
        merged = make_cache(model, cfg.max_new_tokens, store_dtype)
        layers = _cache_layers(merged)
        if layers and all(isinstance(layer, PreallocatedLayer) for layer in layers):
            width = max(len(x) for x in ids_list)
            logits: torch.Tensor | None = None
            for g in groups:
                ids, mask, pos = _left_pad([ids_list[i] for i in g], pad, device)
                part_logits, part = _forward(
                    model, params, ids, mask, pos, make_cache(model, 0, store_dtype)
                )
                part_layers = _cache_layers(part) or []
                if len(part_layers) != len(layers) or not all(
                    isinstance(layer, PreallocatedLayer) for layer in part_layers
                ):
                    break  # the model built its cache differently: use one padded prefill
                if logits is None:
                    logits = part_logits.new_empty((len(ids_list), part_logits.shape[-1]))
                rows = torch.tensor(g, dtype=torch.long, device=device)
                logits[rows] = part_logits
                for dst, src in zip(layers, part_layers, strict=True):
                    dst.place(rows, src.keys, src.values, len(ids_list), width)
            else:
                _ids, mask, _pos = _left_pad(ids_list, pad, device)
                assert logits is not None
                return logits, merged, mask
    ids, mask, pos = _left_pad(ids_list, pad, device)
    cache = make_cache(model, cfg.max_new_tokens, store_dtype) if cfg.preallocate else None
    logits, cache = _forward(model, params, ids, mask, pos, cache)
    return logits, cache, mask


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    cfg: SamplingConfig | None = None,
    *,
    on_text: Callable[[int, str], None] | None = None,
    on_result: Callable[[int, GenerationResult], None] | None = None,
    generator: torch.Generator | None = None,
) -> list[GenerationResult]:
    """Generate for all ``prompts`` in one batch (one forward pass per step for all rows).

    ``prompts`` are strings or token-id lists. Returns ``len(prompts) * num_return_sequences``
    results, sample ``k`` of prompt ``i`` at ``i * n + k``. ``on_text(i, delta)`` streams new
    text of output ``i`` (text that could still turn into a stop string is held back until it is
    certain); ``on_result(i, result)`` fires the moment output ``i`` finishes. ``generator``
    overrides the per-call generator seeded from ``cfg.seed``.
    """
    cfg = (cfg or SamplingConfig()).check()
    if not prompts:
        return []
    device = model_device(model)
    ids_list = encode_prompts(tokenizer, prompts, cfg.add_special_tokens)
    eos = (
        set()
        if cfg.ignore_eos and cfg.min_new_tokens == 0
        else resolve_eos_ids(model, tokenizer, cfg)
    )
    if generator is None and not cfg.greedy:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    store_dtype = None
    try:
        with (
            torch.inference_mode(),
            _compute_dtype(model, cfg.dtype),
            _cpu_fp32_attention(model, cfg.cpu_fp32_attention) as store_dtype,
        ):
            return _decode(
                model,
                tokenizer,
                ids_list,
                cfg,
                eos,
                device,
                generator,
                on_text,
                on_result,
                store_dtype,
            )
    except RuntimeError as exc:
        # A model that reaches the registry but also runs attention its own way may refuse
        # the fp32 cache (dtype mismatch) in its first forward pass, before any output exists:
        # remember that and run it with its own dtype.
        if store_dtype is None or "dtype" not in str(exc).lower():
            raise
        with contextlib.suppress(AttributeError, TypeError):
            model._shoestring_no_fp32_attention = True
        return generate_batch(
            model,
            tokenizer,
            prompts,
            cfg,
            on_text=on_text,
            on_result=on_result,
            generator=generator,
        )


def _decode(
    model: Any,
    tokenizer: Any,
    ids_list: list[list[int]],
    cfg: SamplingConfig,
    eos: set[int],
    device: torch.device,
    generator: torch.Generator | None,
    on_text: Callable[[int, str], None] | None,
    on_result: Callable[[int, GenerationResult], None] | None,
    store_dtype: torch.dtype | None = None,
) -> list[GenerationResult]:
    t0 = time.perf_counter()
    params = _forward_params(model)
    n = cfg.num_return_sequences
    pad = _pad_id(tokenizer, model, eos)
    stops = list(cfg.stop_strings)
    hold = max((len(s) for s in stops), default=1) - 1  # chars that may still start a stop
    track_text = bool(stops) or on_text is not None
    if track_text and tokenizer is None:
        raise ValueError("stop strings and streaming need a tokenizer")
    eos_list = sorted(eos)
    eos_tensor = torch.tensor(eos_list, device=device, dtype=torch.long) if eos_list else None

    lengths = [len(x) for x in ids_list]
    logits, cache, mask = _prefill(model, params, ids_list, cfg, pad, device, store_dtype)
    lean = (
        LeanDecoder.build(model)
        if cfg.lean_decode and DynamicCache is not None and isinstance(cache, DynamicCache)
        else None
    )
    next_pos = torch.tensor(lengths, dtype=torch.long, device=device)

    # Samples of one prompt share its prefill: repeat the cache rows instead of re-reading.
    if n > 1:
        repeated = repeat_cache_rows(cache, n)
        if repeated is None:
            raise UserError(
                f"num_return_sequences>1 needs a cache that can be repeated ({type(cache)}); "
                "repeat the prompts instead"
            )
        cache = repeated
        logits = logits.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        next_pos = next_pos.repeat_interleave(n, dim=0)

    rows = [
        _Row(prompt_index=i // n, prompt_tokens=lengths[i // n]) for i in range(len(ids_list) * n)
    ]
    if track_text:
        for r in rows:
            r.text = IncrementalText(tokenizer, cfg.skip_special_tokens)
    results: list[GenerationResult | None] = [None] * len(rows)
    active = list(range(len(rows)))  # output index of each batch row, in batch order
    alive = [True] * len(rows)  # per batch row; False = finished but still in the batch
    compact = cfg.compact

    def finish(out_idx: int, reason: FinishReason) -> None:
        row = rows[out_idx]
        text = (
            tokenizer.decode(row.tokens, skip_special_tokens=cfg.skip_special_tokens)
            if tokenizer is not None
            else ""
        )
        stop_str = None
        if reason == "stop" and row.stop is not None:
            found = _find_stop(text, stops) or row.stop
            stop_str = found[1]
            if not cfg.keep_stop_string:
                text = text[: found[0]]
            else:
                text = text[: found[0] + len(found[1])]
        if on_text is not None and len(text) > row.emitted:
            on_text(out_idx, text[row.emitted :])
            row.emitted = len(text)
        res = GenerationResult(
            text=text,
            token_ids=row.tokens,
            n_tokens=len(row.tokens),
            finish_reason=reason,
            seconds=time.perf_counter() - t0,
            prompt_tokens=row.prompt_tokens,
            stop_string=stop_str,
            index=out_idx,
        )
        results[out_idx] = res
        if on_result is not None:
            on_result(out_idx, res)

    step = 0
    while True:
        if eos_tensor is not None and step < cfg.min_new_tokens:
            logits[:, eos_tensor] = float("-inf")
        next_tokens = choose_next_tokens(logits, cfg, generator)
        step += 1
        finished: list[int] = []
        for b, tok in enumerate(next_tokens.tolist()):
            if not alive[b]:
                continue
            out_idx = active[b]
            row = rows[out_idx]
            row.tokens.append(tok)
            reason: FinishReason | None = None
            if tok in eos and not cfg.ignore_eos:
                reason = "eos"
            elif row.text is not None:
                old_len = len(row.text.text)
                row.text.update(row.tokens)
                if stops:
                    hit = _find_stop(row.text.text, stops, max(0, old_len - hold))
                    if hit is not None:
                        row.stop = hit
                        reason = "stop"
                if reason is None and on_text is not None:
                    safe = len(row.text.text) - hold if stops else len(row.text.text)
                    if safe > row.emitted:
                        on_text(out_idx, row.text.text[row.emitted : safe])
                        row.emitted = safe
            if reason is None and step >= cfg.max_new_tokens:
                reason = "length"
            if reason is not None:
                finish(out_idx, reason)
                alive[b] = False
                finished.append(b)
        if not any(alive):
            break

        if finished and compact:
            keep = [b for b in range(len(active)) if alive[b]]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            selected = select_cache_rows(cache, index)
            if selected is None:
                compact = False  # this cache type cannot be sliced: keep rows, ignore them
            else:
                cache = selected
                next_tokens = next_tokens.index_select(0, index)
                mask = mask.index_select(0, index)
                next_pos = next_pos.index_select(0, index)
                active = [active[b] for b in keep]
                alive = [True] * len(active)
                # Columns that are padding in every remaining row cost attention for nothing.
                lead = int(mask.any(dim=0).to(torch.int8).argmax())
                if lead > 0 and trim_cache_left(cache, lead):
                    mask = mask[:, lead:]

        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        if lean is not None:
            logits = lean.step(next_tokens, mask, next_pos, cache)
        else:
            logits, cache = _forward(
                model, params, next_tokens[:, None], mask, next_pos[:, None], cache
            )
        next_pos = next_pos + 1

    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------- batch sizing


def _cfg_get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def estimate_row_bytes(
    config: Any, prompt_len: int, max_new_tokens: int, dtype_bytes: int, logits_to_keep: bool = True
) -> int:
    """Memory one row of a batch needs at its peak: the KV cache at full length (with room for
    the copy ``torch.cat`` makes while the cache grows) plus prefill activations and logits.

    A deliberate over-estimate: running out of memory halfway through a benchmark costs far
    more than a slightly smaller batch.
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layers = int(
        _cfg_get(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers", default=12)
    )
    hidden = int(_cfg_get(config, "hidden_size", "n_embd", "d_model", default=768))
    heads = int(_cfg_get(config, "num_attention_heads", "n_head", "n_heads", default=12))
    kv_heads = int(_cfg_get(config, "num_key_value_heads", "n_kv_heads", default=heads))
    head_dim = int(_cfg_get(config, "head_dim", default=hidden // max(heads, 1)))
    k_dim = head_dim
    if getattr(config, "qk_rope_head_dim", 0) or getattr(config, "qk_nope_head_dim", 0):
        k_dim = int(getattr(config, "qk_nope_head_dim", 0) or head_dim) + int(
            getattr(config, "qk_rope_head_dim", 0) or 0
        )
    v_dim = int(getattr(config, "v_head_dim", 0) or head_dim)
    inter = int(_cfg_get(config, "intermediate_size", "n_inner", "d_ff", default=4 * hidden))
    vocab = int(_cfg_get(config, "vocab_size", default=32000))
    seq = prompt_len + max_new_tokens
    kv = layers * kv_heads * (k_dim + v_dim) * seq * dtype_bytes
    kv = int(kv * 1.5)
    acts = prompt_len * (6 * hidden + 3 * inter + 2 * heads * prompt_len) * dtype_bytes
    logits = (1 if logits_to_keep else prompt_len) * vocab * (dtype_bytes + 4) * 2
    return kv + acts + logits


def available_memory(device: torch.device) -> int:
    """Bytes free for generation on ``device`` (CUDA: free device memory; else host RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def auto_batch_size(
    model: Any, prompt_len: int, cfg: SamplingConfig, free_bytes: int | None = None
) -> int:
    """Largest number of rows whose estimated peak memory fits a fraction of the free memory,
    capped (``cfg.max_batch_size`` or the device default) because past a point a bigger batch
    only adds padding and tail latency."""
    device = model_device(model)
    dev = device.type if device.type in DEFAULT_MAX_BATCH else "cpu"
    cap = cfg.max_batch_size or DEFAULT_MAX_BATCH[dev]
    free = available_memory(device) if free_bytes is None else free_bytes
    dtype = (
        DTYPE_NAMES.get(cfg.dtype, model_dtype(model))
        if cfg.dtype != "auto"
        else model_dtype(model)
    )
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    per_row = estimate_row_bytes(
        getattr(model, "config", None),
        prompt_len,
        cfg.max_new_tokens,
        dtype_bytes,
        "logits_to_keep" in _forward_params(model),
    )
    fit = int(free * MEMORY_FRACTION[dev]) // max(per_row, 1)
    return max(1, min(cap, fit))


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    cfg: SamplingConfig | None = None,
    *,
    callback: Callable[[int, GenerationResult], None] | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[GenerationResult]:
    """Generate for any number of prompts; results come back in input order.

    Prompts are sorted longest first (little padding per batch, and the batch most likely to
    run out of memory runs first) and split into batches of ``cfg.batch_size`` rows, or an
    auto size per batch from the model shape and free memory. ``callback(i, result)`` fires as
    output ``i`` finishes (``i = prompt * num_return_sequences + sample``), so a benchmark can
    append it to a JSONL file and resume by passing only the prompts still missing. An
    out-of-memory batch is retried at half the size, keeping the outputs already delivered.
    """
    cfg = (cfg or SamplingConfig()).check()
    n = cfg.num_return_sequences
    ids_list = encode_prompts(tokenizer, prompts, cfg.add_special_tokens)
    order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
    results: list[GenerationResult | None] = [None] * (len(ids_list) * n)
    device = model_device(model)
    generator = None if cfg.greedy else torch.Generator(device=device).manual_seed(cfg.seed)
    sticky_cap: int | None = None  # lowered after an out-of-memory batch

    try:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(results),
            desc=desc,
            unit="seq",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
        )
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None

    start = 0
    while start < len(order):
        rows_fit = cfg.batch_size or auto_batch_size(model, len(ids_list[order[start]]), cfg)
        prompts_per_batch = max(1, rows_fit // n)  # a prompt brings n rows (its samples)
        if sticky_cap is not None:
            prompts_per_batch = min(prompts_per_batch, sticky_cap)
        chunk = order[start : start + prompts_per_batch]

        def deliver(local: int, res: GenerationResult, chunk: list[int] = chunk) -> None:
            out = chunk[local // n] * n + local % n
            if results[out] is not None:
                return
            res.index = out
            results[out] = res
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(out, res)

        try:
            generate_batch(
                model,
                tokenizer,
                [ids_list[i] for i in chunk],
                cfg,
                on_result=deliver,
                generator=generator,
            )
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not _is_oom(exc) or len(chunk) == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            sticky_cap = max(1, len(chunk) // 2)
            # Prompts whose every sample already arrived are done; retry the rest.
            pending = [i for i in chunk if any(results[i * n + k] is None for k in range(n))]
            order[start : start + len(chunk)] = pending
            continue
        start += len(chunk)
    if bar is not None:
        bar.close()
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # pragma: no cover - would be an engine bug
        raise RuntimeError(f"generation lost outputs {missing[:10]}")
    return [r for r in results if r is not None]


__all__ = [
    "GenerationResult",
    "IncrementalText",
    "SamplingConfig",
    "auto_batch_size",
    "encode_prompts",
    "estimate_row_bytes",
    "generate_all",
    "generate_batch",
    "repeat_cache_rows",
    "resolve_eos_ids",
    "select_cache_rows",
    "trim_cache_left",
]
