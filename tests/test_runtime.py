"""setup_runtime on a (simulated) CUDA host: the branch CPU-only CI cannot otherwise reach.

A real H200 run found ``torch.cuda.set_device(torch.device("cuda"))`` raising "Expected a
torch.device with a specified index" (torch 2.11), which failed every ``--device cuda`` command;
this pins the fix without a GPU.
"""

from __future__ import annotations

import pytest
import torch

import shoestring.runtime as rt


@pytest.mark.parametrize(("asked", "selected"), [("cuda", []), ("cuda:1", [1])])
def test_cuda_device_without_index_keeps_the_current_device(
    monkeypatch: pytest.MonkeyPatch, asked: str, selected: list[int]
) -> None:
    calls: list[int] = []

    def set_device(dev: torch.device) -> None:
        if dev.index is None:  # what torch 2.11 does with an index-less device
            raise ValueError("Expected a torch.device with a specified index")
        calls.append(dev.index)

    monkeypatch.setattr(rt, "resolve_device", lambda device: torch.device(asked))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Simulated GPU")
    threads = torch.get_num_threads()
    try:
        runtime = rt.setup_runtime(asked, "fp32", threads=1)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)
    assert calls == selected
    assert runtime.device == asked and runtime.cuda_name == "Simulated GPU"
