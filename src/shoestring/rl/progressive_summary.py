"""What a progressive run's ``summary.json`` says at its end, from its config and ``state.json``.

Why apart from the runner: the summary is a pure function of the curriculum's settings and its
decided state - the base and stage accuracies, the best model, the rollbacks, the data files each
part read, the validation set's fingerprint - and the report (``compare``) reads exactly these
fields, so they are kept in one place that neither trains nor decides anything.
"""

from __future__ import annotations

from typing import Any

import torch

from shoestring.errors import UserError
from shoestring.rl.data import data_source
from shoestring.rl.progressive_config import ProgressiveConfig, stage_grpo_config
from shoestring.runtime import resolve_device

__all__ = ["data_sources", "summary_fields"]


def data_sources(cfg: ProgressiveConfig) -> dict[str, Any]:
    """The files the validation set and each stage read (``rl.data.data_source``); a dataset
    that cannot be found records why instead of failing the summary."""

    def source(spec: str, split: str) -> dict[str, Any]:
        try:
            return data_source(spec, split)
        except UserError as exc:
            return {"dataset": spec, "split": split, "path": None, "error": str(exc)}

    stages = {}
    for stage in cfg.stages:
        dataset = stage_grpo_config(cfg, stage, cfg.model).dataset
        stages[stage["name"]] = source(dataset, "train")
    v = cfg.validation
    return {"validation": source(v.dataset, v.split), "stages": stages}


def summary_fields(cfg: ProgressiveConfig, st: dict[str, Any], plot: str | None) -> dict[str, Any]:
    """What summary.json adds to the lifecycle's fields at the end of the run (``st``: the
    run's state, ``plot``: the figure's path, if drawn)."""
    v = cfg.validation
    best = st.get("best") or {}
    return {
        "base_eval": st.get("base_eval"),
        "stages": st["records"],
        "best_model_dir": best.get("model_dir"),
        "best_label": best.get("label"),
        "best_accuracy": best.get("accuracy"),
        "rollbacks": st["rollbacks"],
        "stopped_at": st.get("stopped_at"),
        "stages_completed": st["stage_index"],
        "stages_total": len(cfg.stages),
        "validation": {
            "dataset": v.dataset,
            "split": v.split,
            "n": v.n,
            "protocol": v.protocol,
            "fingerprint": st.get("validation_fingerprint"),
        },
        "data": data_sources(cfg),
        "protocol": st.get("protocol"),
        "protocol_key": st.get("protocol_key"),
        "threshold_points": cfg.threshold,
        "significance": cfg.significance,
        "warnings": list(st.get("warnings", [])),
        "seconds_total": round(sum(r["seconds"] for r in st["records"]), 3)
        + (st["base_eval"] or {}).get("seconds", 0.0),
        "runtime": {
            "device": str(resolve_device(v.device)),
            "dtype": v.dtype,
            "threads": torch.get_num_threads(),
        },
        "plot": plot,
    }
