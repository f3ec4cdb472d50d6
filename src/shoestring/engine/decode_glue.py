"""The fp32 work of a CPU decode step between its weight products, in three C calls per layer
(``kernels/decode_glue.c``, built by :mod:`.kernel_build`): RMSNorm after the residual add,
RoPE + the KV-cache write + single-query attention, and SiLU(gate) * up.

Why: at batch 1 a Llama-family decode step on a CPU spends about a fifth of its time outside its
products, in some forty small torch operations per layer - each a dispatch, an allocation and
a Python call around microseconds of arithmetic. :class:`~.lean_decode.LeanDecoder` calls these
instead where every condition holds (:func:`cache_ready`, and its own checks at build);
``benchmarks/decode_profile.py`` times the step with and without them (figures per host class
in docs/generate.md). Results agree with the model's forward within fp32 rounding: the same
operations per element, sums in another order, a polynomial exp within a few ulp.

Where the library cannot be built (no compiler, not an AVX2+FMA x86-64 CPU) :func:`available`
is False and the decoder keeps its torch operations.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, NamedTuple

import torch

from shoestring.engine.cache import PreallocatedLayer
from shoestring.engine.kernel_build import KERNELS, build_library

__all__ = [
    "ATTEND_PROFILER_NAME",
    "MAX_GROUP",
    "MAX_HEAD_DIM",
    "add_rmsnorm",
    "attend",
    "available",
    "build_error",
    "cache_ready",
    "decode_layers",
    "silu_mul",
]

log = logging.getLogger(__name__)

SOURCE = KERNELS / "decode_glue.c"
# the C file's limits (MAX_HEAD_DIM, MAX_GROUP): a head's width and query heads per kv head
MAX_HEAD_DIM = 256
MAX_GROUP = 64
# the calls as torch's profiler lists them (RoPE, the cache write and attention; the others)
ATTEND_PROFILER_NAME = "shoestring::glue_attend"
_NAMES = {"add_rmsnorm": "shoestring::glue_rmsnorm", "silu_mul": "shoestring::glue_silu_mul"}
_NAMES["attend"] = ATTEND_PROFILER_NAME

_P, _I64, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


class _Glue(NamedTuple):
    """The loaded library's three entry points (the library kept alive with them)."""

    lib: ctypes.CDLL
    add_rmsnorm: Any
    silu_mul: Any
    attend: Any


@functools.cache
def _library() -> tuple[_Glue | None, str | None]:
    lib, why = build_library(SOURCE, "decode_glue")
    if lib is None:
        log.info("the fused decode-step functions are not used: %s", why)
        return None, why
    norm, silu, att = lib.glue_add_rmsnorm, lib.glue_silu_mul, lib.glue_attend
    norm.argtypes, norm.restype = [_P, _P, _P, _P, _I64, _I64, _F], None
    silu.argtypes, silu.restype = [_P, _I64, _P, _I64, _P, _I64, _I64], None
    att.argtypes = [_P, _I64, _P, _I64, _P, _I64, _P, _P, _P, _I64, _I64, _P, _I64, _I64, _I64]
    att.argtypes += [_P, _P, _P]
    att.argtypes += [_I64, _I64, _I64, _I64, _F, _INT]
    att.restype = None
    return _Glue(lib, norm, silu, att), None


def available() -> bool:
    """Whether the library is built and loadable on this CPU."""
    return _library()[0] is not None


def build_error() -> str | None:
    """Why :func:`available` is False (``None`` when it is True)."""
    return _library()[1]


def _call(name: str, *args: Any) -> None:
    """The library's function ``name`` on ``args``; a named range for torch's profiler when it
    records (it sees nothing of a ctypes call otherwise)."""
    glue = _library()[0]
    assert glue is not None, "check available() first"
    fn = getattr(glue, name)
    if torch.autograd._profiler_enabled():
        with torch.profiler.record_function(_NAMES[name]):
            fn(*args)
    else:
        fn(*args)


def add_rmsnorm(
    h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """``h += delta`` in place (where given: the residual add), then transformers' RMSNorm of
    ``h`` with ``weight``, as a new tensor; ``h``/``delta`` contiguous fp32 [B, D]."""
    assert h.is_contiguous() and (delta is None or delta.is_contiguous())
    out = torch.empty_like(h)
    rows, dim = h.shape
    ptr = delta.data_ptr() if delta is not None else None
    _call("add_rmsnorm", h.data_ptr(), ptr, weight.data_ptr(), out.data_ptr(), rows, dim, eps)
    return out


def _row_stride(x: torch.Tensor) -> int:
    """Floats between ``x``'s rows: a [B, n] fp32 tensor whose rows are contiguous (a
    product's output or a column slice of one)."""
    assert x.dtype == torch.float32 and x.dim() == 2 and x.stride(1) == 1, (x.dtype, x.stride())
    return x.stride(0)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for [B, I] fp32 rows: the fused gate/up product's halves or two
    products' outputs."""
    rows, width = gate.shape
    out = gate.new_empty((rows, width))
    gs, us = _row_stride(gate), _row_stride(up)
    _call("silu_mul", gate.data_ptr(), gs, up.data_ptr(), us, out.data_ptr(), rows, width)
    return out


def cache_ready(cache: Any) -> bool:
    """Whether ``cache`` is the engine's preallocated fp32 cache, filled by a prefill, with
    each position's keys and values contiguous: what :func:`attend` writes into."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    for layer in layers:
        if type(layer) is not PreallocatedLayer or layer._kbuf is None or layer._vbuf is None:
            return False
        for buf in (layer._kbuf, layer._vbuf):
            if buf.dtype != torch.float32 or buf.stride(3) != 1 or buf.stride(2) != buf.shape[3]:
                return False
    return True


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layer: Any,
    bias: torch.Tensor,
    heads: tuple[int, int, int],
    scale: float,
) -> torch.Tensor:
    """One decode step's attention for every row: this token's heads (``q`` [B, hq d], ``k``
    and ``v`` [B, hkv d], fp32, rows contiguous: the fused product's columns or three
    products' outputs) rotated by ``cos``/``sin`` [B, d] (rotate-half RoPE), its keys and
    values appended to the cache ``layer`` (a :class:`PreallocatedLayer` that
    :func:`cache_ready` accepted), and softmax(q k^T * scale + bias) v over the cache with
    ``bias`` [B, T] (0 or -inf, T the cache's length with this token); ``heads`` = (hq, hkv,
    d). Returns [B, hq d], heads side by side as the o projection reads them."""
    hq, hkv, d = heads
    strides = (_row_stride(q), _row_stride(k), _row_stride(v))
    kbuf, vbuf, col = layer.append_column()
    rows, n = q.shape[0], col + 1
    assert bias.shape == (rows, n), f"mask covers {tuple(bias.shape)}, cache {rows} x {n}"
    threads = torch.get_num_threads()
    out = q.new_empty((rows, hq * d))
    scratch = q.new_empty((threads * (hq // hkv) * n,))
    _call(
        "attend",
        q.data_ptr(),
        strides[0],
        k.data_ptr(),
        strides[1],
        v.data_ptr(),
        strides[2],
        cos.data_ptr(),
        sin.data_ptr(),
        kbuf.data_ptr(),
        kbuf.stride(0),
        kbuf.stride(1),
        vbuf.data_ptr(),
        vbuf.stride(0),
        vbuf.stride(1),
        col,
        bias.data_ptr(),
        out.data_ptr(),
        scratch.data_ptr(),
        rows,
        hq,
        hkv,
        d,
        scale,
        threads,
    )
    return out


def decode_layers(
    layers: list[Any],
    final_norm: Any,
    h: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    bias: torch.Tensor,
    cache: Any,
    heads: tuple[int, int, int],
) -> torch.Tensor:
    """Every decoder layer of a decode step (one token per row), then the final RMSNorm
    (``final_norm``, the model's module): the lean decoder's ``layers`` multiply (each with
    ``rms`` - its two norms' weights and epsilons -, ``qkv``, ``o``, ``up``, ``down`` and
    ``scaling``), these functions do the rest. ``h`` [B, 1, D] fp32 (updated in place: the
    residual stream), ``rope`` cos/sin [B, 1, 1, d], ``bias`` [B, 1, 1, T] (0 or -inf),
    ``cache`` accepted by :func:`cache_ready`. Returns the final norm's output [B, D]."""
    b = h.shape[0]
    h = h.view(b, -1)  # [B, 1, D] -> [B, D]
    cos, sin = (c.reshape(b, -1).contiguous() for c in rope)  # [B, 1, 1, d] -> [B, d]
    bias = bias.view(b, -1)  # [B, 1, 1, T] -> [B, T]
    delta = None  # the previous layer's MLP output, added to h by the next norm
    for layer, layer_cache in zip(layers, cache.layers, strict=True):
        (w1, eps1), (w2, eps2) = layer.rms
        x = add_rmsnorm(h, delta, w1, eps1)
        q, k, v = layer.qkv(x)  # [B, heads * d] each, biases added
        out = attend(q, k, v, cos, sin, layer_cache, bias, heads, layer.scaling)
        x = add_rmsnorm(h, layer.o(out)[0], w2, eps2)  # h += attention
        gate, up = layer.up(x)  # [B, I] each
        delta = layer.down(silu_mul(gate, up))[0]
    return add_rmsnorm(h, delta, final_norm.weight, float(final_norm.variance_epsilon))
