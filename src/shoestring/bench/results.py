"""A model's entry in bench's ``summary.json``: from the session that just ran, or from what is
on disk for a model that stopped part-way.

Why apart from the session (:mod:`shoestring.bench.model_run`): the runner reports every model
of the selection, including the ones an interrupt or a failure left unfinished, and both
reports must be built the same way - from ``state.json`` and the stored records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.bench.metrics import model_metrics
from shoestring.bench.models import ModelSpec
from shoestring.bench.problems import ProblemSet
from shoestring.bench.protocol import protocol_key, recorded_protocol
from shoestring.bench.records import state_path, stored_records
from shoestring.errors import UserError
from shoestring.rundir.directory import read_json
from shoestring.scoring.protocols import Protocol

__all__ = ["ModelOutcome", "model_result", "partial_result"]


@dataclass(frozen=True)
class ModelOutcome:
    """What one model contributes to the summary: its entry in ``models`` and its records of
    the selected problems by index (the paired tests read them)."""

    result: dict[str, Any]
    records: dict[int, dict[str, Any]]


def model_result(
    spec: ModelSpec,
    state: dict[str, Any],
    protocol: Protocol,
    done: dict[int, dict[str, Any]],
    problems: ProblemSet,
) -> ModelOutcome:
    """The model's entry in summary.json (``models[i]``) and its records of the selection."""
    info = state.get("info", {})
    records = [done[p.idx] for p in problems.problems if p.idx in done]
    result = {
        "label": spec.label,
        "model": spec.arg,
        "source": spec.source,
        "path": info.get("path", spec.path),
        "model_type": info.get("model_type"),
        "n_params": info.get("n_params"),
        "device": info.get("device"),
        "dtype": info.get("dtype"),
        "protocol": protocol.name,
        "protocol_key": protocol_key(protocol, int(state["settings"]["max_new_tokens"])),
        "protocol_spec": protocol.to_dict(),
        "protocol_source": info.get("protocol_source"),
        "primary_extractor": protocol.primary,
        "settings": state.get("settings"),
        "settings_hash": state.get("settings_hash"),
        "complete": len(records) == len(problems.problems),
        "context": {
            **state.get("context", {}),
            # counted from the records, so resumed sessions add up
            "prompts_truncated": sum(1 for r in records if r.get("prompt_tokens_cut", 0) > 0),
        },
        "problems_file": str(Path("models") / spec.label / "problems.jsonl"),
        "metrics": model_metrics(records, state),
    }
    if spec.convert is not None:
        result["converted_from"] = spec.convert
    return ModelOutcome(result, {r["idx"]: r for r in records})


def partial_result(spec: ModelSpec, out: Path, problems: ProblemSet) -> ModelOutcome | None:
    """A result from whatever is on disk (for an interrupted or failed model)."""
    path = state_path(out, spec.label)
    if not path.exists():
        return None
    state = read_json(path)
    if "settings" not in state:
        return None
    try:
        done = stored_records(
            out, spec.label, problems.problems, problems.source, state.get("settings_hash")
        )
    except UserError:
        return None
    return model_result(spec, state, recorded_protocol(state), done, problems)
