"""The quickstart runs end to end (shortened) and leaves a complete run directory."""

from __future__ import annotations

import json
from pathlib import Path


def test_quickstart_end_to_end_short(tmp_path: Path) -> None:
    from shoestring.cli_options import layered_config
    from shoestring.quickstart import QuickstartConfig, run

    overrides = ["steps=30", "problems=400", "vocab_size=300", "device=cpu", "eval_problems=4"]
    overrides += [f"output.dir={tmp_path}", "output.quiet=true"]
    run_dir = run(layered_config(QuickstartConfig(), overrides=overrides))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 30
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    ev = json.loads((run_dir / "quickstart_eval.json").read_text())
    assert ev["n"] == 4 and "n=4" in ev["accuracy"] and len(ev["problems"]) == 4
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert run_dir.parent == tmp_path / "runs" and (run_dir / "report.md").is_file()
    # the prepared data is a run directory of its own, with its report
    assert json.loads((tmp_path / "data" / "summary.json").read_text())["kind"] == "prepare"
    assert "## Prepared data" in (tmp_path / "data" / "report.md").read_text()
