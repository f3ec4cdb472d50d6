"""The vocabulary head of the training pass, chunk by chunk: per-token log-probs (and
entropies) of the targets under ``hidden @ weight.T``, without the [tokens, vocab] logits in fp32.

Why a module of its own: at Qwen2's 151,936-entry vocabulary the logits of a GRPO micro-batch
are gigabytes, and their fp32 log-softmax and its backward, computed whole, are a large share of
the step. :func:`head_logps` keeps only the compute-dtype logits and works out the softmax
statistics and the gradient a chunk of tokens at a time (``rl/logprobs.py`` calls it for the
models whose logits are a plain head over the decoder's output). The tests check its values and
gradients against the full logits' log-softmax.
"""

from __future__ import annotations

from typing import Any

import torch

from shoestring.engine.packed_linear import packed_linear
from shoestring.rl.packed_products import packed_head

__all__ = ["HEAD_CHUNK_TOKENS", "head_logps"]

# Tokens per chunk of the fp32 softmax statistics: chunk x vocab x 4 bytes (78 MB at Qwen2's).
HEAD_CHUNK_TOKENS = 128
# Vocabulary rows per block of the head weight's gradient (a [block, d] transient).
HEAD_GRAD_VOCAB_BLOCK = 16384


class _HeadLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T / T)[target]`` per token, with the softmax statistics
    in fp32 one chunk of tokens at a time: the only vocabulary-wide tensor is the logits in
    the compute dtype (bf16 under autocast), never an fp32 copy of them.

    Backward needs the softmax of every token. A head that trains (a full fine-tune, tied
    embeddings) keeps the compute-dtype logits, turns them in place into
    ``g * (onehot - softmax) / T`` chunk by chunk, and forms both gradients with one matmul
    each, as autograd would. A frozen head (LoRA) needs only the hidden states' gradient,
    ``g * (W[target] - softmax @ W) / T``: that [tokens, d] vector is formed in the forward
    pass and nothing vocabulary-wide outlives it."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        compute_dtype: torch.dtype,
        want_entropy: bool,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        w = weight.to(compute_dtype)
        # needs_input_grad is (hidden, weight, ...): reversed -> (head trains, hidden trains)
        train_head, train_hidden = ctx.needs_input_grad[0:2][::-1]
        frozen_grad = train_hidden and not train_head  # LoRA: only dL/dhidden is needed
        packed = packed_head(weight) if compute_dtype == torch.float32 else None
        if packed is not None:  # an fp32 head's kept packed copy (rl/packed_products.py)
            logits = packed_linear(hidden.float(), packed, None)  # [N, V]
        else:
            logits = hidden.to(compute_dtype) @ w.t()  # [N, V], compute dtype
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ents = torch.empty(n if want_entropy else 0, dtype=torch.float32, device=hidden.device)
        lses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        # two fp32 [chunk, V] buffers for every chunk: z - max and its exp. Fresh ones per
        # chunk cost more than the arithmetic (each is tens of MB of new pages to fault in)
        rows = min(chunk, n)
        shifted = torch.empty(rows, logits.shape[1], dtype=torch.float32, device=hidden.device)
        exps = torch.empty_like(shifted)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            z, e = shifted[: b - a], exps[: b - a]
            z.copy_(logits[a:b])  # fp32: the logits stay as they are (backward reads them)
            if temperature != 1.0:
                z.div_(temperature)
            z_target = z.gather(1, targets[a:b, None]).squeeze(1)
            top = z.amax(dim=-1)  # [chunk]
            z.sub_(top[:, None])  # z - max: exp cannot overflow
            torch.exp(z, out=e)
            total = e.sum(dim=-1)  # the softmax's denominator over exp(max)
            lse = top + total.log()  # [chunk]: logsumexp of z
            lses[a:b] = lse  # kept for backward: softmax = exp(z - lse) without a new reduction
            logps[a:b] = z_target - lse  # log p(target)
            if want_entropy:
                # H = lse - sum p z = log(total) - sum e (z - max) / total; one pass, no temp
                dot = torch.bmm(e[:, None, :], z[:, :, None]).view(-1)
                ents[a:b] = total.log() - dot / total
            if frozen_grad:  # the softmax, into the logits (not needed again)
                e.div_(total[:, None])
                logits[a:b] = e
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.train_head = train_head
        if frozen_grad:
            # d logp / d hidden = (W[target] - softmax @ W) / T: [N, d], the logits can go
            dh = (w[targets].float() - (logits @ w).float()).div_(temperature)
            ctx.save_for_backward(dh)
        elif train_head:
            ctx.save_for_backward(hidden, w, targets, lses, logits)
        return logps, ents

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor, _grad_ents: torch.Tensor) -> tuple[Any, ...]:
        g = grad_logps.float()
        if not ctx.train_head:  # frozen head: the per-token vectors are ready
            (dh,) = ctx.saved_tensors
            return (dh * g[:, None]).to(ctx.hidden_dtype), None, None, None, None, None, None
        hidden, w, targets, lses, logits = ctx.saved_tensors
        temp = ctx.temperature
        for a in range(0, logits.shape[0], ctx.chunk):
            b = min(a + ctx.chunk, logits.shape[0])
            # fp32 logits are worked on in place (not needed after this); others in an fp32 copy
            z = logits[a:b] if logits.dtype == torch.float32 else logits[a:b].float()
            if temp != 1.0:
                z.div_(temp)
            # d logp / d logits = (onehot - softmax) / T, times each token's upstream grad
            gc = g[a:b, None] / temp
            grad = z.sub_(lses[a:b, None]).exp_().mul_(-gc)  # -softmax * g / T, in place
            grad.scatter_add_(1, targets[a:b, None], gc)  # + onehot(target) * g / T
            if logits.dtype != torch.float32:  # fp32: grad is the logits' own storage
                logits[a:b] = grad  # the logits become the logits' gradient
        # [N, V] @ [V, d] -> [N, d]: the hidden states' gradient
        grad_h = (logits @ w).to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        # the head's gradient block by block of the vocabulary, written straight into the
        # weight's dtype: no [V, d] compute-dtype copy next to the fp32 one
        grad_w = torch.empty(w.shape, dtype=ctx.weight_dtype, device=w.device)
        h = hidden.to(w.dtype)
        for v in range(0, w.shape[0], HEAD_GRAD_VOCAB_BLOCK):
            block = slice(v, v + HEAD_GRAD_VOCAB_BLOCK)
            grad_w[block] = logits[:, block].t() @ h  # [block, N] @ [N, d]
        return grad_h, grad_w, None, None, None, None, None


def head_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    want_entropy: bool = False,
    temperature: float = 1.0,
    chunk: int = HEAD_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of ``targets`` [B, T] under ``hidden`` [B, T, d] through a
    bias-free head ``weight`` [V, d], in fp32, without the [B, T, V] logits: the same values
    and gradients as :func:`selective_logps_and_entropy` of ``hidden @ weight.T``. Under
    autocast the matmuls run in the autocast dtype, as ``nn.Linear`` would."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        cd = torch.get_autocast_dtype(device_type)
    else:
        cd = torch.promote_types(hidden.dtype, weight.dtype)
    bsz, t = targets.shape
    flat = hidden.reshape(bsz * t, hidden.shape[-1])  # [B, T, d] -> [B*T, d]
    # autocast off: the function casts to cd itself and must keep its fp32 statistics fp32
    with torch.autocast(device_type, enabled=False):
        lp, ent = _HeadLogps.apply(
            flat, weight, targets.reshape(-1), float(temperature), cd, want_entropy, chunk
        )
    return lp.view(bsz, t), (ent.view(bsz, t) if want_entropy else None)
