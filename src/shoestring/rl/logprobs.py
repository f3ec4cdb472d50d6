"""Per-token log-probs of completions under a model: the quantity GRPO's ratio is made of.

Why a module of its own: the training forward is most of a GRPO step's backward cost, so it is
written to do as little as possible - only the completion positions go through the vocabulary
head, and :func:`grouped_completion_logps` runs each prompt once per group and repeats its KV
cache. For Llama-family models and the shoestring GPT the head runs outside the model, chunk by
chunk (``rl/head_logps.py``): at Qwen2's 151,936-entry vocabulary the [tokens, vocab] logits of
a GRPO micro-batch are gigabytes; there no fp32 [tokens, vocab] tensor ever exists. Other models
go through their own forward (``logits_to_keep``) and a log-softmax a few rows at a time. The
tests check that the grouped and plain forms, and the chunked head and the full logits, give the
same log-probs and gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache

from shoestring.engine import forward_params
from shoestring.rl.head_logps import head_logps

__all__ = [
    "completion_logps",
    "grouped_completion_logps",
    "selective_logps_and_entropy",
]

# Architectures whose logits are exactly ``lm_head(model.model(...).last_hidden_state)``: no
# soft-capping, logit scale or final bias, so the head can run chunk by chunk outside the model.
PLAIN_HEAD_ARCHS = {
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
    "ShoestringGPTForCausalLM",
}


def _decoder_and_head(model: Any) -> tuple[Any, torch.Tensor] | None:
    """The decoder stack and the head weight of a model whose logits are a plain bias-free
    head over the decoder's output (peft wrappers looked through), else ``None``."""
    get_base = getattr(model, "get_base_model", None)  # a peft wrapper
    base = get_base() if callable(get_base) else model
    head = getattr(base, "lm_head", None)
    decoder = getattr(base, "model", None)
    if type(base).__name__ not in PLAIN_HEAD_ARCHS or decoder is None:
        return None
    if type(head) is not nn.Linear or head.bias is not None:
        return None  # a LoRA-wrapped or biased head runs as its own module
    if head._forward_hooks or head._forward_pre_hooks:
        return None
    return decoder, head.weight


def _token_inputs(decoder: Any, head: torch.Tensor, ids: torch.Tensor) -> dict[str, Any]:
    """The decoder's token inputs: ``input_ids``, or - where the embedding is the trained head
    itself (tied) - the embedded tokens, whose gradient rows are added into the head's.

    Why: an embedding's backward builds a dense [vocab, d] gradient that is zero but for the
    rows of these few hundred tokens (545 MB at Qwen2's vocabulary in fp32), once per decoder
    call, and adds it to the head's. A sparse gradient (``sparse=True``) avoids the zeros, but
    autograd still sums a dense and a sparse gradient of one tensor out of place: a fresh
    545 MB copy per decoder call. So the tokens are looked up in a detached alias of the
    weight, and once the alias's sparse gradient is complete it is added in place into the
    weight's own (:func:`_add_rows_into`): the same sum, touching only those rows."""
    emb = getattr(decoder, "embed_tokens", None)
    plain = (
        type(emb) is nn.Embedding
        and emb.max_norm is None
        and not emb.scale_grad_by_freq
        and not (emb._forward_hooks or emb._forward_pre_hooks)
    )
    if not (plain and emb.weight is head and head.requires_grad):
        return {"input_ids": ids}
    alias = head.detach().requires_grad_(True)  # the same storage, a leaf of its own
    alias.register_post_accumulate_grad_hook(_add_rows_into(head))
    return {"inputs_embeds": F.embedding(ids, alias, emb.padding_idx, sparse=True)}


def _add_rows_into(weight: torch.Tensor) -> Any:
    """A post-accumulate hook for an alias of ``weight``: moves the alias's (sparse) gradient
    into ``weight.grad`` in place. Autograd has by then accumulated the head's dense gradient
    (its backward runs first); where it has not, the rows start ``weight.grad`` and the dense
    gradient is added to them in place when it comes."""

    def add(alias: torch.Tensor) -> None:
        rows, alias.grad = alias.grad, None
        if rows is None:
            return
        if weight.grad is None:
            weight.grad = rows.to_dense()
        else:
            weight.grad.add_(rows)

    return add


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
        lg = logits[i : i + chunk].float()  # [chunk, T, V]: fp32 for a few rows only
        if temperature != 1.0:
            lg = lg / temperature
        lse = torch.logsumexp(lg, dim=-1)
        logps.append(lg.gather(-1, targets[i : i + chunk].unsqueeze(-1)).squeeze(-1) - lse)
        if want_entropy:
            with torch.no_grad():  # entropy is a metric: no graph through it
                p = torch.softmax(lg, dim=-1)
                ents.append(lse - (p * lg).sum(-1))  # H = lse - sum p * z
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
    c = completion_ids.size(1)
    split = _decoder_and_head(model)
    if split is not None:  # the head chunk by chunk: no [B, C, V] logits
        decoder, weight = split
        hidden = decoder(
            **_token_inputs(decoder, weight, ids),
            attention_mask=mask,
            # left padding: a row's positions count its real tokens (pads clamp to 0)
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
            # position i predicts token i + 1: the c states before each completion token
        ).last_hidden_state[:, -(c + 1) : -1]
        return head_logps(hidden, weight, completion_ids, want_entropy, temperature)
    params = forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if "position_ids" in params:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = c + 1
    out = model(**kwargs)
    logits = out.logits[:, -(c + 1) : -1, :]  # [B, C, V]: the states predicting each token
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
    split = _decoder_and_head(model)
    if split is not None:
        return _grouped_head_logps(
            split,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            num_generations,
            want_entropy,
            temperature,
        )
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
    # the prompt's last position predicts every completion's first token: [P, 1, V] -> [P*g, ..]
    first = out.logits[:, -1:, :].repeat_interleave(g, dim=0)
    c = completion_ids.size(1)
    if c == 1:
        return selective_logps_and_entropy(
            first, completion_ids, want_entropy, temperature=temperature
        )
    cache = out.past_key_values
    cache.batch_repeat_interleave(g)  # differentiable: each sample's grad reaches the prompt
    pmask = prompt_mask.repeat_interleave(g, dim=0)
    # the last completion token predicts nothing we score, so it is not fed
    mask = torch.cat([pmask, completion_mask[:, :-1]], dim=1)
    kwargs = {
        "input_ids": completion_ids[:, :-1],
        "attention_mask": mask,
        "past_key_values": cache,
        "use_cache": True,
    }
    if "position_ids" in params:
        start = pmask.sum(-1, keepdim=True)  # [P*g, 1]: real prompt tokens = first new position
        kwargs["position_ids"] = start + torch.arange(c - 1, device=mask.device)[None]
    rest = model(**kwargs).logits
    logits = torch.cat([first, rest], dim=1)
    return selective_logps_and_entropy(
        logits, completion_ids, want_entropy, temperature=temperature
    )


def _grouped_head_logps(
    split: tuple[Any, torch.Tensor],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    g: int,
    want_entropy: bool,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`grouped_completion_logps` through the decoder's hidden states and
    :func:`head_logps`: the prompt once per group, its cache repeated, the head chunked."""
    decoder, weight = split
    out = decoder(
        **_token_inputs(decoder, weight, prompt_ids),
        attention_mask=prompt_mask,
        position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0),
        past_key_values=DynamicCache(),
        use_cache=True,
    )
    hidden = out.last_hidden_state[:, -1:].repeat_interleave(g, dim=0)  # [P*g, 1, d]
    c = completion_ids.size(1)
    if c > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(g)
        pmask = prompt_mask.repeat_interleave(g, dim=0)
        start = pmask.sum(-1, keepdim=True)
        rest = decoder(
            **_token_inputs(decoder, weight, completion_ids[:, :-1]),
            attention_mask=torch.cat([pmask, completion_mask[:, :-1]], dim=1),
            position_ids=start + torch.arange(c - 1, device=pmask.device)[None],
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        hidden = torch.cat([hidden, rest], dim=1)
    return head_logps(hidden, weight, completion_ids, want_entropy, temperature)
