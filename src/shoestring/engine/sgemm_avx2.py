"""shoestring's own fp32 product for AVX2+FMA CPUs (``kernels/sgemm_avx2.c``): built with the
system's C compiler on first use, cached, loaded with ctypes.

Why: on an AVX2-only host a decode step spends about 90% of its time in weight products at a
few rows, and the fastest kernel torch offers there (oneDNN's prepacked product) runs them at
about 60% of the host's fp32 rate. The C kernel keeps a panel of six weight rows against all of
a step's rows at once and streams each weight once; ``benchmarks/linear_kernels.py`` times it
against every torch kernel at the step's shapes (figures per host class in docs/generate.md).
It is a C file compiled at run time (:mod:`.kernel_build`: no torch headers, nothing but ``cc``).

The same source compiled with ``-DWEIGHTS_BF16`` reads its packed copy in bf16 (``pack(...,
bf16=True)``): for weights that are all bf16 values - the upcast of a bf16 checkpoint - the
products are the fp32 build's bit for bit, from half the bytes (the decode step reads every
weight once per token, so a memory-bound step takes about half the time).

Where it cannot be built (no compiler, not x86-64, a build error) :func:`available` is False
and callers keep oneDNN's product; the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, NamedTuple

import torch

from shoestring.engine.kernel_build import KERNELS, build_library

__all__ = [
    "PROFILER_NAME",
    "ROWS_PER_PANEL",
    "available",
    "build_error",
    "is_bf16_valued",
    "linear",
    "pack",
    "pack_bf16_where_exact",
]

log = logging.getLogger(__name__)

SOURCE = KERNELS / "sgemm_avx2.c"
# the kernel's calls as torch's profiler lists them
PROFILER_NAME = "shoestring::sgemm_avx2"
# weight rows per packed panel (R in the C source)
ROWS_PER_PANEL = 6

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class _Kernel(NamedTuple):
    """A loaded build's two entry points (the library kept alive with them)."""

    lib: ctypes.CDLL
    pack: Any
    linear: Any


def _build(bf16: bool = False) -> tuple[_Kernel | None, str | None]:
    """The loaded library (``bf16``: the build that reads bf16-stored weights), or ``None``
    and why not."""
    name = "sgemm_avx2_bf16" if bf16 else "sgemm_avx2"
    lib, why = build_library(SOURCE, name, ("WEIGHTS_BF16",) if bf16 else ())
    if lib is None:
        return None, why
    pack_fn, linear_fn = getattr(lib, f"{name}_pack"), getattr(lib, f"{name}_linear")
    pack_fn.argtypes, pack_fn.restype = [_P, _P, _I64, _I64, _INT], None
    linear_fn.argtypes, linear_fn.restype = [_P, _P, _P, _P, _I64, _I64, _I64, _INT], _INT
    return _Kernel(lib, pack_fn, linear_fn), None


@functools.cache
def _library(bf16: bool = False) -> tuple[_Kernel | None, str | None]:
    lib, why = _build(bf16)
    if lib is None:
        log.info("shoestring's AVX2 fp32 kernel is not used: %s", why)
    return lib, why


def available(bf16: bool = False) -> bool:
    """Whether the kernel (``bf16``: its build for bf16-stored weights) is built and loadable
    on this CPU."""
    return _library(bf16)[0] is not None


def build_error(bf16: bool = False) -> str | None:
    """Why :func:`available` is False (``None`` when it is True)."""
    return _library(bf16)[1]


def is_bf16_valued(weight: torch.Tensor) -> bool:
    """Whether every value of the fp32 ``weight`` is a bf16 value (its low 16 bits zero), so
    that a bf16 copy of it loses nothing: true of any bf16 checkpoint loaded in fp32."""
    bits = weight.detach().contiguous().view(torch.int32)
    return not bool(torch.any(torch.bitwise_and(bits, 0xFFFF)))


def pack(weight: torch.Tensor, out: torch.Tensor | None = None, bf16: bool = False) -> torch.Tensor:
    """The fp32 weight [n, k] in the kernel's panels: a flat copy of ceil(n / 6) * 6 * k,
    written into ``out`` where given (a weight updated in place repacks into the buffer it
    had: no fresh pages to fault in). ``bf16``: the copy holds bf16 values, for a weight whose
    values all are (:func:`is_bf16_valued`; anything else is an error - it would round)."""
    w = weight.detach().contiguous()
    if bf16 and not is_bf16_valued(w):
        raise ValueError("pack(bf16=True): the weight has values a bf16 copy would round")
    return _pack(w, out, bf16)


def pack_bf16_where_exact(weight: torch.Tensor) -> torch.Tensor:
    """:func:`pack`'s copy of ``weight`` in bf16 where that loses nothing
    (:func:`is_bf16_valued`), else in fp32 - with one pass of the check."""
    w = weight.detach().contiguous()
    return _pack(w, None, is_bf16_valued(w))


def _pack(w: torch.Tensor, out: torch.Tensor | None, bf16: bool) -> torch.Tensor:
    """:func:`pack` of a contiguous fp32 ``w`` whose values, for ``bf16``, are bf16 values."""
    lib = _library(bf16)[0]
    assert lib is not None, "check available() first"
    if bf16:
        w = w.to(torch.bfloat16)  # exact: each value is its fp32 bits' top half
    dtype = torch.bfloat16 if bf16 else torch.float32
    n, k = w.shape
    size = -(-n // ROWS_PER_PANEL) * ROWS_PER_PANEL * k
    if out is None:
        out = torch.empty(size, dtype=dtype)
    elif out.shape != (size,) or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(
            f"pack: out must be a contiguous {dtype} [{size}], not {out.dtype} {tuple(out.shape)}"
        )
    lib.pack(w.data_ptr(), out.data_ptr(), n, k, torch.get_num_threads())
    return out


def linear(
    x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for fp32 ``x`` [..., k], with the weight from :func:`pack`
    (``n`` output features; fp32 or bf16-stored, by the copy's dtype)."""
    lib = _library(packed.dtype == torch.bfloat16)[0]
    assert lib is not None, "check available() first"
    k = x.shape[-1]
    flat = x.reshape(-1, k).contiguous()
    m = flat.shape[0]
    y = torch.empty(*x.shape[:-1], n, dtype=torch.float32, device=x.device)
    if m == 0:
        return y
    b = bias.detach().contiguous() if bias is not None else None
    args = (
        flat.data_ptr(),
        packed.data_ptr(),
        b.data_ptr() if b is not None else None,
        y.data_ptr(),
        m,
        n,
        k,
        torch.get_num_threads(),
    )
    if torch.autograd._profiler_enabled():  # a named range, or torch's profiler sees nothing
        with torch.profiler.record_function(PROFILER_NAME):
            status = lib.linear(*args)
    else:
        status = lib.linear(*args)
    if status != 0:
        raise MemoryError(f"the AVX2 kernel could not allocate its {m} x {k} scratch buffer")
    return y
