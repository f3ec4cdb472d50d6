"""The curriculum's memory: ``state.json``, attempt bookkeeping and the rollback rule.

Why a module of its own: ``--resume`` must continue exactly where a killed run stopped, so
every decision (which model is best, where the next attempt starts, how many retries are
used) lives in one JSON-able dict that the runner saves before each next step. The functions
here are pure bookkeeping on that dict - no models, no torch - so the rule that accepts or
rolls back a stage can be read (and tested) on its own.

The state's keys: ``base_model``, ``base_eval``, ``validation_fingerprint``, ``protocol``,
``protocol_key``, ``best`` / ``start`` (``{model_dir, accuracy, label}``), ``best_so_far``,
``records`` (one per decided attempt), ``stage_index``, ``attempt``, ``rollbacks``,
``stopped_at`` and ``pending_seconds`` (time of an attempt interrupted before its decision).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.rl.progressive_config import ProgressiveConfig
from shoestring.rundir.directory import read_json
from shoestring.util.stats import mcnemar_exact

if TYPE_CHECKING:  # annotations only: the evaluator module loads torch, this one must not
    from shoestring.rl.curriculum_eval import EvalResult

__all__ = [
    "Decision",
    "attempt_record",
    "decide",
    "fmt_eval",
    "gate_resolution_warning",
    "has_checkpoint",
    "leftover_attempt",
    "mcnemar_p",
    "new_state",
    "pts",
    "read_run_summary",
    "stage_label",
]

# Accuracies are ratios of small integers; a tie must not count as a drop through rounding.
_EPS = 1e-9


def pts(x: float) -> float:
    """An accuracy in [0, 1] as percentage points."""
    return 100.0 * x


def new_state(base_model: str) -> dict[str, Any]:
    """The state of a curriculum that has not measured anything yet."""
    return {
        "base_model": base_model,
        "base_eval": None,
        "validation_fingerprint": None,
        "protocol": None,
        "protocol_key": None,
        "best": None,  # {"model_dir", "accuracy", "label"}
        "start": None,  # model the next attempt starts from
        "best_so_far": None,
        "records": [],
        "stage_index": 0,
        "attempt": 0,
        "rollbacks": 0,
        "stopped_at": None,
        "pending_seconds": 0.0,  # time of an attempt interrupted before it was decided
    }


def stage_label(index: int, name: str, attempt: int) -> str:
    """``NN-name`` for a first attempt, ``NN-name-retryK`` after K rollbacks (a dir name)."""
    return f"{index + 1:02d}-{name}" + (f"-retry{attempt}" if attempt else "")


def fmt_eval(e: dict[str, Any]) -> str:
    """``24.7% [20.1, 29.8] (74/300)``: accuracy, its 95% CI and the counts, for the log."""
    return (
        f"{pts(e['accuracy']):.1f}% [{pts(e['ci_low']):.1f}, {pts(e['ci_high']):.1f}] "
        f"({e['correct']}/{e['n']})"
    )


def mcnemar_p(a: list[bool] | None, b: list[bool] | None) -> float | None:
    """McNemar's exact p of two models' verdicts on the same problems (None if unpaired)."""
    if not a or not b or len(a) != len(b):
        return None
    return mcnemar_exact(a, b).p_value


def read_run_summary(run_dir: Path) -> dict[str, Any]:
    """A stage's GRPO summary.json, or {} when the run never wrote one."""
    try:
        return read_json(run_dir / "summary.json")
    except (OSError, json.JSONDecodeError):
        return {}


def has_checkpoint(run_dir: Path) -> bool:
    """True when a stage's GRPO run saved a checkpoint it can resume from."""
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(ck.iterdir())


def leftover_attempt(stage_dir: Path) -> tuple[Path | None, Path | None]:
    """What a killed run left of an attempt: ``(run_dir, None)`` when it finished training
    (only its validation is missing), ``(None, stage_dir)`` when its GRPO run can resume from
    a checkpoint, ``(None, None)`` otherwise - a directory that saved nothing is removed, so
    the attempt starts again."""
    if not stage_dir.exists():
        return None, None
    summary = read_run_summary(stage_dir)
    if summary.get("status") == "finished" and (stage_dir / "model").is_dir():
        return stage_dir, None
    if has_checkpoint(stage_dir):
        return None, stage_dir
    shutil.rmtree(stage_dir)
    return None, None


def min_significant_problems(significance: float) -> int:
    """The fewest problems a model must lose (and win none) for McNemar's exact two-sided
    test to reach p < ``significance``: p = 2 * 0.5**k, so k > log2(2 / significance)."""
    if significance >= 1.0:
        return 1
    if significance <= 0.0:
        return math.inf  # type: ignore[return-value] - never significant
    return math.floor(math.log2(2.0 / significance)) + 1


def gate_resolution_warning(cfg: ProgressiveConfig) -> str | None:
    """Why the gate cannot tell a drop of ``threshold`` points from noise at ``validation.n``,
    or None when it can.

    One problem is 100/n points; a drop is significant only when at least
    :func:`min_significant_problems` problems are lost. At n=30 that is 6 problems, 20
    points: a 2-point threshold would be decided by one problem (McNemar p=1) if the drop
    alone counted.
    """
    n, threshold = cfg.validation.n, cfg.threshold
    one = 100.0 / n
    if cfg.significance >= 1.0:
        if one <= threshold + _EPS:
            return None
        return (
            f"validation.n={n} cannot resolve threshold={threshold:g} points: one problem is "
            f"{one:.1f} points, so with significance=1 a single problem decides a rollback "
            f"(McNemar p=1); use validation.n >= {math.ceil(100.0 / max(threshold, 1e-9))}"
        )
    k = min_significant_problems(cfg.significance)
    if k * one <= threshold + _EPS:
        return None
    need = math.ceil(100.0 * k / max(threshold, 1e-9))
    return (
        f"validation.n={n} cannot resolve threshold={threshold:g} points: one problem is "
        f"{one:.1f} points, and a drop is significant (McNemar p < {cfg.significance:g}) only "
        f"when at least {k} problems are lost ({k * one:.1f} points); a stage is rolled back "
        f"only on such a drop. For a {threshold:g}-point gate use validation.n >= {need}"
    )


@dataclass(frozen=True)
class Decision:
    """What the rollback rule decided for one validated attempt."""

    status: str  # accepted | rolled_back | stopped
    drop: float  # points below the best so far before the attempt (negative = better)
    retry: bool  # rolled back and another attempt follows
    # why the rule decided so, when the drop alone does not say it (e.g. not significant)
    reason: str = ""

    @property
    def rolled_back(self) -> bool:
        return self.status != "accepted"


def decide(
    state: dict[str, Any],
    cfg: ProgressiveConfig,
    label: str,
    model_dir: Path,
    res: EvalResult,
    attempt: int,
    p_vs_best: float | None = None,
) -> Decision:
    """Apply the rollback rule to a validated attempt and update ``state`` for the next step.

    An attempt more than ``cfg.threshold`` points below the best so far is rolled back when
    the drop is also significant (``p_vs_best``, McNemar's exact test against the best model
    on the same problems, below ``cfg.significance``): the next attempt (``retry``) starts
    from the same model, or the curriculum stops. A drop past the threshold that is not
    significant is accepted and says so in ``reason`` (it does not become the best); without
    paired verdicts (``p_vs_best`` None) the drop alone decides and ``reason`` says that.
    Otherwise the attempt is accepted; it becomes the best when it ties or beats it (ties go
    to the later stage) and the next stage starts from the best or from it (``start_from``).
    """
    st = state
    drop = pts(st["best_so_far"] - res.accuracy)
    reason = ""
    if drop > cfg.threshold + _EPS:
        p_text = "-" if p_vs_best is None else f"{p_vs_best:.3g}"
        significant = cfg.significance >= 1.0 or p_vs_best is None
        significant = significant or (p_vs_best is not None and p_vs_best < cfg.significance)
        if p_vs_best is None and cfg.significance < 1.0:
            reason = "no per-problem verdicts to test the drop; the drop alone decided"
        if significant:
            st["rollbacks"] += 1
            retry = cfg.on_regression == "retry" and attempt < cfg.max_retries
            if retry:
                st["attempt"] = attempt + 1
            else:
                st["stopped_at"] = label
            return Decision("rolled_back" if retry else "stopped", drop, retry, reason)
        reason = (
            f"{drop:.1f} points below the best is past threshold {cfg.threshold:g} but not "
            f"significant (McNemar p={p_text} >= {cfg.significance:g}, n={res.n}): kept as "
            "noise, not rolled back (set significance=1 to roll back on the drop alone)"
        )
    here = {"model_dir": str(model_dir), "accuracy": res.accuracy, "label": label}
    if res.accuracy >= st["best"]["accuracy"] - _EPS:
        st["best"] = dict(here)
    st["best_so_far"] = max(st["best_so_far"], res.accuracy)
    st["start"] = dict(st["best"]) if cfg.start_from == "best" else here
    st["stage_index"] += 1
    st["attempt"] = 0
    return Decision("accepted", drop, False, reason)


def attempt_record(
    state: dict[str, Any],
    *,
    stage: dict[str, Any],
    stage_number: int,
    label: str,
    attempt: int,
    gcfg: Any,
    status: str,
    res: EvalResult | None,
    start: dict[str, Any],
    seconds: float,
    run_dir: Path,
    p_vs_start: float | None = None,
    error: str | None = None,
    drop: float | None = None,
    p_vs_best: float | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """One entry of ``summary.json["stages"]``: the attempt, its GRPO run and its verdict."""
    summary = read_run_summary(run_dir)
    return {
        "name": stage["name"],
        "label": label,
        "stage": stage_number,
        "status": status,
        "rolled_back": status in ("rolled_back", "stopped"),
        "attempt": attempt,
        "learning_rate": gcfg.learning_rate,
        "dataset": gcfg.dataset,
        "dataset_slice": gcfg.dataset_slice,
        "retention_penalty": gcfg.retention_penalty,
        "eval": res.to_dict() if res is not None else None,
        "best_so_far": state["best_so_far"],
        "drop_points": drop,
        "started_from": start["label"],
        "p_vs_start": p_vs_start,
        "p_vs_best": p_vs_best,
        "gate_reason": reason or None,
        "seconds": round(seconds, 3),
        "train_seconds": summary.get("train_seconds"),
        "grpo_steps": summary.get("steps"),
        "final_reward_mean": summary.get("final_reward_mean"),
        "run_dir": str(run_dir),
        "error": error,
    }
