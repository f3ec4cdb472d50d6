"""Host facts measured, not looked up: caches, ISA, matmul peak, memory bandwidth, GPU.

This module is one idea: the host probe (measuring it, guarding and caching the result).

MFU is only meaningful against a peak this host really reaches, so the peak is measured with
large square matmuls in the same process (the vendor's theoretical peak is never reached by
PyTorch on a small CPU, and quoting MFU against it would flatter nobody usefully). Cache sizes
come from the kernel (sysfs), because the cache-fit argument is only as good as the sizes it is
made with: ``getconf`` on this very machine reports a 320 MB L3 for a 32 MB one.

The probe is cached in ``${SHOESTRING_CACHE_DIR:-~/.cache/shoestring}/probe.json``, keyed by
CPU model, torch version, thread count and device, so other commands can quote MFU without
measuring again: :func:`load_probe`.

A peak measured while other processes use the cores is low, and every later MFU against it is
too high (the issue that led here: MFU 115%). So the probe waits (up to ``QUIET_WAIT_SECONDS``)
for the host to be quiet - other processes using at most ``QUIET_PERCENT`` of the CPU - reads
the load again after measuring, and a measurement taken under load is used for the run that
asked but never cached (``under_load: true``); a cached entry taken under load is measured
again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from shoestring.rundir.directory import atomic_write_json, cpu_model_name
from shoestring.runtime import cpu_flags

__all__ = [
    "ISA_FLAGS",
    "QUIET_PERCENT",
    "cache_path",
    "host_busy_percent",
    "load_probe",
    "matmul_peak_for",
    "measure_matmul_peak",
    "measure_memory_bandwidth",
    "measured_under_load",
    "parse_size",
    "probe_key",
    "read_cache_sizes",
    "run_probe",
]

PROBE_VERSION = 1
#: Other processes may use at most this share of the host's CPU while the peak is measured.
QUIET_PERCENT = 25.0
#: How long the probe waits for a busy host to become quiet before measuring anyway.
QUIET_WAIT_SECONDS = 15.0
SYSFS_CPU = Path("/sys/devices/system/cpu")
#: The ISA features that decide which kernels PyTorch can use on a CPU.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
    "sve",
)


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


def measure_memory_bandwidth(mb: int = 128, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of-``repeats`` GB/s of copying an ``mb`` MB buffer, counting read + write (2x).

    The buffer is several times the L3 of a typical CPU, so the copy streams from DRAM. Real
    traffic is higher than 2x on CPUs that read a line before writing it (write-allocate), so
    this is what a streaming kernel sees, not the DIMMs' rating.
    """
    n = mb * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = 0.0
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best = max(best, 2 * n * 4 / dt / 1e9)
    return best


# ----------------------------------------------------------------------------- caches

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'32K' -> 32768, '1024K', '32M', '1 MiB', '512' (bytes) -> bytes; ValueError otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"cannot parse cache size {text!r}")
    mult = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def _cache_name(level: int, kind: str) -> str:
    if level == 1:
        return {"data": "L1d", "instruction": "L1i"}.get(kind.lower(), "L1")
    return f"L{level}"


def _read_sysfs(root: Path) -> dict[str, Any]:
    caches: dict[str, Any] = {}
    shared: dict[str, str] = {}
    for index in sorted((root / "cpu0" / "cache").glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        name = _cache_name(level, kind)
        caches[name] = size
        with contextlib.suppress(OSError):
            shared[name] = (index / "shared_cpu_list").read_text().strip()
    if caches:
        caches["shared_cpu_list"] = shared
    return caches


def _read_lscpu() -> dict[str, Any]:
    try:
        out = subprocess.run(
            ["lscpu", "-J", "--caches"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        rows = json.loads(out).get("caches", [])
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return {}
    caches: dict[str, Any] = {}
    for row in rows:
        try:
            caches[_cache_name(int(row["level"]), str(row["type"]))] = parse_size(
                str(row["one-size"])
            )
        except (KeyError, ValueError):
            continue
    return caches


def _read_getconf() -> dict[str, Any]:
    names = {"L1d": "LEVEL1_DCACHE_SIZE", "L2": "LEVEL2_CACHE_SIZE", "L3": "LEVEL3_CACHE_SIZE"}
    caches: dict[str, Any] = {}
    for name, var in names.items():
        try:
            out = subprocess.run(
                ["getconf", var], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and int(out) > 0:
                caches[name] = int(out)
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
    return caches


def read_cache_sizes(root: str | Path = SYSFS_CPU, fallback: bool = True) -> dict[str, Any]:
    """Per-core L1d/L1i/L2 and shared L3 sizes in bytes, and where they came from.

    Reads ``root/cpu0/cache/index*/{level,type,size}`` (``root`` is a parameter so tests can
    hand in a fake tree); only where that is missing asks ``lscpu``, then ``getconf`` (which
    misreports the L3 on some virtual machines - the result says its source).
    """
    caches = _read_sysfs(Path(root))
    source = "sysfs"
    if not caches and fallback:
        caches, source = _read_lscpu(), "lscpu"
        if not caches:
            caches, source = _read_getconf(), "getconf"
    if not caches:
        source = "unavailable"
    return {"L1d": None, "L1i": None, "L2": None, "L3": None, **caches, "source": source}


# ----------------------------------------------------------------------------- the probe


def probe_key(threads: int | None = None, device: str = "cpu") -> str:
    """Cache key: the measured peak depends on the CPU, the torch build, threads and device."""
    threads = threads or torch.get_num_threads()
    dev = torch.device(device)
    where = "cpu" if dev.type == "cpu" else f"{dev.type}:{torch.cuda.get_device_name(dev)}"
    return f"{cpu_model_name()} | torch {torch.__version__} | {threads} threads | {where}"


def cache_path() -> Path:
    root = os.environ.get("SHOESTRING_CACHE_DIR") or Path.home() / ".cache" / "shoestring"
    return Path(root) / "probe.json"


def host_busy_percent(interval: float = 0.5) -> float:
    """Percent of the host's CPU that other processes used over ``interval`` seconds (this
    process's own use, e.g. torch threads still spinning after a matmul, is subtracted)."""
    me = psutil.Process()
    me.cpu_percent(None)
    psutil.cpu_percent(None)
    time.sleep(interval)
    total = psutil.cpu_percent(None)
    own = me.cpu_percent(None) / max(1, psutil.cpu_count() or 1)
    return round(max(0.0, total - own), 1)


def wait_until_quiet(read_load: Callable[[], float], limit_seconds: float) -> tuple[float, float]:
    """Read the load until it is at most :data:`QUIET_PERCENT` or ``limit_seconds`` passed:
    (the last reading, seconds waited)."""
    t0 = time.monotonic()
    busy = read_load()
    while busy > QUIET_PERCENT and time.monotonic() - t0 < limit_seconds:
        busy = read_load()
    return busy, round(time.monotonic() - t0, 1)


def run_probe(
    device: str = "cpu",
    quick: bool = False,
    *,
    read_load: Callable[[], float] | None = None,
    quiet_wait: float | None = None,
) -> dict[str, Any]:
    """Measure this host now (seconds; ``quick`` = smaller matmuls and buffers, for tests).

    Other processes steal cores from the measurement: it waits for a quiet host (at most
    ``quiet_wait`` seconds, default :data:`QUIET_WAIT_SECONDS`, 1 s when quick), reads the
    load before and after, and sets ``under_load`` when either reading is above
    :data:`QUIET_PERCENT`. ``read_load`` is the load reading (tests inject a busy host).
    """
    read = read_load or host_busy_percent
    wait = quiet_wait if quiet_wait is not None else (1.0 if quick else QUIET_WAIT_SECONDS)
    busy, waited = wait_until_quiet(read, wait)
    t0 = time.perf_counter()
    flags = cpu_flags()
    n, reps = (512, 2) if quick else (1024, 5)
    threads = torch.get_num_threads()
    matmul = {
        "fp32": round(measure_matmul_peak(torch.float32, n=n, repeats=reps), 1),
        "bf16": round(measure_matmul_peak(torch.bfloat16, n=n, repeats=reps), 1),
    }
    out: dict[str, Any] = {
        "probe_version": PROBE_VERSION,
        "key": probe_key(threads, device),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "torch": torch.__version__,
        "cpu": {
            "model": cpu_model_name(),
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True),
            "isa": [f for f in ISA_FLAGS if f in flags],
            "avx512": "avx512f" in flags,
            "amx": "amx_tile" in flags,
            "bf16_dot_products": bool(flags & {"avx512_bf16", "amx_bf16"}),
        },
        "caches": read_cache_sizes(),
        "threads": threads,
        "matmul_gflops": matmul,
        "matmul_note": f"best of {reps} samples of an {n}x{n} matmul, {threads} threads",
        "memory_bandwidth_gbs": round(measure_memory_bandwidth(32 if quick else 128), 1),
        "memory_bandwidth_note": "buffer copy, read + write counted",
        "cuda": None,
        "host_cpu_percent_before": busy,
        "quiet_wait_seconds": waited,
    }
    dev = torch.device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out["cuda"] = {
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 2),
            "matmul_gflops": {
                "fp32": round(measure_matmul_peak(torch.float32, 4096, reps, dev), 1),
                "bf16": round(measure_matmul_peak(torch.bfloat16, 4096, reps, dev), 1),
            },
            "memory_bandwidth_gbs": round(measure_memory_bandwidth(1024, reps, str(dev)), 1),
        }
    out["probe_seconds"] = round(time.perf_counter() - t0, 2)
    after = read()
    out["host_cpu_percent_after"] = after
    out["under_load"] = busy > QUIET_PERCENT or after > QUIET_PERCENT
    return out


def measured_under_load(probe: dict[str, Any]) -> bool:
    """True for a probe taken while other processes kept the host busy (old entries carry
    only the reading before)."""
    if probe.get("under_load"):
        return True
    return float(probe.get("host_cpu_percent_before") or 0.0) > QUIET_PERCENT


def _read_cache_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"version": PROBE_VERSION, "hosts": {}}
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict):
        return {"version": PROBE_VERSION, "hosts": {}}
    return data


def load_probe(
    measure_if_missing: bool = True,
    *,
    device: str = "cpu",
    refresh: bool = False,
    quick: bool = False,
    read_load: Callable[[], float] | None = None,
) -> dict[str, Any] | None:
    """The cached probe of this host (at the current torch thread count), measuring it first
    when missing or when ``refresh``; None when missing and ``measure_if_missing`` is False.

    A quick probe (tests) is never taken for a full one: a full request measures again and
    replaces it. A probe taken under load is returned (flagged ``under_load``) but never
    cached, and a cached one taken under load is measured again. Writes are atomic, so
    concurrent commands never read half a file.
    """
    path = cache_path()
    key = probe_key(device=device)
    data = _read_cache_file(path)
    found = data["hosts"].get(key)
    usable = (
        found is not None
        and found.get("probe_version") == PROBE_VERSION
        and (quick or not found.get("quick"))
        and not measured_under_load(found)
    )
    if usable and not refresh:
        return found
    if not measure_if_missing and not refresh:
        return None
    fresh = run_probe(device=device, quick=quick, read_load=read_load)
    if fresh["under_load"]:
        return fresh  # good enough for this run's numbers (flagged), not for every later one
    data = _read_cache_file(path)  # re-read: another process may have written meanwhile
    data["hosts"][key] = fresh
    atomic_write_json(path, data)
    return fresh


def matmul_peak_for(probe: dict[str, Any] | None, device: str, dtype: str) -> float | None:
    """The measured peak GFLOP/s for a device type and dtype name ('fp32'/'bf16'), if known."""
    if not probe:
        return None
    if torch.device(device).type == "cuda":
        cuda = probe.get("cuda") or {}
        return (cuda.get("matmul_gflops") or {}).get(dtype)
    return (probe.get("matmul_gflops") or {}).get(dtype)
