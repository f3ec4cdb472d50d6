"""Background system sampler: CPU utilisation, peak RSS, available memory, CUDA memory.

The numbers are sampled by a daemon thread with psutil, never by the training loop, so the
loop's timing is not disturbed and a run that hangs still has its last samples. Peak RSS is the
peak of the resident set, not its growth during the run: a growth figure hides whatever was
already loaded (Python, torch, the weights) and so understates what a host must have.
"""

from __future__ import annotations

import threading
from typing import Any

import psutil


class SystemMonitor:
    """Samples this process (and its children) every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: list[float] = []
        self._sys_cpu: list[float] = []
        self.peak_rss = 0
        self.min_available = None
        self.n_cpus = psutil.cpu_count(logical=True) or 1

    def _rss(self) -> int:
        rss = self._proc.memory_info().rss
        try:
            for child in self._proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return rss

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._rss())
        avail = psutil.virtual_memory().available
        self.min_available = avail if self.min_available is None else min(self.min_available, avail)

    def _run(self) -> None:
        # the first cpu_percent(None) only starts the measuring interval (it returns 0.0)
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)
        while not self._stop.wait(self.interval):
            try:
                # process CPU% is per core (200% = two cores busy); normalise to the host
                self._cpu.append(self._proc.cpu_percent(None) / self.n_cpus)
                self._sys_cpu.append(psutil.cpu_percent(None))
                self._sample()
            except psutil.Error:  # the process could not be read this tick: skip the sample
                continue

    def start(self) -> SystemMonitor:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="shoestring-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        def mean(xs: list[float]) -> float | None:
            return round(sum(xs) / len(xs), 1) if xs else None

        out: dict[str, Any] = {
            "cpu_percent_mean": mean(self._cpu),
            "cpu_percent_peak": round(max(self._cpu), 1) if self._cpu else None,
            "host_cpu_percent_mean": mean(self._sys_cpu),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "memory_available_min_mb": (
                round(self.min_available / 2**20, 1) if self.min_available is not None else None
            ),
            "memory_total_mb": round(psutil.virtual_memory().total / 2**20, 1),
            "samples": len(self._cpu),
            "cpu_percent_note": "process CPU time as % of all host cores",
        }
        try:
            import torch  # deferred: compare and other light commands use no torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                out["cuda_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        except Exception:  # noqa: BLE001 - system metrics must never break a run
            pass
        return out

    def __enter__(self) -> SystemMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
