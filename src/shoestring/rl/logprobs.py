"""Per-token log-probs of completions under a model: the quantity GRPO's ratio is made of.

Why a module of its own: the training forward is most of a GRPO step's backward cost, so it is
written to do as little as possible - only the completion positions go through the vocabulary
head (``logits_to_keep``), the fp32 log-softmax runs a few rows at a time, and
:func:`grouped_completion_logps` runs each prompt once per group and repeats its KV cache. The
tests check that the grouped and the plain forms give the same log-probs and gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from shoestring.eval.generation import forward_params

__all__ = ["completion_logps", "grouped_completion_logps", "selective_logps_and_entropy"]


def selective_logps_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    want_entropy: bool = True,
    chunk: int = 4,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token and the distribution's entropy, [B, T] each, in fp32,
    a few rows at a time so a large vocabulary never needs a full fp32 copy of the logits.

    ``temperature`` divides the logits first, so the log-probs are those of the distribution
    the completions were sampled from (as TRL does)."""
    logps, ents = [], []
    for i in range(0, logits.size(0), chunk):
        lg = logits[i : i + chunk].float()
        if temperature != 1.0:
            lg = lg / temperature
        lse = torch.logsumexp(lg, dim=-1)
        logps.append(lg.gather(-1, targets[i : i + chunk].unsqueeze(-1)).squeeze(-1) - lse)
        if want_entropy:
            with torch.no_grad():
                p = torch.softmax(lg, dim=-1)
                ents.append(lse - (p * lg).sum(-1))
    return torch.cat(logps), (torch.cat(ents) if want_entropy else None)


def completion_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    want_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion tokens under ``model`` ([B, C]).

    Prompts are left-padded, completions right-padded, position ids count real tokens only
    (as the generation engine does), and only the last ``C + 1`` positions go through the
    vocabulary head where the model supports ``logits_to_keep``.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    params = forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if "position_ids" in params:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    c = completion_ids.size(1)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = c + 1
    out = model(**kwargs)
    logits = out.logits[:, -(c + 1) : -1, :]
    return selective_logps_and_entropy(
        logits, completion_ids, want_entropy, temperature=temperature
    )


def grouped_completion_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    num_generations: int,
    want_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same result as :func:`completion_logps`, with each prompt run once per group.

    The ``num_generations`` completions of a prompt share it, so the prompt goes through the
    model once and its key/value cache is repeated for the group (``repeat_interleave`` keeps
    it differentiable: the gradient of every completion still reaches the prompt positions).
    ``prompt_ids``/``prompt_mask`` hold one row per prompt, ``completion_*`` one row per
    completion, grouped. With prompts as long as completions this halves the tokens of the
    training forward and backward.
    """
    params = forward_params(model)
    g = num_generations
    kwargs: dict[str, Any] = {
        "input_ids": prompt_ids,
        "attention_mask": prompt_mask,
        "past_key_values": DynamicCache(),
        "use_cache": True,
    }
    if "position_ids" in params:
        kwargs["position_ids"] = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    first = out.logits[:, -1:, :].repeat_interleave(g, dim=0)
    c = completion_ids.size(1)
    if c == 1:
        return selective_logps_and_entropy(
            first, completion_ids, want_entropy, temperature=temperature
        )
    cache = out.past_key_values
    cache.batch_repeat_interleave(g)
    pmask = prompt_mask.repeat_interleave(g, dim=0)
    mask = torch.cat([pmask, completion_mask[:, :-1]], dim=1)
    kwargs = {
        "input_ids": completion_ids[:, :-1],
        "attention_mask": mask,
        "past_key_values": cache,
        "use_cache": True,
    }
    if "position_ids" in params:
        start = pmask.sum(-1, keepdim=True)
        kwargs["position_ids"] = start + torch.arange(c - 1, device=mask.device)[None]
    rest = model(**kwargs).logits
    logits = torch.cat([first, rest], dim=1)
    return selective_logps_and_entropy(
        logits, completion_ids, want_entropy, temperature=temperature
    )
