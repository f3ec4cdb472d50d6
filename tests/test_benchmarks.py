"""The GRPO and decode-step benchmark scripts run end to end on tiny shapes (they are user-
facing commands; these keep them from rotting), each naming its host class on its first line.
Timings are printed, never asserted."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from shoestring.engine import packed_linear
from shoestring.host import auto_dtype

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_SHAPE = ["--hidden", "32", "--intermediate", "64", "--layers", "1", "--heads", "2"]
TINY_SHAPE += ["--kv-heads", "1", "--vocab", "600"]


def _names_its_host(out: str) -> bool:
    """Whether a benchmark's output starts with the host-class line (after any preamble)."""
    return any(line.startswith("host class ") for line in out.splitlines()[:3])


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_grpo_step_time_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("grpo_step_time")
    args = ["--steps", "1", "--dataset", "synthetic", "--threads", "1", *TINY_SHAPE]
    args += ["--set", "max_completion_length=8", "--set", "per_device_train_batch_size=8"]
    args += ["--set", "gradient_accumulation_steps=1"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "step 1:" in out and "peak resident memory" in out
    assert _names_its_host(out)


def test_grpo_vs_trl_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("trl")
    bench = _load("grpo_vs_trl")
    args = ["--steps", "2", "--rounds", "1", "--prompt-source", "synthetic", "--threads", "1"]
    args += ["--prompts", "16", "--max-completion-length", "8", *TINY_SHAPE]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "ratio TRL/shoestring" in out and "median split" in out
    assert "peak RSS (max over runs) shoestring" in out
    best = "bf16" if auto_dtype() == torch.bfloat16 else "fp32"
    assert _names_its_host(out) and f"{best}, CPU" in out  # both trainers at the host's dtype


def test_benchmark_model_keeps_the_requested_vocab(tmp_path: Path) -> None:
    """The head's width is the real model's even when the benchmark's tokenizer is smaller
    (it once silently became the tokenizer's 5,835 instead of Qwen2.5's 151,936)."""
    import argparse
    import json

    bench = _load("grpo_vs_trl")
    rows = bench.load_questions("synthetic", 8)
    tok = bench.build_tokenizer(tmp_path / "tok", 300, rows)
    assert len(tok) <= 300
    args = argparse.Namespace(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, vocab=1000)
    bench.build_model(tmp_path / "model", tok, args)
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["vocab_size"] == 1000
    assert bench.model_vocab_size(10, tok) == len(tok)  # never below the tokenizer's ids


def test_decode_step_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("decode_step")
    assert bench.main(["--threads", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("sampling 16 x") == 3 and out.count("decode step,") == 2
    diffs = [float(x) for x in re.findall(r"max \|logit diff\| ([0-9.e+-]+)\)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-4  # lean step and forward agree (fp32)
    assert _names_its_host(out)


def test_decode_profile_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("decode_profile")
    args = ["--threads", "1", "--rounds", "1", "--profile-steps", "1", "--read-mib", "8"]
    assert bench.main(args + TINY_SHAPE) == 0
    out = capsys.readouterr().out
    assert "decode step, 16 rows: engine (lean)" in out and "host: memory read" in out
    assert "weight matmuls" in out and _names_its_host(out)
    # the host class's dtype (auto): bf16 weights are packed wherever oneDNN packs bf16; tiny
    # fp32 weights sit in the caches and are not
    packs = auto_dtype() == torch.bfloat16 and packed_linear.packing_available()
    assert ("prepacked weights: engine step" in out) == packs


@pytest.mark.skipif(
    not packed_linear.packing_available(torch.float32), reason="no fp32 oneDNN packing here"
)
def test_decode_profile_measures_packed_fp32(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packed_linear, "FP32_MIN_BYTES", 0)  # tiny weights packed as big ones
    bench = _load("decode_profile")
    args = ["--threads", "1", "--rounds", "1", "--profile-steps", "1", "--read-mib", "8"]
    assert bench.main([*args, "--dtype", "fp32", *TINY_SHAPE]) == 0
    out = capsys.readouterr().out
    assert "fp32 weights" in out and "engine step: weights prepacked" in out
    assert "prepacked weights: engine step" in out
    # weights that are bf16 values, one row: the AVX2 kernel's copies are bf16, timed against
    # fp32 ones
    assert bench.main([*args, "--dtype", "fp32", "--bf16-values", "--rows", "1", *TINY_SHAPE]) == 0
    out = capsys.readouterr().out
    assert "every value a bf16 value" in out
    halves = packed_linear.fp32_kernel() == "avx2" and packed_linear.bf16_storage_available()
    assert ("bf16 copies of the bf16-valued weights: engine step" in out) == halves


def test_refill_threshold_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from shoestring.engine import decode

    before = decode.REFILL_MIN_FRACTION
    bench = _load("refill_threshold")
    args = ["--prompts", "6", "--batch", "3", "--rounds", "2", "--threads", "1"]
    args += ["--dtype", "fp32", "--min-answer", "5", "--max-answer", "20", "--rows", "2,1"]
    assert bench.main(args + TINY_SHAPE) == 0
    out = capsys.readouterr().out
    assert out.count("refill at 2 free rows:") == 2 and "median: refill at 2" in out
    assert before == decode.REFILL_MIN_FRACTION  # the engine's threshold is put back
    assert _names_its_host(out)


def test_generate_vs_hf_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Both engines follow the per-prompt length rule, and in fp32 they agree token for token
    (continuous batching included)."""
    bench = _load("generate_vs_hf")
    args = ["--rounds", "1", "--threads", "1", "--dtype", "fp32", "--batch", "3"]
    args += ["--variable-prompts", "7", "--fixed-prompts", "3", "--fixed-tokens", "5"]
    args += ["--min-answer", "5", "--max-answer", "30", "--split"]
    args += ["--variant", "lean_prefill=false,refill=false"]
    assert bench.main(args + TINY_SHAPE) == 0
    out = capsys.readouterr().out
    assert "[variable] 7 prompts" in out and "[fixed] 3 prompts" in out
    assert _names_its_host(out)
    # the split run times each engine's parts; a fixed-length run wastes no rows on either side
    splits = [line for line in out.splitlines() if line.strip().startswith("split ")]
    assert len(splits) == 6 and all("decode step" in line for line in splits)
    assert all("100% of the rows computed" in line for line in splits[3:])
    # the variant ran in every round and gave the default's answers (fp32, same kernels)
    assert out.count("shoestring[lean_prefill=false,refill=false]:") == 2
    assert "answers identical to the default 7/7" in out
    assert bench.engine_options("lean_prefill=false,batch_size=4") == {
        "lean_prefill": False,
        "batch_size": 4,
    }
    with pytest.raises(TypeError):
        bench.engine_options("no_such_option=1")
    from shoestring.engine import lean_decode

    assert lean_decode.LeanDecoder.step.__name__ == "step"  # the wrappers were taken off
    assert "identical answers 7/7" in out and "identical answers 3/3" in out
    assert bench.answer_lengths(5, 0) == bench.answer_lengths(5, 0)  # a fixed draw
    # step counts by hand: A(10) B(2) | C(10) D(2) at 2 rows. Static: 9 + 9 steps. Refilled:
    # B ends at step 1 and C takes its row; A ends at step 9 and D its row; C ends at step 10.
    assert bench.decode_steps([10, 2, 10, 2], 2, None) == 18
    assert bench.decode_steps([10, 2, 10, 2], 2, 1) == 10
    assert "decode steps: HF static batches" in out
    assert all(50 <= n <= 300 for n in bench.answer_lengths(200, 1))


def test_linear_kernels_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Every kernel is checked against float64 within fp32 rounding before it is timed."""
    bench = _load("linear_kernels")
    args = ["--rows", "2", "--shapes", "qkv", "o", "--seconds", "0.01", "--threads", "1"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert _names_its_host(out)
    assert "oneDNN packed" in out and "x F.linear" in out
    assert bench.main([*args, "--bf16-values"]) == 0  # checked within fp32 rounding as well
    out = capsys.readouterr().out
    assert "every value a bf16 value" in out
    assert ("shoestring AVX2, bf16 copy" in out) == packed_linear.bf16_storage_available()


def test_cpu_peers_prepare_run_and_compare(tmp_path: Path, capsys) -> None:
    """prepare writes a tiny model, its GGUF files and the workloads; compare keeps shoestring
    and HF loaded in their own processes and lets them take turns on a fixed workload and the
    prefill alone for two rounds, and they agree token for token in fp32."""
    pytest.importorskip("gguf")
    bench = _load("cpu_peers")
    d = tmp_path / "peers"
    args = ["prepare", "--dir", str(d), "--variable-prompts", "4", "--fixed-prompts", "3"]
    args += ["--b1-prompts", "1", "--fixed-tokens", "4", "--min-answer", "3"]
    assert bench.main(args + ["--max-answer", "6", "--bf16-values", *TINY_SHAPE]) == 0
    assert all((d / f"model-{t}.gguf").is_file() for t in ("f32", "f16", "bf16"))
    meta = json.loads((d / "workloads.json").read_text())
    assert meta["weights"] == "random init, every value a bf16 value"
    # the bf16 file holds the model's weights exactly (they are bf16 values): read one back
    import gguf
    from safetensors.torch import load_file

    state = load_file(d / "model" / "model.safetensors")
    want = state["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(want, want.bfloat16().float())
    tensors = {t.name: t for t in gguf.GGUFReader(d / "model-bf16.gguf").tensors}
    raw = tensors["blk.0.ffn_down.weight"]
    assert raw.tensor_type == gguf.GGMLQuantizationType.BF16
    bits = torch.from_numpy(raw.data.copy().view("uint16").astype("int32")) << 16
    assert torch.equal(bits.view(torch.float32).reshape(want.shape), want)
    assert meta["shape"]["hidden"] == 32 and len(meta["workloads"]["fixed-b16"]["prompts"]) == 3
    prefill = bench.workload(meta, bench.PREFILL)
    assert prefill["lengths"] == [1, 1, 1]
    assert prefill["prompts"] == meta["workloads"]["fixed-b16"]["prompts"]
    capsys.readouterr()
    args = ["compare", "--dir", str(d), "--engines", "hf,shoestring,vllm", "--threads", "1"]
    args += ["--rounds", "2", "--pause", "0"]
    assert bench.main(args + ["--workloads", f"fixed-b16,{bench.PREFILL}"]) == 0
    out = capsys.readouterr().out
    # each engine ran each workload once a round, the order rotating
    turns = [x.split()[2:4] for x in out.splitlines() if x.strip().startswith("round ")]
    assert turns[:2] == [["hf", "fixed-b16"], ["shoestring", "fixed-b16"]]
    assert turns[4:6] == [["shoestring", "fixed-b16"], ["hf", "fixed-b16"]] and len(turns) == 8
    assert _names_its_host(out)
    assert "left out (no --vllm-python / --llama-python given): vllm" in out
    ratio = next(x for x in out.splitlines() if x.strip().startswith("fixed-b16     vs hf"))
    assert re.search(r"\d\.\d\d \[\d+\.\d\d-\d+\.\d\d\]x   identical answers 3/3$", ratio)
    assert "changed between rounds" not in out
    assert "prompt tok/s" in out and "(one token: nothing to compare)" in out
    assert "FAILED" not in out
    if importlib.util.find_spec("vllm") is None:  # an engine whose environment lacks it fails
        args = ["compare", "--dir", str(d), "--engines", "vllm,hf", "--threads", "1"]
        args += ["--rounds", "1", "--pause", "0", "--vllm-python", sys.executable]
        assert bench.main(args + ["--workloads", bench.PREFILL]) == 0
        out = capsys.readouterr().out
        assert re.search(r"vllm +FAILED \(exit 1: .*No module named 'vllm'", out)
        assert re.search(r"prefill-b16 +hf +\d", out)  # the other engine still ran
