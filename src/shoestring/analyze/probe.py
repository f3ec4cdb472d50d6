"""Host facts measured, not looked up: matmul peak GFLOP/s per dtype.

MFU is only meaningful against a peak this host really reaches, so the peak is measured with
large square matmuls in the same process (the vendor's theoretical peak is never reached by
PyTorch on a small CPU, and quoting MFU against it would flatter nobody usefully).
"""

from __future__ import annotations

import statistics
import time

import torch


def measure_matmul_peak(
    dtype: torch.dtype = torch.float32,
    n: int = 1024,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n x n @ n x n`` matmul (2 n^3 FLOPs each)."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    flops = 2 * n**3

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        torch.mm(a, b)
    sync()
    rates = []
    for _ in range(repeats):
        inner = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            sync()
            dt = time.perf_counter() - t0
            if dt > 0.05 or inner >= 1024:
                break
            inner *= 2
        rates.append(flops * inner / dt / 1e9)
    return max(rates) if rates else statistics.fmean(rates)
