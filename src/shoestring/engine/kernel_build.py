"""Build and load shoestring's C files for AVX2+FMA CPUs (``kernels/*.c``): compiled with the
system's C compiler on first use, cached by the hash of the source and the command, loaded with
ctypes.

Why C files compiled at run time rather than a torch extension: a plain shared library builds in
about a second with no torch headers, and needs nothing but ``cc``. Where one cannot be built
(no compiler, not x86-64 with AVX2 and FMA, a build error) the caller gets ``None`` and why, and
keeps torch's own operations. A build goes to a temporary file renamed into place, so a cache
never holds half a library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from shoestring.host import cpu_flags

__all__ = ["FLAGS", "KERNELS", "build_library", "cache_dir"]

KERNELS = Path(__file__).with_name("kernels")
# -fopenmp links libgomp by soname: inside a torch process that is torch's own runtime
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")


def cache_dir() -> Path:
    """Where built libraries live: ``$SHOESTRING_KERNEL_CACHE``, else the user's cache dir."""
    explicit = os.environ.get("SHOESTRING_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shoestring" / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build_library(
    source: Path, name: str, defines: tuple[str, ...] = ()
) -> tuple[ctypes.CDLL | None, str | None]:
    """``source`` compiled for this AVX2+FMA CPU (with ``-D`` ``defines``) into the cache as
    ``name-<hash>.so`` and loaded, or ``None`` and why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"not an x86-64 CPU ({platform.machine()})"
    if not {"avx2", "fma"} <= cpu_flags():
        return None, "the CPU lacks AVX2/FMA"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc/gcc; set CC)"
    flags = (*FLAGS, *(f"-D{d}" for d in defines))
    key = hashlib.sha256(source.read_bytes() + " ".join((cc, *flags)).encode()).hexdigest()[:16]
    out = cache_dir() / f"{name}-{key}.so"
    if not out.is_file():
        tmp: str | None = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
            proc = subprocess.run(
                [cc, *flags, str(source), "-o", tmp], capture_output=True, text=True, timeout=120
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
        return ctypes.CDLL(str(out)), None
    except OSError as err:
        return None, f"could not load {out}: {err}"
