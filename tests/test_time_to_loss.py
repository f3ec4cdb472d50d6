"""benchmarks/time_to_loss.py runs end to end on a toy shape (a user-facing command; this keeps
it from rotting). Timings are printed and stored, never asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


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


def test_time_to_loss_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shoestring.data import text

    data = tmp_path / "data"
    text.run(None, data, vocab_size=300, synthetic=300, quiet=True)
    bench = _load("time_to_loss")
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--presets", "tiny"]
    args += ["--steps", "tiny=10", "--seeds", "0", "--threads", "1", "--eval-every", "5"]
    args += ["--eval-batches", "1"]
    for o in ("model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64",
              "train.seq_len=16", "train.batch_size=4", "train.warmup_steps=2"):  # fmt: skip
        args += ["--set", o]
    for o in ("hybrid.warmup_steps=2", "hybrid.min_full_steps=3", "hybrid.history=2",
              "hybrid.confidence_threshold=0", "hybrid.max_predict_steps=3"):  # fmt: skip
        args += ["--hybrid", o]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "lr sweep" in out and "speedup_vs_adamw" in out
    doc = json.loads((tmp_path / "out" / "time_to_loss.json").read_text())
    res = doc["presets"]["tiny"]
    assert {r["arm"] for r in res["table"]} == {"adamw", "muon", "hybrid_adamw", "hybrid_muon"}
    assert set(res["sweep"]["muon"]["final_val_loss"]) == {"0.001", "0.002", "0.004"}
    row = res["per_seed"][0]
    assert row["adamw"]["speedup_vs_adamw"] == 1.0  # the target is AdamW's own final loss
    assert row["hybrid_muon"]["steps"] == 12 and "verify" in row["hybrid_muon"]
