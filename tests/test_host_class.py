"""The host-class probe's choices: CPU flags -> host class -> what ``auto`` dtype means, for
every class (the flags monkeypatched, so each class is checked on any host), and the one-line
description every benchmark prints. Measured rates are checked for shape, never for speed."""

from __future__ import annotations

import pytest
import torch

from shoestring import host, runtime

# /proc/cpuinfo flag sets of real hosts of each class (abridged)
AVX2_EPYC = {"fpu", "sse4_2", "fma", "avx", "avx2", "f16c"}
AVX512_SKYLAKE = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16_ZEN4 = AVX512_SKYLAKE | {"avx512_bf16"}
AMX_SAPPHIRE = AVX512_BF16_ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
ARM_NEON = {"fp", "asimd", "aes", "sha2"}


@pytest.mark.parametrize(
    ("flags", "cls", "dtype"),
    [
        (AVX2_EPYC, "avx2", torch.float32),
        (AVX512_SKYLAKE, "avx512", torch.float32),
        (AVX512_BF16_ZEN4, "avx512-bf16", torch.bfloat16),
        (AMX_SAPPHIRE, "amx", torch.bfloat16),
        (ARM_NEON, "generic", torch.float32),
        (set(), "generic", torch.float32),
    ],
)
def test_flags_name_the_class_and_the_auto_dtype(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], cls: str, dtype: torch.dtype
) -> None:
    assert host.class_from_flags(flags) == cls
    assert host.host_class("cpu", flags) == cls
    assert host.auto_dtype("cpu", flags) == dtype
    # this host's flags replaced: every auto choice reads the class
    monkeypatch.setattr(host, "cpu_flags", lambda cpuinfo=None: flags)
    assert host.host_class() == cls
    assert runtime.resolve_torch_dtype("auto", "cpu") == dtype
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == runtime.SHORT_NAMES[dtype]
    assert runtime.host_supports_fast_bf16("cpu") == (dtype == torch.bfloat16)
    assert host.describe_host(measure=False).startswith(f"host class {cls} (")
    # an explicit dtype is never overridden by the class
    assert runtime.resolve_torch_dtype("bf16", "cpu") == torch.bfloat16
    assert runtime.resolve_torch_dtype("fp32", "cpu") == torch.float32


def test_cpuinfo_text_is_read_for_flags() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n"
    assert host.cpu_flags(text) == {"fpu", "avx2", "fma", "avx512f", "avx512_bf16"}
    assert runtime.host_supports_fast_bf16("cpu", cpuinfo=text)
    assert not runtime.host_supports_fast_bf16("cpu", cpuinfo="flags : fpu avx2 fma\n")
    assert host.cpu_flags("no flags here\n") == set()


def test_describe_host_names_the_flags_it_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "cpu_flags", lambda cpuinfo=None: AVX2_EPYC)
    line = host.describe_host(measure=False)
    assert "host class avx2 (avx2+fma)" in line and "auto dtype fp32" in line
    monkeypatch.setattr(host, "cpu_flags", lambda cpuinfo=None: set())
    assert "(none of avx2/fma/avx512f/avx512_bf16/amx_bf16)" in host.describe_host(measure=False)


def test_measured_rates_are_positive_and_cached() -> None:
    rates = host.measured_rates(threads=1, repeats=1)
    assert rates.threads == 1
    assert rates.fp32_gflops > 0 and rates.bf16_gflops > 0 and rates.read_gbs > 0
    assert host.measured_rates(threads=1, repeats=1) is rates  # once per process
    assert torch.get_num_threads() >= 1  # the caller's thread setting is restored
