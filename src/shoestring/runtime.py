"""Device, dtype and thread settings, checked against what this host really has.

shoestring never falls back silently: asking for CUDA on a host without it is an error that
says so. What actually ran (device, dtype, threads, denormal flushing) is returned so every
command can record it in its summary.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from shoestring.errors import DeviceUnavailableError, UserError


@functools.cache
def cpu_flags() -> frozenset[str]:
    """ISA flags of this CPU from /proc/cpuinfo (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_device(name: str) -> torch.device:
    """Turn 'auto'/'cpu'/'cuda[:N]'/'mps' into a device that exists here, or raise."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device '{name}' was requested but CUDA is not available on this host "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use --device cpu "
                "or install a CUDA build of torch. shoestring does not fall back silently."
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device '{name}' does not exist; this host has {torch.cuda.device_count()} GPU(s)"
            )
        return dev
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceUnavailableError("device 'mps' was requested but MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_dtype(name: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the device runs bf16 fast, else 'fp32'; explicit bf16 is honoured."""
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if name not in ("fp32", "bf16"):
        raise UserError(f"unknown dtype '{name}'; use auto, fp32 or bf16")
    return name


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass
class Runtime:
    """What a command actually runs on; recorded verbatim in summary.json."""

    device: str
    dtype: str
    threads: int
    flush_denormal: bool
    deterministic: bool
    cuda_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def autocast(self) -> Any:
        """The autocast context for this runtime (a no-op for fp32)."""
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.torch_device.type, enabled=False)


def setup_runtime(
    device: str = "auto",
    dtype: str = "auto",
    threads: int = 0,
    flush_denormal: str = "auto",
    deterministic: bool = False,
) -> Runtime:
    """Apply thread count, denormal flushing and determinism; return what is in force."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    n_threads = threads or physical_cores()
    torch.set_num_threads(n_threads)
    want_flush = flush_denormal == "on" or (flush_denormal == "auto" and dev.type == "cpu")
    # set_flush_denormal returns False where the CPU does not support it (then it is off)
    flush = bool(torch.set_flush_denormal(want_flush)) and want_flush
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if dev.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return Runtime(
        device=str(dev),
        dtype=resolve_dtype(dtype, dev),
        threads=n_threads,
        flush_denormal=flush,
        deterministic=deterministic,
        cuda_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    )
