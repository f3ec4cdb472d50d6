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

Where the uniform numbers come from: :func:`stream_uniforms`, a counter-based generator. The
number a row draws for its ``t``-th token is a pure function of the call's seed, the row's
stream key (:func:`row_keys`: its prompt's stream and its sample number) and ``t``, so a
prompt's samples do not depend on which prompts share its batch, in what order, on how many
ranks, nor on the backend or device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shoestring.engine.config import Sampling

# Vocabulary entries per block of the two-level inverse CDF: the float64 work is one cumsum
# over ``V / BLOCK`` block masses and one over ``BLOCK`` entries per row.
SAMPLE_BLOCK = 1024

_MASK64 = (1 << 64) - 1


def _int64(x: int) -> int:
    """``x`` modulo 2**64 as a signed int64 value (how a torch int64 tensor holds those bits)."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64 (Steele, Lea & Flood 2014; the seeder of xoshiro): its increment (the golden
# ratio) and its finalizer's multipliers, written as the signed int64 values of their bits
_GAMMA = _int64(0x9E3779B97F4A7C15)
_MUL1 = _int64(0xBF58476D1CE4E5B9)
_MUL2 = _int64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 ``x``: torch's ``>>`` is arithmetic (copies the sign bit
    in), so the top ``bits`` bits are masked off."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """One splitmix64 output for state ``x`` (int64): the increment, then the finalizer, whose
    every output bit depends on every input bit. int64 addition and multiplication wrap
    modulo 2**64 on every torch device, which is the unsigned arithmetic the mixer needs."""
    x = x + _GAMMA  # without it 0 would map to 0
    x = (x ^ _shr(x, 30)) * _MUL1
    x = (x ^ _shr(x, 27)) * _MUL2
    return x ^ _shr(x, 31)


def row_keys(streams: Sequence[int], samples: int) -> torch.Tensor:
    """The stream key of every output row of ``streams`` (one stream per prompt), ``samples``
    rows per prompt: row ``i * samples + k`` (sample ``k`` of prompt ``i``) gets
    ``splitmix64(splitmix64(streams[i]) ^ k)`` as int64 [len(streams) * samples], on the CPU.

    Why hashed rather than ``streams[i] * samples + k``: sample ``k`` of a stream is then the
    same whatever ``num_return_sequences`` is, and any integer (taken modulo 2**64) is a
    valid stream. Two prompts given the same stream draw the same numbers.
    """
    s = torch.tensor([_int64(int(x)) for x in streams], dtype=torch.int64)
    k = torch.arange(samples, dtype=torch.int64)
    return _splitmix64(_splitmix64(s)[:, None] ^ k[None, :]).reshape(-1)


def stream_uniforms(seed: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Uniform float64 numbers in [0, 1), one per element of ``keys`` and ``positions``
    (int64, broadcast together), on their device: the number row ``key`` draws for its token
    number ``position`` (tokens it generated before it) in a call seeded ``seed``.

    Counter-based (the idea of Salmon et al.'s Philox, with splitmix64 as the mixer):
    ``h = splitmix64(seed)``, ``h = splitmix64(h ^ key)``, ``h = splitmix64(h ^ position)``,
    and the top 53 bits of ``h`` over 2**53. Why not a ``torch.Generator``: a generator's
    numbers go to rows in the order they are drawn, so a row's sample would depend on which
    other rows share its batch, on the batch size, on the backend and on the rank; here it
    depends on the row alone. The arithmetic is integer tensor ops only, so it gives bitwise
    the same numbers on a CPU and a GPU, and ``positions`` may be a device tensor inside a
    captured CUDA graph (no host value, no generator state).
    """
    device = keys.device
    h = _splitmix64(torch.tensor(_int64(seed), dtype=torch.int64, device=device))
    h = _splitmix64(h ^ keys.to(torch.int64))
    h = _splitmix64(h ^ positions.to(device=device, dtype=torch.int64))
    # 53 bits: what a double holds exactly; int64 -> float64 is exact below 2**53
    return _shr(h, 11).to(torch.float64) * (1.0 / (1 << 53))


def _last_positive(x: torch.Tensor) -> torch.Tensor:
    """Index of the last entry > 0 along the last dim ([..., 1]); rows are assumed to have one."""
    n = x.shape[-1]
    return n - 1 - (x.flip(-1) > 0).to(torch.int8).argmax(-1, keepdim=True)


def sample_categorical(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` [B, V] (non-negative, any positive row sum), drawn with
    probability proportional to its entry by inverting the row's cumulative distribution at
    ``u`` ([B] or [B, 1], uniform in [0, 1), e.g. :func:`stream_uniforms`). The caller owns
    the random numbers, so a row's token depends on its own number alone, whatever the
    thread count or the other rows."""
    rows, vocab = probs.shape
    u = u.reshape(rows, 1).to(device=probs.device, dtype=torch.float64)
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


def choose_next_tokens(logits: torch.Tensor, cfg: Sampling, u: torch.Tensor | None) -> torch.Tensor:
    """Next token per row: argmax, or a sample after :func:`filtered_logits` at the row's
    uniform number ``u`` ([B] or [B, 1]; unused, and may be ``None``, when greedy). ``cfg``
    is a :class:`~.config.Sampling`."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    if u is None:
        raise ValueError("sampling (temperature > 0) needs a uniform number per row")
    return sample_categorical(filtered_logits(logits, cfg).softmax(dim=-1), u)
