"""The host class: which CPU (or GPU) this is, named, and how fast it multiplies and reads.

Why: the right dtype and kernels depend on the class of host far more than on its size. bf16 is
a speed-up only where the CPU has native bf16 dot products (AVX512-BF16, AMX); on an AVX2-only
host - most laptops and many cloud VMs - bf16 is emulated and several times slower than fp32.
Every ``auto`` dtype reads :func:`host_class` (through :func:`auto_dtype`), and every benchmark
prints :func:`describe_host`, so a figure always names the class of host that produced it.

The classes, from the CPU flags: ``amx`` (AMX-BF16 tiles), ``avx512-bf16`` (AVX512 with bf16
dot products), ``avx512`` (AVX512F without them), ``avx2`` (AVX2 and FMA, nothing wider),
``generic`` (anything else: older x86, or a CPU without ``/proc/cpuinfo`` flags); a CUDA device
is ``cuda (<its name>)``. :func:`measured_rates` adds what the host really does at the decode
step's shapes (fp32 and bf16 matmul rates, memory read rate), measured once per process.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

__all__ = [
    "BF16_FAST_CLASSES",
    "DECODE_SHAPES",
    "HostRates",
    "auto_dtype",
    "bf16_is_fast",
    "class_from_flags",
    "cpu_flags",
    "host_class",
    "describe_host",
    "measured_rates",
]

# CPU classes whose bf16 matmuls are native (faster than fp32), not emulated
BF16_FAST_CLASSES = frozenset({"amx", "avx512-bf16"})
# The flags a host class is read from, in the order the one-line description prints them
CLASS_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
# (rows, in, out) of the products a batch-16 decode step of a Qwen2.5-0.5B-class model spends
# its time in: q/k/v fused, gate/up fused, down. Skinny products are what decoding runs, and
# their rate is far below a square matmul's on most CPUs, so they are measured as they are.
DECODE_SHAPES = ((16, 896, 1152), (16, 896, 9728), (16, 4864, 896))
# Size of the buffer the memory read rate is measured on: well past any CPU's last-level cache
READ_BYTES = 256 * 2**20


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty where it does not exist, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def class_from_flags(flags: set[str]) -> str:
    """The CPU class these flags name (the widest bf16-capable unit wins)."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "generic"


def host_class(device: torch.device | str = "cpu", flags: set[str] | None = None) -> str:
    """The class of ``device``'s host: a CPU class from its flags (``flags`` = this host's
    unless given), or ``cuda (<name>)`` for a CUDA device, ``mps`` for Apple's GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type != "cpu":
        return device.type
    return class_from_flags(cpu_flags() if flags is None else flags)


def bf16_is_fast(device: torch.device | str = "cpu", flags: set[str] | None = None) -> bool:
    """Whether bf16 is a speed-up here rather than an emulation: CUDA with bf16 support, or a
    CPU of a class with native bf16 dot products."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and host_class(device, flags) in BF16_FAST_CLASSES


def auto_dtype(device: torch.device | str = "cpu", flags: set[str] | None = None) -> torch.dtype:
    """What ``auto`` means on this host: bf16 where it is fast, else fp32."""
    return torch.bfloat16 if bf16_is_fast(device, flags) else torch.float32


@dataclass(frozen=True)
class HostRates:
    """What this host measured: GFLOP/s of the decode step's products (:data:`DECODE_SHAPES`)
    with ``F.linear`` in fp32 and bf16, and GB/s of a sequential read."""

    fp32_gflops: float
    bf16_gflops: float
    read_gbs: float
    threads: int


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls after one warm-up: the least disturbed by other load."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _linear_rate(dtype: torch.dtype, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    pairs = [
        (
            torch.randn(rows, 1, k, generator=gen).to(dtype),
            torch.randn(n, k, generator=gen).to(dtype),
        )
        for rows, k, n in DECODE_SHAPES
    ]
    flops = sum(2 * rows * k * n for rows, k, n in DECODE_SHAPES)

    def products() -> None:
        with torch.inference_mode():
            for x, w in pairs:
                F.linear(x, w)

    return flops / _best_seconds(products, repeats) / 1e9


@functools.cache
def measured_rates(threads: int | None = None, repeats: int = 3) -> HostRates:
    """Measure the fp32 and bf16 rates of the decode step's products and the memory read rate,
    once per process and thread count (best of ``repeats``: the call least disturbed by other
    load). ``threads`` = torch's current setting."""
    n_threads = threads or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        fp32 = _linear_rate(torch.float32, repeats)
        bf16 = _linear_rate(torch.bfloat16, repeats)
        buf = torch.ones(READ_BYTES // 4, dtype=torch.float32)
        read = READ_BYTES / _best_seconds(buf.sum, repeats) / 1e9
    finally:
        torch.set_num_threads(before)
    return HostRates(round(fp32, 1), round(bf16, 1), round(read, 1), n_threads)


def describe_host(device: torch.device | str = "cpu", measure: bool = True) -> str:
    """One line naming the host: class, CPU flags, cores, threads and (``measure``) the
    measured rates, e.g. for the top of a benchmark's output."""
    device = torch.device(device)
    cls = host_class(device)
    if device.type != "cpu":
        return f"host class {cls}; auto dtype {'bf16' if bf16_is_fast(device) else 'fp32'}"
    flags = cpu_flags()
    shown = "+".join(f for f in CLASS_FLAGS if f in flags) or "none of " + "/".join(CLASS_FLAGS)
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    line = (
        f"host class {cls} ({shown}); {cores} cores, {torch.get_num_threads()} threads; "
        f"auto dtype {'bf16' if bf16_is_fast(device) else 'fp32'}"
    )
    if measure:
        rates = measured_rates()
        line += (
            f"; decode-shape matmuls fp32 {rates.fp32_gflops:.0f} GFLOP/s, bf16 "
            f"{rates.bf16_gflops:.0f} GFLOP/s; memory read {rates.read_gbs:.0f} GB/s"
        )
    return line
