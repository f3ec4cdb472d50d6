"""Choosing the next token: greedy, or an exact sample after temperature, top-k and top-p.

Why not ``torch.multinomial``? On a CPU it draws one exponential variate per vocabulary entry
(the "exponential race"), single-threaded, which for a large vocabulary can cost more than a
small model's forward pass. :func:`sample_categorical` draws one uniform number per row and
inverts the cumulative distribution instead (``benchmarks/decode_step.py`` compares the two,
docs/generate.md has the numbers). It is exact, not an approximation: the cumulative sums run
in float64, over blocks of the vocabulary and then inside the chosen block, so even a token of
probability 1e-12 keeps its share (a single fp32 cumsum over 150k entries would round every
probability to a multiple of ~6e-8). A token of probability zero - masked by top-k/top-p - is
never returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoestring.engine.config import Sampling

# Vocabulary entries per block of the two-level inverse CDF: the float64 work is one cumsum
# over ``V / BLOCK`` block masses and one over ``BLOCK`` entries per row.
SAMPLE_BLOCK = 1024


def _last_positive(x: torch.Tensor) -> torch.Tensor:
    """Index of the last entry > 0 along the last dim ([..., 1]); rows are assumed to have one."""
    n = x.shape[-1]
    return n - 1 - (x.flip(-1) > 0).to(torch.int8).argmax(-1, keepdim=True)


def sample_categorical(
    probs: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One index per row of ``probs`` [B, V] (non-negative, any positive row sum), drawn with
    probability proportional to its entry. Uses one ``torch.rand`` draw per row from
    ``generator``, so a seeded generator gives the same tokens whatever the thread count."""
    rows, vocab = probs.shape
    u = torch.rand((rows, 1), generator=generator, dtype=torch.float64, device=probs.device)
    if vocab <= SAMPLE_BLOCK:
        cdf = probs.to(torch.float64).cumsum(-1)
        # u scaled to the row's total (rows need not sum to 1); right=True skips p = 0 entries
        idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        return torch.minimum(idx, _last_positive(probs)).squeeze(1)
    nb = -(-vocab // SAMPLE_BLOCK)  # ceil division: number of blocks
    if nb * SAMPLE_BLOCK != vocab:
        probs = F.pad(probs, (0, nb * SAMPLE_BLOCK - vocab))  # zero-probability tail entries
    blocks = probs.view(rows, nb, SAMPLE_BLOCK)
    mass = blocks.sum(-1, dtype=torch.float64)  # [B, nb]
    cdf = mass.cumsum(-1)
    x = u * cdf[:, -1:]  # [B, 1]: the target cumulative mass
    # the block holding x; the guard matters only if x rounded up to the total
    b = torch.minimum(torch.searchsorted(cdf, x, right=True), _last_positive(mass))
    # mass of the blocks before the chosen one: x - below is the target inside the block
    below = torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(x))
    inner = blocks.gather(1, b[..., None].expand(rows, 1, SAMPLE_BLOCK)).squeeze(1)  # [B, BLOCK]
    icdf = inner.to(torch.float64).cumsum(-1)
    j = torch.minimum(torch.searchsorted(icdf, x - below, right=True), _last_positive(inner))
    return (b * SAMPLE_BLOCK + j).squeeze(1)


def filtered_logits(logits: torch.Tensor, cfg: Sampling) -> torch.Tensor:
    """``logits`` after temperature, top-k and top-p, in the order ``model.generate`` applies
    them; removed tokens are ``-inf``. ``cfg`` is a :class:`~.config.Sampling`. Every sampler (the
    dynamic engine's and the static path's on-device one) filters through this."""
    logits = logits / cfg.temperature
    vocab = logits.shape[-1]
    if 0 < cfg.top_k < vocab:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # [B, 1]: k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th stay
    if cfg.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # ascending order: the unlikely tail comes first; drop it while its mass <= 1 - top_p
        remove = cum <= (1.0 - cfg.top_p)
        remove[:, -1] = False  # always keep the most likely token
        # back from sorted order to vocabulary order
        logits = logits.scatter(-1, sorted_idx, sorted_logits.masked_fill(remove, float("-inf")))
    return logits


def choose_next_tokens(
    logits: torch.Tensor, cfg: Sampling, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row: argmax, or a sample after :func:`filtered_logits`. ``cfg`` is a
    :class:`~.config.Sampling`."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    return sample_categorical(filtered_logits(logits, cfg).softmax(dim=-1), generator)
