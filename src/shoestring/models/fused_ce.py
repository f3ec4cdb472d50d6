"""Chunked linear + cross-entropy: the LM head and its loss without the [tokens, vocab] tensor.

With a 16k vocabulary the logits of a 32x128 batch are 65M floats: materialising them, upcasting
them to fp32 for ``log_softmax`` and running its backward is a large share of a CPU training
step (docs/train.md). This function computes the head and the loss chunk by chunk and, in the
same pass, the exact gradients with respect to the hidden states and the head weight
((softmax - onehot) / n, times the chunk's inputs), so the full logits never exist and no
``log_softmax`` backward runs. The arithmetic is the same as
``F.cross_entropy(hidden @ W.T, targets)``: matmuls in the compute dtype (bf16 under autocast,
else fp32), softmax statistics in fp32. The benchmark ``benchmarks/train_throughput.py``
measures the step it belongs to against the HF peer.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        compute_dtype: torch.dtype,
        need_weight_grad: bool,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        acc = torch.promote_types(compute_dtype, torch.float32)  # softmax statistics dtype
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1).to(acc)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty(hidden.shape, dtype=compute_dtype, device=hidden.device)
        grad_weight = (
            torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight_grad else None
        )
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        rows = torch.arange(min(chunk, n), device=hidden.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            h = hidden[start:end].to(compute_dtype)
            t = targets[start:end]
            m = valid[start:end]
            logits = (h @ w.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = t.clamp(min=0)  # a valid index for ignored rows; their mask zeroes them
            picked = logits.gather(1, safe_t[:, None]).squeeze(1)
            loss += ((lse - picked) * m).sum()
            # d(loss / n_valid) / d(logits) = (softmax - onehot) * valid / n_valid
            probs = logits.sub_(lse[:, None]).exp_()  # softmax in place: logits are done
            r = rows[: end - start]
            probs[r, safe_t] -= 1.0
            probs.mul_((m.to(acc) / n_valid)[:, None])
            g = probs.to(compute_dtype)
            grad_hidden[start:end] = g @ w
            if grad_weight is not None:
                grad_weight.add_((g.t() @ h).to(acc))
        # the gradients are final already; backward only scales them by the incoming grad
        ctx.save_for_backward(
            grad_hidden, grad_weight if grad_weight is not None else torch.empty(0)
        )
        ctx.hidden_dtype = hidden.dtype
        ctx.weight_dtype = weight.dtype
        ctx.need_weight_grad = need_weight_grad
        return loss / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_out).to(ctx.hidden_dtype)
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.need_weight_grad else None
        return gh, gw, None, None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` (-100 ignored).

    ``hidden`` is [..., d], ``weight`` [vocab, d], ``targets`` [...]. Under autocast the matmuls
    run in the autocast dtype, like ``nn.Linear`` would; the softmax is always fp32.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1).to(flat.device)
    # autocast off: the dtypes inside are chosen explicitly (compute_dtype, fp32 softmax)
    with torch.autocast(device_type, enabled=False):
        if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
            return _loss_only(flat, weight, flat_t, chunk, compute_dtype)
        return _ChunkedLinearCrossEntropy.apply(
            flat, weight, flat_t, chunk, compute_dtype, weight.requires_grad
        )


def _loss_only(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Evaluation path: the same loss, no gradient work."""
    valid = targets != IGNORE_INDEX
    acc = torch.promote_types(compute_dtype, torch.float32)
    w = weight.to(compute_dtype)
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        logits = (hidden[start : start + chunk].to(compute_dtype) @ w.t()).to(acc)
        t = targets[start : start + chunk]
        picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        loss += ((torch.logsumexp(logits, dim=-1) - picked) * valid[start : start + chunk]).sum()
    return loss / valid.sum().clamp(min=1)
