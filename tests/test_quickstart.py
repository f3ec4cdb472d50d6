"""The quickstart runs end to end (shortened) and leaves a complete run directory."""

from __future__ import annotations

import json
from pathlib import Path


def test_quickstart_end_to_end_short(tmp_path: Path) -> None:
    from shoestring.quickstart import run

    run_dir = run(
        tmp_path, steps=30, n_problems=400, vocab_size=300, device="cpu", echo=False, n_eval=4
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 30
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    ev = json.loads((run_dir / "quickstart_eval.json").read_text())
    assert ev["n"] == 4 and "n=4" in ev["accuracy"] and len(ev["problems"]) == 4
    assert (run_dir / "model" / "model.safetensors").is_file()
