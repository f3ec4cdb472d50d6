"""benchmarks/gpu_rollout.py runs end to end at a tiny shape on a CPU (the GPU run is one shot:
it must not die on a bug), and refuses the real run where CUDA is missing. Timings are printed,
never asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("gpu_rollout", BENCH / "gpu_rollout.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_tiny_cpu_run_measures_every_section(tmp_path: Path, capsys) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "figures.json"
    args = ["--device", "cpu", "--tiny", "--quick", "--batches", "1,4", "--grpo-steps", "0"]
    assert _load().main([*args, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    sections = figures["sections"]
    assert not [k for k, v in sections.items() if "error" in v or "skipped" in v]
    for name in ("static, no LoRA", "static, LoRA merged", "dynamic engine, peft LoRA layers"):
        assert {"1", "4"} <= set(sections[name]), name
        assert sections[name]["4"]["decode_tok_s"] > 0
    assert "HF generate, static cache + torch.compile" in sections
    assert "ms/step" in capsys.readouterr().out


def test_refuses_without_cuda(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the refusal is for machines without it")
    assert _load().main(["--quick"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert _load().main(["--device", "cpu"]) == 2
