"""One trial: its configuration trained, retried at half micro-batch on OOM, as one result row.

An out-of-memory attempt is retried with half the micro-batch and twice the accumulation (the
same tokens per step) and twice ``eval_batches`` (the same validation sequences), so a retried
trial stays comparable with the rest. The row (:func:`execute_trial`) is what the study stores
as a trial user attribute and what results.json/results.csv are built from.
"""

from __future__ import annotations

import math
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shoestring.config import to_dict
from shoestring.run_config import RunConfig
from shoestring.rundir.directory import read_json, unique_run_dir
from shoestring.search.attempt import run_attempt, run_isolated
from shoestring.search.spec import StudySpec, trial_config

__all__ = ["WorkerOptions", "execute_trial", "say"]


@dataclass
class WorkerOptions:
    """How this worker runs trials (not part of the study: may differ between workers)."""

    trials_dir: Path
    threads: int = 0  # 0 = keep the config's train.threads
    heartbeat: float = 30.0
    isolate: bool = True
    worker: str = "w0"
    echo: bool = True
    progress: bool = True
    max_trials: int = 0  # stop after this many trials (0 = until the study is done)


def say(text: str) -> None:
    """A worker line that does not tear the progress bar."""
    tqdm.write(text, file=sys.stderr)


def _halve(cfg: RunConfig) -> bool:
    """Half the micro-batch, double accumulation: same tokens per step, same validation set.

    The fixed validation set is the first ``eval_batches`` batches of ``batch_size`` windows, so
    doubling ``eval_batches`` keeps exactly the same sequences when the batch halves evenly.
    """
    t = cfg.train
    if t.batch_size <= 1:
        return False
    even = t.batch_size % 2 == 0
    t.batch_size //= 2
    t.grad_accum *= 2
    if even:
        t.eval_batches *= 2
    return True


def execute_trial(
    spec: StudySpec,
    params: dict[str, Any],
    number: int,
    opts: WorkerOptions,
    trial_id: int | None = None,
    storage_url: str | None = None,
    study_name: str | None = None,
) -> dict[str, Any]:
    """Train a trial, retrying out-of-memory failures at half micro-batch; return its row."""
    cfg = trial_config(spec, params)
    if opts.threads and not any(o.startswith("train.threads=") for o in spec.overrides):
        cfg.train.threads = opts.threads
    first = to_dict(cfg)["train"]
    base = f"t{number:04d}-{params['size']}-{params['variant']}-s{params['seed']}"
    attempts: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    wall = 0.0
    for attempt in range(spec.oom_retries + 1):
        run = unique_run_dir(opts.trials_dir, base + (f"-oom{attempt}" if attempt else ""))
        job = {
            "config": to_dict(cfg),
            "run_dir": str(run),
            "prune": spec.prune if spec.prune != "none" else None,
            "trial_id": trial_id,
            "storage_url": storage_url,
            "study_name": study_name,
            "heartbeat": opts.heartbeat,
        }
        result = run_isolated(job) if opts.isolate else run_attempt(job)
        wall += result.get("wall_seconds") or 0.0
        attempts.append(
            {
                "run_dir": str(run),
                "micro_batch": cfg.train.batch_size,
                "grad_accum": cfg.train.grad_accum,
                "eval_batches": cfg.train.eval_batches,
                "status": result["status"],
                "error": result["error"],
            }
        )
        if result["status"] == "interrupted":
            raise KeyboardInterrupt
        if not (result["status"] == "failed" and result.get("oom")):
            break
        if attempt == spec.oom_retries or not _halve(cfg):
            break
        if opts.echo:
            say(
                f"[{opts.worker}] trial {number}: out of memory, retrying with micro-batch "
                f"{cfg.train.batch_size} x {cfg.train.grad_accum} accumulation"
            )
    return _row(spec, params, number, cfg, first, result, attempts, wall)


def _row(
    spec: StudySpec,
    params: dict[str, Any],
    number: int,
    cfg: RunConfig,
    first: dict[str, Any],
    result: dict[str, Any],
    attempts: list[dict[str, Any]],
    wall: float,
) -> dict[str, Any]:
    run = Path(result["run_dir"])
    summary: dict[str, Any] = {}
    if (run / "summary.json").is_file():
        try:
            summary = read_json(run / "summary.json")
        except (OSError, ValueError):
            summary = {}
    val = summary.get("final_val_loss") if result["status"] in ("finished", "pruned") else None
    system = summary.get("system") or {}
    peak = system.get("cuda_peak_allocated_mb") or system.get("peak_rss_mb")
    extra = {k: v for k, v in params.items() if k not in ("size", "variant", "seed")}
    return {
        "trial": number,
        "size": params["size"],
        "variant": params["variant"],
        "seed": int(params["seed"]),
        "params": summary.get("n_params"),
        "val_loss": val,
        "val_accuracy": result.get("val_accuracy"),
        "perplexity": math.exp(min(val, 50)) if val is not None else None,
        "tokens_per_second": summary.get("tokens_per_second"),
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": system.get("peak_rss_mb"),
        "peak_memory_mb": peak,
        "status": result["status"],
        "error": result["error"],
        "run_dir": str(run),
        "host": socket.gethostname(),
        "train_seed": cfg.train.seed,
        "steps": summary.get("steps"),
        "micro_batch": summary.get("micro_batch", cfg.train.batch_size),
        "grad_accum": summary.get("grad_accum", cfg.train.grad_accum),
        "batch_size_asked": first["batch_size"],
        "eval_batches": cfg.train.eval_batches,
        "val_sequences": (summary.get("data") or {}).get("val_sequences"),
        "oom_retries": len(attempts) - 1,
        "oom_backoffs_in_run": len(summary.get("oom_events") or []),
        "attempts": attempts,
        **({"extra_params": extra} if extra else {}),
    }
