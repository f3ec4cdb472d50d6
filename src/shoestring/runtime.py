"""Device, dtype and thread settings, checked against what this host really has (its class:
:mod:`shoestring.host`).

shoestring never falls back silently: asking for CUDA on a host without it is an error that
says so. What actually ran (device, dtype, threads, denormal flushing) is returned so every
command can record it in its summary.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import torch

from shoestring.errors import DeviceUnavailableError, UserError
from shoestring.host import auto_dtype, bf16_is_fast, cpu_flags

DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def host_supports_fast_bf16(device: torch.device | str = "cpu", cpuinfo: str | None = None) -> bool:
    """Whether bf16 is a speed-up here rather than an emulation (the host class decides:
    :func:`shoestring.host.bf16_is_fast`); ``cpuinfo`` = another host's /proc/cpuinfo."""
    return bf16_is_fast(device, None if cpuinfo is None else cpu_flags(cpuinfo))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA if present, else CPU; an explicit device must exist.

    Raises:
        DeviceUnavailableError: the device was asked for and is not there.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            )
            raise DeviceUnavailableError(
                f"--device {device} was asked for but no CUDA device is available (torch "
                f"{torch.__version__}, {build}); use --device cpu. shoestring does not fall "
                "back to another device silently"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(
                f"--device {device} does not exist; this host has {count} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailableError(
                f"--device {device} was asked for but MPS is not available"
            )
    elif dev.type != "cpu":
        raise UserError(f"unsupported device '{device}'; use cpu, cuda, cuda:N, mps or auto")
    return dev


def resolve_torch_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu"
) -> torch.dtype:
    """``auto`` = the host class's dtype (:func:`shoestring.host.auto_dtype`: bf16 where
    the host computes it fast, else fp32); names: fp32, bf16, fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower()
    device = torch.device(device)
    if name == "auto":
        return auto_dtype(device)
    if name not in DTYPE_NAMES:
        raise UserError(f"unknown dtype '{dtype}'; use auto, fp32, bf16 or fp16")
    want = DTYPE_NAMES[name]
    if want == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"--dtype bf16 is not supported by {torch.cuda.get_device_name(device)}; "
            "use fp16 or fp32"
        )
    return want


def resolve_dtype(name: str, device: torch.device) -> str:
    """Training dtype as a name: 'auto' -> 'bf16' where the device runs bf16 fast, else 'fp32'."""
    if name not in ("auto", "fp32", "bf16"):
        raise UserError(f"unknown dtype '{name}'; use auto, fp32 or bf16")
    return SHORT_NAMES[resolve_torch_dtype(name, device)]


def physical_cores() -> int:
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
    if dev.type == "cuda" and dev.index is not None:  # plain "cuda" keeps the current device
        torch.cuda.set_device(dev)
    n_threads = threads or physical_cores()
    torch.set_num_threads(n_threads)
    want_flush = flush_denormal == "on" or (flush_denormal == "auto" and dev.type == "cpu")
    # set_flush_denormal returns False where the CPU does not support it (then it is off)
    flush = bool(torch.set_flush_denormal(want_flush)) and want_flush
    if deterministic:
        # warn_only: an op without a deterministic kernel warns instead of ending the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        if dev.type == "cuda":
            # cuBLAS is deterministic only with a fixed workspace (CUDA's reproducibility notes)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return Runtime(
        device=str(dev),
        dtype=resolve_dtype(dtype, dev),
        threads=n_threads,
        flush_denormal=flush,
        deterministic=deterministic,
        cuda_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    )
