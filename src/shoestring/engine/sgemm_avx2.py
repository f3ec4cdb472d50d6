"""shoestring's own fp32 product for AVX2+FMA CPUs (``kernels/sgemm_avx2.c``): built with the
system's C compiler on first use, cached, loaded with ctypes.

Why: on an AVX2-only host a decode step spends about 90% of its time in weight products at a
few rows, and the fastest kernel torch offers there (oneDNN's prepacked product) runs them at
about 60% of the host's fp32 rate. The C kernel keeps a panel of six weight rows against all of
a step's rows at once and streams each weight once; ``benchmarks/linear_kernels.py`` times it
against every torch kernel at the step's shapes (figures per host class in docs/generate.md).
It is a C file compiled at run time rather than a torch extension: a plain shared library
builds in about a second with no torch headers, and needs nothing but ``cc``.

Where it cannot be built (no compiler, not x86-64, a build error) :func:`available` is False
and callers keep oneDNN's product; the reason is logged once. The build goes to a temporary
file renamed into place, so a cache never holds half a library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from shoestring.host import cpu_flags

__all__ = ["PROFILER_NAME", "ROWS_PER_PANEL", "available", "build_error", "linear", "pack"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "sgemm_avx2.c"
# -fopenmp links libgomp by soname: inside a torch process that is torch's own runtime
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
# the kernel's calls as torch's profiler lists them
PROFILER_NAME = "shoestring::sgemm_avx2"
# weight rows per packed panel (R in the C source)
ROWS_PER_PANEL = 6
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _cache_dir() -> Path:
    """Where built kernels live: ``$SHOESTRING_KERNEL_CACHE``, else the user's cache dir."""
    explicit = os.environ.get("SHOESTRING_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shoestring" / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library, or ``None`` and why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"not an x86-64 CPU ({platform.machine()})"
    flags = cpu_flags()
    if not {"avx2", "fma"} <= flags:
        return None, "the CPU lacks AVX2/FMA"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc/gcc; set CC)"
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *FLAGS)).encode()).hexdigest()[:16]
    out = _cache_dir() / f"sgemm_avx2-{key}.so"
    if not out.is_file():
        tmp: str | None = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
            proc = subprocess.run(
                [cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120
            )
            if proc.returncode != 0:
                return None, f"{cc} failed: {proc.stderr.strip()[-500:]}"
            os.replace(tmp, out)  # atomic: another process sees the whole library or none
            tmp = None
        except (OSError, subprocess.SubprocessError) as err:
            return None, f"could not build {out}: {err}"
        finally:
            if tmp is not None:  # a failed build leaves nothing behind
                Path(tmp).unlink(missing_ok=True)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as err:
        return None, f"could not load {out}: {err}"
    lib.sgemm_avx2_pack.argtypes = [_P, _P, _I64, _I64, _INT]
    lib.sgemm_avx2_pack.restype = None
    lib.sgemm_avx2_linear.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _INT]
    lib.sgemm_avx2_linear.restype = _INT
    return lib, None


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    lib, why = _build()
    if lib is None:
        log.info("shoestring's AVX2 fp32 kernel is not used: %s", why)
    return lib, why


def available() -> bool:
    """Whether the kernel is built and loadable on this CPU."""
    return _library()[0] is not None


def build_error() -> str | None:
    """Why :func:`available` is False (``None`` when it is True)."""
    return _library()[1]


def pack(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The fp32 weight [n, k] in the kernel's panels: a flat copy of ceil(n / 6) * 6 * k,
    written into ``out`` where given (a weight updated in place repacks into the buffer it
    had: no fresh pages to fault in)."""
    lib = _library()[0]
    assert lib is not None, "check available() first"
    w = weight.detach().contiguous()
    n, k = w.shape
    size = -(-n // ROWS_PER_PANEL) * ROWS_PER_PANEL * k
    if out is None:
        out = torch.empty(size, dtype=torch.float32)
    elif out.shape != (size,) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"pack: out must be a contiguous fp32 [{size}], not {tuple(out.shape)}")
    lib.sgemm_avx2_pack(w.data_ptr(), out.data_ptr(), n, k, torch.get_num_threads())
    return out


def linear(
    x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for fp32 ``x`` [..., k], with the weight from :func:`pack`
    (``n`` output features)."""
    lib = _library()[0]
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
            status = lib.sgemm_avx2_linear(*args)
    else:
        status = lib.sgemm_avx2_linear(*args)
    if status != 0:
        raise MemoryError(f"the AVX2 kernel could not allocate its {m} x {k} scratch buffer")
    return y
