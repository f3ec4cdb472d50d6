"""Linear layers with weights prepacked for a CPU kernel, for the decode step and prefill (bf16
and fp32).

Why: a decode step multiplies a few rows (one token per sequence) by every weight of the model.
On a CPU, ``F.linear`` on bf16 weights goes through oneDNN, which first reorders the weight into
its blocked layout - on every call - so that reorder costs as much as the product itself; fp32
``F.linear`` goes to MKL's sgemm, which at 16 rows streams the weight far below the host's fp32
rate. Reordering once per generation call (``torch.ops.mkldnn._reorder_linear_weight``) and
multiplying with the packed weight (``torch.ops.mkldnn._linear_pointwise``, the pair
``torch.compile`` uses for frozen CPU models) runs oneDNN's kernel on a layout it streams well.
``benchmarks/decode_profile.py`` measures both against each other; docs/generate.md has the
figures per host class.

fp32 weights have a second kernel: shoestring's own for AVX2+FMA (:mod:`.sgemm_avx2`), faster
than oneDNN's at every row count a decode step or prefill runs on the ``avx2`` host class
(``benchmarks/linear_kernels.py``). ``auto`` (:func:`fp32_kernel`) takes it on that class only,
where it was measured; ``fp32_kernel="avx2"``/``"onednn"`` picks one anywhere. For a decoder
of a few rows (:data:`BF16_COPIES_MAX_ROWS`: batch-1 generation) a weight whose fp32 values are
all bf16 values (a bf16 checkpoint loaded in fp32, as most are shipped) is packed for it in
bf16: the same products bit for bit (:func:`bf16_storage_available` checks that on a probe)
from half the bytes, which is what a step of so few rows waits for; with more rows the step is
bound by its multiply-adds, and widening the weights back to fp32 costs more than it saves
(``benchmarks/linear_kernels.py --bf16-values``).

The exactness policy, per dtype (a probe checks it before packing is used at all):

* **bf16**: the packed product is bit-identical to ``F.linear`` (the same oneDNN kernel).
* **fp32**: either packed product sums in another order than MKL, so it is not bit-identical; it
  must be a correct fp32 evaluation of the same sums - within the rounding bound of any
  summation order, ``2 * K * eps * (|x| @ |w|^T)`` for ``K`` terms (:func:`within_fp32_rounding`)
  - which rules out a kernel computing in bf16 or TF32 behind fp32's back. Greedy tokens stay
  those of the model's own forward on a trained model (tested on stories260K against
  transformers' ``generate``). fp32 weights are packed only where they are big enough to stream
  from memory (:data:`FP32_MIN_BYTES`, past the last-level cache of common CPUs): that is where
  the packed layout pays, and small models keep logits bit-identical to their forward.

The packed copy costs the weights' size in memory for the length of one generation call, so
packing is skipped when the host has less than that to spare.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import psutil
import torch
import torch.nn.functional as F

from shoestring.engine.sgemm_avx2 import available as avx2_built
from shoestring.engine.sgemm_avx2 import build_error as avx2_build_error
from shoestring.engine.sgemm_avx2 import linear as avx2_linear
from shoestring.engine.sgemm_avx2 import pack as avx2_pack
from shoestring.engine.sgemm_avx2 import pack_bf16_where_exact as avx2_pack_bf16_where_exact
from shoestring.host import host_class

__all__ = [
    "BF16_COPIES_MAX_ROWS",
    "FP32_KERNELS",
    "FP32_MIN_BYTES",
    "PackedWeight",
    "avx2_kernel_available",
    "bf16_storage_available",
    "can_pack",
    "fp32_kernel",
    "pack_weight",
    "packed_linear",
    "packing_available",
    "within_fp32_rounding",
]

# Packed weights are built for this many rows (a hint to oneDNN; other row counts work).
ROWS_HINT = 16
# Keep this much memory free beyond the packed copy.
MEMORY_MARGIN_BYTES = 2**30
# fp32 weights smaller than this (in all) are not packed: they sit in the caches, where MKL's
# product is as fast, and the model's own forward stays bit-identical to the engine's step.
FP32_MIN_BYTES = 64 * 2**20
PACKABLE = (torch.bfloat16, torch.float32)
# Which product fp32 weights are packed for: auto = shoestring's AVX2 kernel on the avx2 host
# class (where it was measured faster), oneDNN's elsewhere
FP32_KERNELS = ("auto", "onednn", "avx2")
# Decoders of at most this many rows take bf16 copies of bf16-valued fp32 weights: the AVX2
# kernel's few-row path (rows read at full vector width) streams the weights, and widens each
# loaded vector for free; more rows are bound by multiply-adds (same value as the C kernel's FEW)
BF16_COPIES_MAX_ROWS = 4


@dataclass(frozen=True)
class PackedWeight:
    """A weight [out, in] in one kernel's packed layout."""

    data: torch.Tensor
    out_features: int
    kernel: str  # "onednn" or "avx2"

    @property
    def nbytes(self) -> int:
        """The memory the copy holds."""
        return self.data.numel() * self.data.element_size()


def within_fp32_rounding(
    got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, w: torch.Tensor
) -> bool:
    """Whether ``got`` and ``want`` (two evaluations of ``x @ w.T`` in fp32) differ by no more
    than two summation orders may: each is within ``K * eps * sum_k |x_k w_k|`` of the exact
    value (the classic bound on a K-term dot product), so they are within twice that."""
    k = x.shape[-1]
    eps = torch.finfo(torch.float32).eps
    bound = 2 * k * eps * (x.abs().double() @ w.abs().double().T)
    return bool(((got.double() - want.double()).abs() <= bound).all())


@functools.cache
def packing_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """True where the packing ops exist for ``dtype`` on this CPU and a packed product meets
    the dtype's exactness policy against ``F.linear`` on a probe (bias included): equal for
    bf16, within fp32 rounding for fp32."""
    if dtype not in PACKABLE:
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(48, 40, generator=gen).to(dtype)
        b = torch.randn(48, generator=gen).to(dtype)
        data = torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT)
        packed = PackedWeight(data, w.shape[0], "onednn")
        for rows in (1, 3, ROWS_HINT, 37):  # below, at and above the hint, odd sizes too
            x = torch.randn(rows, 1, 40, generator=gen).to(dtype)
            got, want = packed_linear(x, packed, b), F.linear(x, w, b)
            if dtype == torch.bfloat16:
                exact = torch.equal(got, want)
            else:  # the bias is one more term of each sum: a column of ones in x against it
                xb = torch.cat([x, torch.ones(rows, 1, 1)], dim=-1)
                exact = within_fp32_rounding(got, want, xb, torch.cat([w, b[:, None]], dim=1))
            if not exact:
                return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.cache
def avx2_kernel_available() -> bool:
    """True where shoestring's AVX2 kernel builds here and meets the fp32 policy against
    ``F.linear`` on a probe: every row-count path (one row, up to 8, up to 16, several blocks),
    an output count that is not a whole number of panels, a bias, and a reduction length
    whose tail the one-row path adds apart."""
    if not avx2_built():
        return False
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(50, 42, generator=gen), torch.randn(50, generator=gen)
    packed = avx2_pack(w)
    for rows in (1, 2, 8, 9, 16, 37):
        x = torch.randn(rows, 1, 42, generator=gen)
        got = avx2_linear(x, packed, 50, b)
        xb = torch.cat([x, torch.ones(rows, 1, 1)], dim=-1)
        want = F.linear(x, w, b)
        if not within_fp32_rounding(got, want, xb, torch.cat([w, b[:, None]], dim=1)):
            return False
    return True


@functools.cache
def bf16_storage_available() -> bool:
    """True where the AVX2 kernel's build for bf16-stored weights loads and gives, for weights
    that are all bf16 values, the fp32 build's products bit for bit on a probe (every
    row-count path, a partial panel, a bias, a reduction tail)."""
    if not avx2_kernel_available() or not avx2_built(bf16=True):
        return False
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(50, 42, generator=gen).to(torch.bfloat16).float()
    b = torch.randn(50, generator=gen)
    full, half = avx2_pack(w), avx2_pack(w, bf16=True)
    for rows in (1, 2, 8, 9, 16, 37):
        x = torch.randn(rows, 42, generator=gen)
        if not torch.equal(avx2_linear(x, half, 50, b), avx2_linear(x, full, 50, b)):
            return False
    return True


def fp32_kernel(choice: str = "auto") -> str:
    """The kernel fp32 weights are packed for: ``choice`` (one of :data:`FP32_KERNELS`) with
    ``auto`` resolved - the AVX2 kernel on the ``avx2`` host class where it builds and meets
    the policy, else oneDNN's. Asking for ``avx2`` where it cannot run is an error."""
    if choice not in FP32_KERNELS:
        raise ValueError(f"fp32_kernel must be one of {FP32_KERNELS}, not {choice!r}")
    if choice == "avx2":
        if not avx2_kernel_available():
            why = avx2_build_error() or "it does not meet the fp32 policy on this CPU"
            raise RuntimeError(
                f"fp32_kernel=avx2 was asked for, but shoestring's AVX2 kernel cannot run here: "
                f"{why}. Use fp32_kernel=auto or onednn."
            )
        return "avx2"
    if choice == "auto" and host_class() == "avx2" and avx2_kernel_available():
        return "avx2"
    return "onednn"


def can_pack(weights: list[torch.Tensor], kernel: str = "auto") -> bool:
    """Whether these weights (all bf16, or all fp32 and at least :data:`FP32_MIN_BYTES`, on a
    CPU) should be packed: the ops (for fp32, those of ``kernel``) meet the dtype's policy here
    and the copy fits in the memory available now with a margin."""
    if not weights or any(w.device.type != "cpu" for w in weights):
        return False
    dtypes = {w.dtype for w in weights}
    if len(dtypes) != 1:
        return False
    dtype = dtypes.pop()
    if dtype == torch.float32 and fp32_kernel(kernel) == "avx2":
        pass  # fp32_kernel checked the AVX2 kernel's policy
    elif not packing_available(dtype):
        return False
    size = sum(w.numel() * w.element_size() for w in weights)
    if dtype == torch.float32 and size < FP32_MIN_BYTES:
        return False
    return psutil.virtual_memory().available > size + MEMORY_MARGIN_BYTES


def pack_weight(
    weight: torch.Tensor, kernel: str = "auto", bf16_if_exact: bool = False
) -> PackedWeight:
    """The weight [out, in] in its kernel's layout (a copy): fp32 for :func:`fp32_kernel`'s
    choice, bf16 for oneDNN's blocked layout. With ``bf16_if_exact`` an fp32 weight packed for
    the AVX2 kernel whose values are all bf16 values is stored in bf16 (lossless; see
    :data:`BF16_COPIES_MAX_ROWS` for when that is faster)."""
    out = weight.shape[0]
    if weight.dtype == torch.float32 and fp32_kernel(kernel) == "avx2":
        if bf16_if_exact and bf16_storage_available():
            return PackedWeight(avx2_pack_bf16_where_exact(weight), out, "avx2")
        return PackedWeight(avx2_pack(weight), out, "avx2")
    data = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)
    return PackedWeight(data, out, "onednn")


def packed_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the weight from :func:`pack_weight`."""
    if packed.kernel == "avx2":
        return avx2_linear(x, packed.data, packed.out_features, bias)
    # "none", [None], "": no fused post-op (the pointwise op's activation slot is unused)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed.data, bias, "none", [None], "")
