"""From prompts to the first decode step: tokenise the prompts, and run them through the model
once (the prefill) into one left-padded, right-aligned cache.

Why not one padded pass: GSM8K prompts run from 33 to 112 tokens, so one padded prefill
computes 44% padding. Through the lean forward (the models it supports) the prompts are not
padded at all: chunks of whole prompts run end to end as one sequence, attention kept within
each prompt, and each prompt's keys and values are placed into its row of the cache. Through
the model's own forward, prompts of similar length are prefilled together in groups, which
skips most of the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from shoestring.engine.cache import PreallocatedLayer, cache_layers, is_dynamic_cache, make_cache
from shoestring.engine.config import EngineOptions, Prompt
from shoestring.engine.model_io import forward_last_logits
from shoestring.engine.padding import pad_left, positions_from_mask

if TYPE_CHECKING:
    from shoestring.engine.lean_decode import LeanDecoder

__all__ = [
    "PREFILL_GROUP_MIN_TOKENS",
    "PREFILL_GROUP_RATIO",
    "SEQUENCE_CHUNK_TOKENS",
    "encode_prompts",
    "pad_token_id",
    "prefill_groups",
    "prefill_prompts",
    "sequence_chunks",
]

# Grouped prefill: a prompt joins the current group if it is at least this fraction of the
# group's longest prompt, or while the group holds fewer tokens than the minimum.
PREFILL_GROUP_RATIO = 0.8
PREFILL_GROUP_MIN_TOKENS = 256
# Prefill through the lean forward: prompts run unpadded, end to end, this many tokens a pass
# (the avx2 host's packed fp32 products are near their full rate from a few hundred rows)
SEQUENCE_CHUNK_TOKENS = 512


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


def pad_token_id(tokenizer: Any, model: Any, eos_ids: set[int]) -> int:
    """Any valid id works for padding (it is masked out); prefer the declared pad token."""
    for value in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
    ):
        if isinstance(value, int) and value >= 0:
            return value
    return min(eos_ids) if eos_ids else 0


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
            longest = lengths[g[0]]  # rows arrive longest first: the group's first is longest
            # close enough in length, or the group is still too small to be worth a pass
            if lengths[i] >= ratio * longest or longest * len(g) < min_tokens:
                g.append(i)
                continue
        groups.append([i])
    return groups


def prefill_prompts(
    model: Any,
    params: set[str],
    ids_list: list[list[int]],
    options: EngineOptions,
    room: int,
    pad: int,
    device: torch.device,
    store_dtype: torch.dtype | None,
    lean: LeanDecoder | None = None,
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """Run the prompts through the model; returns last-position logits, the cache and the
    attention mask, rows in input order. ``room`` is the decode columns a preallocated cache
    reserves past the prompts. With ``lean``, the prompts go through its forward (fused,
    prepacked weights) wherever the cache is one it can update; else the model's own.

    With a preallocated cache the prompts are prefilled without padding through ``lean``
    (chunks of whole prompts), or else in groups of similar length through the model, and
    placed into one right-aligned cache; otherwise (or when the model builds its cache some
    other way) all prompts go through one padded forward pass.
    """
    if lean is not None and options.group_prefill and options.preallocate and len(ids_list) > 1:
        packed = _sequences_prefill(lean, model, ids_list, room, pad, device, store_dtype)
        if packed is not None:
            return packed
    groups = prefill_groups([len(x) for x in ids_list]) if options.group_prefill else []
    if options.preallocate and len(groups) > 1:
        grouped = _grouped_prefill(model, params, ids_list, groups, room, pad, device, store_dtype)
        if grouped is not None:
            return grouped
    ids, mask = pad_left(ids_list, pad)
    ids, mask = ids.to(device), mask.to(device)
    cache = make_cache(model, room, store_dtype) if options.preallocate else None
    logits, cache = _forward(model, params, ids, mask, cache, lean)
    return logits, cache, mask


def _forward(
    model: Any,
    params: set[str],
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: Any,
    lean: LeanDecoder | None,
) -> tuple[torch.Tensor, Any]:
    """Last-position logits and the cache after one prefill pass of left-padded ``ids``."""
    positions = positions_from_mask(mask)
    if lean is not None and cache is not None and is_dynamic_cache(cache):
        return lean.forward(ids, mask, positions, cache), cache
    return forward_last_logits(model, params, ids, mask, positions, cache)


def sequence_chunks(lengths: Sequence[int], max_tokens: int | None = None) -> list[list[int]]:
    """Consecutive prompts in chunks of at most ``max_tokens`` tokens (a longer prompt alone):
    the rows of one lean prefill pass, tall enough for the matmul's full rate, small enough
    that its activations stay in cache and memory."""
    max_tokens = SEQUENCE_CHUNK_TOKENS if max_tokens is None else max_tokens
    chunks: list[list[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if chunks and total + n <= max_tokens:
            chunks[-1].append(i)
            total += n
        else:
            chunks.append([i])
            total = n
    return chunks


def _sequences_prefill(
    lean: LeanDecoder,
    model: Any,
    ids_list: list[list[int]],
    room: int,
    pad: int,
    device: torch.device,
    store_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, Any, torch.Tensor] | None:
    """Prefill without padding: chunks of whole prompts run as one sequence each through the
    lean forward (:meth:`~.lean_decode.LeanDecoder.prefill_sequences`), every prompt's keys and
    values placed into its row of one right-aligned preallocated cache; ``None`` when the
    cache is not made of :class:`PreallocatedLayer`."""
    merged = make_cache(model, room, store_dtype)
    layers = cache_layers(merged) if merged is not None else None
    if not layers or not all(isinstance(layer, PreallocatedLayer) for layer in layers):
        return None
    width = max(len(x) for x in ids_list)
    logits: torch.Tensor | None = None
    for chunk in sequence_chunks([len(x) for x in ids_list]):
        rows = [torch.tensor([r], device=device) for r in chunk]  # cache row of prompt j

        def place(
            layer: int, j: int, keys: torch.Tensor, values: torch.Tensor, rows: Any = rows
        ) -> None:
            layers[layer].place(rows[j], keys, values, len(ids_list), width)

        part = lean.prefill_sequences([ids_list[r] for r in chunk], place, store_dtype)
        if logits is None:
            logits = part.new_empty((len(ids_list), part.shape[-1]))
        logits[torch.tensor(chunk, device=device)] = part
    _ids, mask = pad_left(ids_list, pad)  # the merged cache's mask: every prompt, left-padded
    assert logits is not None
    return logits, merged, mask.to(device)


def _grouped_prefill(
    model: Any,
    params: set[str],
    ids_list: list[list[int]],
    groups: list[list[int]],
    room: int,
    pad: int,
    device: torch.device,
    store_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, Any, torch.Tensor] | None:
    """Prefill each group into its own small cache and place its rows into one merged,
    right-aligned preallocated cache; ``None`` when a cache is not made of
    :class:`PreallocatedLayer` (the caller then runs one padded prefill)."""
    merged = make_cache(model, room, store_dtype)
    layers = cache_layers(merged)
    if not layers or not all(isinstance(layer, PreallocatedLayer) for layer in layers):
        return None
    width = max(len(x) for x in ids_list)
    logits: torch.Tensor | None = None
    for g in groups:
        ids, mask = pad_left([ids_list[i] for i in g], pad)
        ids, mask = ids.to(device), mask.to(device)
        part_logits, part = forward_last_logits(  # room 0: this cache only carries the prompts
            model, params, ids, mask, positions_from_mask(mask), make_cache(model, 0, store_dtype)
        )
        part_layers = cache_layers(part) or []
        if len(part_layers) != len(layers) or not all(
            isinstance(layer, PreallocatedLayer) for layer in part_layers
        ):
            return None  # the model built its cache differently: use one padded prefill
        if logits is None:
            logits = part_logits.new_empty((len(ids_list), part_logits.shape[-1]))
        # Each group's rows go to their input positions, right-aligned to the widest prompt.
        rows = torch.tensor(g, dtype=torch.long, device=device)
        logits[rows] = part_logits
        for dst, src in zip(layers, part_layers, strict=True):
            dst.place(rows, src.keys, src.values, len(ids_list), width)
    _ids, mask = pad_left(ids_list, pad)  # the merged cache's mask: every prompt, left-padded
    assert logits is not None
    return logits, merged, mask.to(device)
