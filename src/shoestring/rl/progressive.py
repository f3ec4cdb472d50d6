"""``shoestring progressive``: a GRPO curriculum that cannot silently forget.

Why this exists: the study this project grew from trained a three-stage curriculum with no
validation between stages; accuracy fell and nobody noticed until the end. Here every stage is
measured on one fixed validation set (greedy, accuracy with a 95% Wilson interval), before the
first stage and after each one, and a stage whose accuracy falls more than ``threshold`` points
below the best so far is rolled back: the next attempt starts again from the best model, with a
lower learning rate (``on_regression: retry``) or the curriculum stops there
(``on_regression: stop``). Nothing is deleted; a rolled-back stage keeps its run directory.

The stages file (YAML or JSON)::

    model: runs/quickstart            # starting model: run dir or HF model dir
    grpo_preset: cpu                  # GRPO preset shared by all stages (optional)
    grpo: {num_generations: 4}        # GRPOConfig fields shared by all stages
    validation: {dataset: "synthetic:2", n: 200}
    threshold: 2.0                    # points of accuracy
    on_regression: retry              # or stop
    retry_lr_factor: 0.5
    max_retries: 1
    retention_penalty: 0.0            # lambda * ||theta - theta_base||^2 (theta_base = model)
    stages:
      - {name: level1, dataset: "synthetic:1", max_steps: 30}
      - {name: level2, dataset: "synthetic:2", max_steps: 30, learning_rate: 5e-6}

Every stage key other than ``name`` is a :class:`~shoestring.rl.config.GRPOConfig` field.

The run directory (kind ``progressive``) holds ``state.json`` (what resume reads),
``evals/<label>.json`` (per-problem correctness of every evaluated model), each attempt's GRPO
run under ``stages/<NN-name[-retryK]>/``, ``summary.md`` (the table) and ``progressive.png``.
The trainer and the evaluator are injectable callables, so tests can make a stage fail on
purpose; the defaults are the real ``train_grpo`` and :class:`ValidationEvaluator`.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.cli_options import add_set_option
from shoestring.config import (
    ConfigError,
    apply_dict,
    apply_override,
    opt,
    parse_override,
    read_config_file,
    to_dict,
    validate,
)
from shoestring.errors import UserError
from shoestring.rl.curriculum_eval import (
    EvalResult,
    Evaluator,
    ValidationConfig,
    ValidationEvaluator,
)
from shoestring.runs.rundir import RunDir, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "ProgressiveConfig",
    "StageTrainer",
    "add_cli",
    "load_stages_file",
    "render_table",
    "run_progressive",
    "stage_grpo_config",
]

#: ``trainer(cfg, out, name, resume_dir) -> run_dir``; the run dir must contain ``model/``.
StageTrainer = Callable[[Any, Path, str, Path | None], Path]

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Fields the runner sets itself: a stage that set them would break the curriculum's contract.
_RUNNER_FIELDS = ("model_name_or_path",)
_EPS = 1e-9


@dataclass
class ProgressiveConfig:
    """A curriculum: global settings plus a list of stages (config.json of the run)."""

    model: str = opt("", "starting model: shoestring run dir or HF model dir (required)")
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    threshold: float = opt(
        2.0, "a stage more than this many accuracy points below the best is rolled back", min=0.0
    )
    on_regression: str = opt(
        "retry",
        "after a rollback: retry the stage with a lower lr, or stop",
        choices=("retry", "stop"),
    )
    retry_lr_factor: float = opt(0.5, "learning rate multiplier per retry", min=0.0, max=1.0)
    max_retries: int = opt(1, "retries per stage before the curriculum stops", min=0)
    retention_penalty: float = opt(
        0.0, "lambda of lambda*||theta - theta_base||^2 in every stage (0 = off)", min=0.0
    )
    start_from: str = opt(
        "best",
        "model each stage starts from: best (highest validated accuracy so far, ties to the "
        "later stage) or accepted (the last accepted stage)",
        choices=("best", "accepted"),
    )
    grpo_preset: str = opt("", "GRPO preset shared by all stages ('' = GRPOConfig defaults)")
    grpo: dict[str, Any] = opt({}, "GRPOConfig fields shared by all stages")
    stages: list[dict[str, Any]] = opt([], "the stages: {name, <GRPOConfig fields>...}")

    def check(self) -> ProgressiveConfig:
        """Validate ranges, stage names and every stage's GRPO config before anything runs."""
        validate(self)
        if not self.model:
            raise ConfigError("model is required: a shoestring run dir or a HF model dir")
        if not isinstance(self.grpo, dict):
            raise ConfigError(f"grpo must be a mapping of GRPOConfig fields, got {self.grpo!r}")
        if not self.stages:
            raise ConfigError("stages is empty; give at least one {name: ..., dataset: ...}")
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, dict):
                raise ConfigError(f"stages[{i}] must be a mapping, got {stage!r}")
            name = stage.get("name")
            if not isinstance(name, str) or not _STAGE_NAME.match(name):
                raise ConfigError(
                    f"stages[{i}] needs a name of letters, digits, '_', '-' or '.' "
                    f"(it names the stage's directory), got {name!r}"
                )
            if name in seen:
                raise ConfigError(f"stage name {name!r} is used twice; names must be unique")
            seen.add(name)
            for key in _RUNNER_FIELDS:
                if key in stage or key in self.grpo:
                    raise ConfigError(
                        f"{key} is set by the curriculum (each stage starts from the best model "
                        "so far); set the starting model with the top-level 'model' key"
                    )
        return self


def load_stages_file(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> ProgressiveConfig:
    """Read a stages file (a path, or the name of a bundled example) and apply ``key=value``
    overrides (``grpo.KEY=V`` sets a shared GRPO field)."""
    data = read_config_file(_find_stages_file(path))
    try:
        cfg = apply_dict(ProgressiveConfig(), data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    apply_cli_overrides(cfg, overrides)
    return cfg.check()


def _find_stages_file(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    from importlib import resources

    root = resources.files("shoestring") / "presets" / "progressive"
    for suffix in ("", ".yaml", ".yml", ".json"):
        cand = root / f"{path}{suffix}"
        if cand.is_file():
            return Path(str(cand))
    names = sorted(x.name for x in root.iterdir()) if root.is_dir() else []
    raise ConfigError(
        f"stages file {path} does not exist (bundled examples: {', '.join(names) or 'none'})"
    )


def apply_cli_overrides(cfg: ProgressiveConfig, overrides: list[str] | tuple[str, ...]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("grpo."):
            cfg.grpo = {**cfg.grpo, key[5:]: value}
        else:
            apply_override(cfg, key, value)


# ----------------------------------------------------------------------------- GRPO configs


def stage_grpo_config(
    cfg: ProgressiveConfig,
    stage: dict[str, Any],
    start_model: str | Path,
    lr_factor: float = 1.0,
    retention_reference: str | None = None,
) -> Any:
    """The GRPOConfig of one stage attempt: preset < shared ``grpo`` < stage fields, then the
    runner's own fields (start model, retry learning rate, retention reference)."""
    from shoestring.rl.config import grpo_config

    fields: dict[str, Any] = {"eval_problems": 0}  # the curriculum validates; no second eval
    fields.update(cfg.grpo)
    fields.update({k: v for k, v in stage.items() if k != "name"})
    if "retention_penalty" not in stage and cfg.retention_penalty:
        fields["retention_penalty"] = cfg.retention_penalty
    if (
        fields.get("retention_penalty")
        and retention_reference
        and not fields.get("retention_reference")
    ):
        fields["retention_reference"] = retention_reference
    fields["model_name_or_path"] = str(start_model)
    overrides = [f"{k}={json.dumps(v)}" for k, v in fields.items()]
    try:
        gcfg = grpo_config(cfg.grpo_preset or None, overrides)
    except ConfigError as exc:
        raise ConfigError(f"stage {stage.get('name')!r}: {exc}") from None
    if lr_factor != 1.0:
        gcfg.learning_rate = gcfg.learning_rate * lr_factor
    return gcfg


def _default_trainer(echo: bool, progress: bool) -> StageTrainer:
    def train(cfg: Any, out: Path, name: str, resume_dir: Path | None) -> Path:
        from shoestring.rl.grpo import train_grpo

        return Path(
            train_grpo(cfg, out=out, name=name, resume_dir=resume_dir, echo=echo, progress=progress)
        )

    return train


# ----------------------------------------------------------------------------- the runner


def _pts(x: float) -> float:
    return 100.0 * x


def _mcnemar_p(a: list[bool] | None, b: list[bool] | None) -> float | None:
    if not a or not b or len(a) != len(b):
        return None
    from shoestring.eval.stats import mcnemar_exact

    return mcnemar_exact(a, b).p_value


class ProgressiveRun:
    """One curriculum run; every decision is written to ``state.json`` before the next step."""

    def __init__(
        self,
        cfg: ProgressiveConfig,
        path: Path,
        *,
        resume: bool,
        trainer: StageTrainer,
        evaluator: Evaluator | None,
        echo: bool,
        progress: bool,
    ) -> None:
        from shoestring.models.loading import resolve_model_path

        self.cfg = cfg
        self.path = path
        self.resume = resume
        self.trainer = trainer
        self.echo = echo
        self.progress = progress
        self.rd = RunDir(path, "progressive", echo=echo)
        self.base_location, _ = resolve_model_path(cfg.model)
        self._evaluator = evaluator
        self.state: dict[str, Any] = self._load_state()

    # -- state
    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def _load_state(self) -> dict[str, Any]:
        if self.resume and self.state_path.exists():
            return read_json(self.state_path)
        return {
            "base_model": self.base_location,
            "base_eval": None,
            "validation_fingerprint": None,
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

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, self.state)

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            # prompts exactly as the stages' GRPO runs build them (shared settings)
            shared = stage_grpo_config(self.cfg, {"name": "validation"}, self.cfg.model)
            ev = ValidationEvaluator(
                self.cfg.validation,
                records_dir=self.path / "evals",
                progress=self.progress,
                prompt_format=shared.prompt_format,
                stop_strings=shared.stop_strings,
            )
            known = self.state.get("validation_fingerprint")
            if known and known != ev.fingerprint:
                raise UserError(
                    f"the validation set changed since this run started (fingerprint "
                    f"{ev.fingerprint} != {known}); resume with the original validation settings "
                    "or start a new run"
                )
            self.state["validation_fingerprint"] = ev.fingerprint
            self._evaluator = ev
        return self._evaluator

    def _evaluate(self, model_dir: Path | str, label: str) -> EvalResult:
        t0 = time.perf_counter()
        res = self.evaluator(Path(model_dir), label)
        if not res.seconds:
            res.seconds = time.perf_counter() - t0
        rec = {**res.to_dict(), "label": label, "model_dir": str(model_dir)}
        if res.per_problem is not None:
            rec["per_problem"] = res.per_problem
        atomic_write_json(self.path / "evals" / f"{label}.json", rec)
        return res

    def _per_problem(self, label: str | None) -> list[bool] | None:
        if label is None:
            return None
        p = self.path / "evals" / f"{label}.json"
        return read_json(p).get("per_problem") if p.exists() else None

    # -- the loop
    def run(self) -> Path:
        from shoestring.runs.monitor import SystemMonitor

        cfg = self.cfg
        if self.resume:
            self.rd.write_config(to_dict(cfg))
            self.rd.update_summary(status="running", finished_at=None, error=None)
            self.rd.log(f"resuming progressive run {self.path}")
            st = self.state
            if (
                st["stopped_at"]
                and cfg.on_regression == "retry"
                and st["attempt"] < cfg.max_retries
            ):
                # resumed with more retries allowed (--set max_retries=N): retry the stage
                self.rd.log(f"{st['stopped_at']} stopped the run; retrying it (max_retries raised)")
                st["stopped_at"] = None
                st["attempt"] += 1
        else:
            self.rd.start(to_dict(cfg), run_name=self.path.name, base_model=self.base_location)
            self.rd.log(
                f"progressive run: {len(cfg.stages)} stage(s) from {cfg.model}; rollback when "
                f"accuracy falls > {cfg.threshold:g} points below the best "
                f"(on_regression={cfg.on_regression}) -> {self.path}"
            )
        monitor = SystemMonitor().start()
        status, error = "finished", None
        wall0 = time.perf_counter()
        prev = signal.getsignal(signal.SIGTERM)
        if prev in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if self.state["base_eval"] is None:
                self._base_eval()
            while self.state["stage_index"] < len(cfg.stages) and not self.state["stopped_at"]:
                self._attempt()
        except KeyboardInterrupt:
            status = "interrupted"
            self.rd.log(
                "interrupted; `shoestring progressive --resume "
                f"{self.path}` continues from the last completed stage"
            )
        except BaseException as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            self.rd.log(f"failed: {error}")
            raise
        finally:
            signal.signal(signal.SIGTERM, prev)
            self._save_state()
            self._finish(status, error, monitor.stop(), time.perf_counter() - wall0)
        if status == "interrupted":
            raise KeyboardInterrupt
        return self.path

    def _base_eval(self) -> None:
        self.rd.log(f"validating the base model {self.base_location}")
        res = self._evaluate(self.base_location, "00-base")
        st = self.state
        st["base_eval"] = res.to_dict()
        st["best"] = {"model_dir": self.base_location, "accuracy": res.accuracy, "label": "00-base"}
        st["start"] = dict(st["best"])
        st["best_so_far"] = res.accuracy
        self._save_state()
        self.rd.metric({"event": "eval", "label": "00-base", **res.to_dict()})
        self.rd.log(f"base model: {_fmt_eval(res.to_dict())}")

    def _attempt(self) -> None:
        cfg, st = self.cfg, self.state
        i, attempt = st["stage_index"], st["attempt"]
        stage = cfg.stages[i]
        label = f"{i + 1:02d}-{stage['name']}" + (f"-retry{attempt}" if attempt else "")
        start = st["start"]
        gcfg = stage_grpo_config(
            cfg,
            stage,
            start["model_dir"],
            lr_factor=cfg.retry_lr_factor**attempt,
            retention_reference=self.base_location,
        )
        stages_dir = self.path / "stages"
        stage_dir = stages_dir / label
        run_dir, resume_dir = None, None
        if stage_dir.exists():
            summary = _read_summary(stage_dir)
            if summary.get("status") == "finished" and (stage_dir / "model").is_dir():
                run_dir = stage_dir  # trained before the kill; only its validation is missing
            elif _has_checkpoint(stage_dir):
                resume_dir = stage_dir
            else:
                shutil.rmtree(stage_dir)  # started but saved nothing: start it again
        self.rd.log(
            f"stage {label}: {gcfg.dataset}"
            + (f"[{gcfg.dataset_slice}]" if gcfg.dataset_slice else "")
            + f", lr {gcfg.learning_rate:.3g}, from {start['label']}"
            + (" (resuming its GRPO run)" if resume_dir else "")
        )
        t0 = time.perf_counter()
        try:
            self._train_and_decide(
                stage, label, attempt, gcfg, start, stage_dir, run_dir, resume_dir
            )
        except KeyboardInterrupt:
            # the time spent so far counts towards the attempt once it is decided after resume
            st["pending_seconds"] = st.get("pending_seconds", 0.0) + time.perf_counter() - t0
            raise

    def _train_and_decide(
        self,
        stage: dict[str, Any],
        label: str,
        attempt: int,
        gcfg: Any,
        start: dict[str, Any],
        stage_dir: Path,
        run_dir: Path | None,
        resume_dir: Path | None,
    ) -> None:
        cfg, st = self.cfg, self.state
        i = st["stage_index"]
        stages_dir = stage_dir.parent
        t0 = time.perf_counter()
        train_seconds = 0.0
        if run_dir is None:
            try:
                run_dir = Path(self.trainer(gcfg, stages_dir, label, resume_dir))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                self._record(
                    stage,
                    label,
                    attempt,
                    gcfg,
                    "failed",
                    None,
                    start,
                    time.perf_counter() - t0,
                    stage_dir,
                    error=f"{type(exc).__name__}: {exc}",
                )
                raise
            train_seconds = time.perf_counter() - t0
            gc.collect()  # the finished stage's model, optimizer and caches before validation
        model_dir = run_dir / "model"
        if not model_dir.is_dir():
            raise UserError(f"stage {label} finished without a model directory ({model_dir})")
        res = self._evaluate(model_dir, label)
        self.rd.metric({"event": "eval", "label": label, **res.to_dict()})
        seconds = train_seconds + res.seconds + st.get("pending_seconds", 0.0)
        st["pending_seconds"] = 0.0
        drop = _pts(st["best_so_far"] - res.accuracy)
        if drop > cfg.threshold + _EPS:
            st["rollbacks"] += 1
            retry = cfg.on_regression == "retry" and attempt < cfg.max_retries
            status = "rolled_back" if retry else "stopped"
            self._record(
                stage, label, attempt, gcfg, status, res, start, seconds, run_dir, drop=drop
            )
            self.rd.log(
                f"stage {label}: {_fmt_eval(res.to_dict())} is {drop:.1f} points below the best "
                f"({_pts(st['best_so_far']):.1f}%, {st['best']['label']}) > threshold "
                f"{cfg.threshold:g}: rolled back to {start['label']}"
                + (
                    f"; retrying with lr x{cfg.retry_lr_factor:g}"
                    if retry
                    else "; the curriculum stops here"
                )
            )
            if retry:
                st["attempt"] = attempt + 1
            else:
                st["stopped_at"] = label
        else:
            if res.accuracy >= st["best"]["accuracy"] - _EPS:
                st["best"] = {"model_dir": str(model_dir), "accuracy": res.accuracy, "label": label}
            st["best_so_far"] = max(st["best_so_far"], res.accuracy)
            accepted = {"model_dir": str(model_dir), "accuracy": res.accuracy, "label": label}
            st["start"] = dict(st["best"]) if cfg.start_from == "best" else accepted
            self._record(
                stage, label, attempt, gcfg, "accepted", res, start, seconds, run_dir, drop=drop
            )
            self.rd.log(
                f"stage {label}: {_fmt_eval(res.to_dict())}, accepted "
                f"(best so far {_pts(st['best_so_far']):.1f}%, {st['best']['label']})"
            )
            st["stage_index"] = i + 1
            st["attempt"] = 0
        self._save_state()

    def _record(
        self,
        stage: dict[str, Any],
        label: str,
        attempt: int,
        gcfg: Any,
        status: str,
        res: EvalResult | None,
        start: dict[str, Any],
        seconds: float,
        run_dir: Path,
        error: str | None = None,
        drop: float | None = None,
    ) -> None:
        st = self.state
        summary = _read_summary(run_dir)
        rec: dict[str, Any] = {
            "name": stage["name"],
            "label": label,
            "stage": st["stage_index"] + 1,
            "status": status,
            "rolled_back": status in ("rolled_back", "stopped"),
            "attempt": attempt,
            "learning_rate": gcfg.learning_rate,
            "dataset": gcfg.dataset,
            "dataset_slice": gcfg.dataset_slice,
            "retention_penalty": gcfg.retention_penalty,
            "eval": res.to_dict() if res is not None else None,
            "best_so_far": st["best_so_far"],
            "drop_points": drop,
            "started_from": start["label"],
            "p_vs_start": _mcnemar_p(
                self._per_problem(start["label"]), res.per_problem if res else None
            ),
            "seconds": round(seconds, 3),
            "train_seconds": summary.get("train_seconds"),
            "grpo_steps": summary.get("steps"),
            "final_reward_mean": summary.get("final_reward_mean"),
            "run_dir": str(run_dir),
            "error": error,
        }
        st["records"].append(rec)
        self.rd.metric({"event": "stage", **{k: v for k, v in rec.items() if k != "eval"}})
        self._save_state()

    # -- reporting
    def _finish(self, status: str, error: str | None, system: dict[str, Any], wall: float) -> None:
        import torch

        from shoestring.runtime import resolve_device

        st = self.state
        best = st.get("best") or {}
        table = render_table(st, self.cfg.threshold)
        atomic_write_text(self.path / "summary.md", table)
        plot = None
        if st.get("base_eval"):
            try:
                plot = str(plot_progressive(st, self.path / "progressive.png", self.cfg.threshold))
            except Exception as exc:  # noqa: BLE001 - a plot must never lose the run's summary
                self.rd.log(f"could not draw the plot: {type(exc).__name__}: {exc}")
        v = self.cfg.validation
        self.rd.finish(
            status,
            base_eval=st.get("base_eval"),
            stages=st["records"],
            best_model_dir=best.get("model_dir"),
            best_label=best.get("label"),
            best_accuracy=best.get("accuracy"),
            rollbacks=st["rollbacks"],
            stopped_at=st.get("stopped_at"),
            stages_completed=st["stage_index"],
            stages_total=len(self.cfg.stages),
            validation={
                "dataset": v.dataset,
                "split": v.split,
                "n": v.n,
                "extractor": v.extractor,
                "fingerprint": st.get("validation_fingerprint"),
            },
            threshold_points=self.cfg.threshold,
            seconds_total=round(sum(r["seconds"] for r in st["records"]), 3)
            + (st["base_eval"] or {}).get("seconds", 0.0),
            session_wall_seconds=round(wall, 3),
            runtime={
                "device": str(resolve_device(v.device)),
                "dtype": v.dtype,
                "threads": torch.get_num_threads(),
            },
            plot=plot,
            system=system,
            error=error,
        )
        if self.echo:
            print(table, file=sys.stderr)
        self.rd.log(
            f"{status}: {st['stage_index']}/{len(self.cfg.stages)} stages accepted, "
            f"{st['rollbacks']} rollback(s); best model {best.get('model_dir')}"
        )
        self.rd.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return read_json(run_dir / "summary.json")
    except (OSError, json.JSONDecodeError):
        return {}


def _has_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(ck.iterdir())


def _fmt_eval(e: dict[str, Any]) -> str:
    return (
        f"{_pts(e['accuracy']):.1f}% [{_pts(e['ci_low']):.1f}, {_pts(e['ci_high']):.1f}] "
        f"({e['correct']}/{e['n']})"
    )


def render_table(state: dict[str, Any], threshold: float) -> str:
    """The Markdown summary table: one row per evaluated model, the base model first."""
    rows = [
        "| stage | attempt | status | lr | accuracy [95% CI] (correct/n) | vs best | "
        "p vs start | seconds | run dir |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = state.get("base_eval")
    if base:
        rows.append(
            f"| base | - | measured | - | {_fmt_eval(base)} | - | - | "
            f"{base.get('seconds', 0):.0f} | {state['base_model']} |"
        )
    for r in state["records"]:
        ev = r.get("eval")
        acc = _fmt_eval(ev) if ev else "-"
        vs = f"{0.0 - r['drop_points'] + 0.0:+.1f}" if r.get("drop_points") is not None else "-"
        p = f"{r['p_vs_start']:.3g}" if r.get("p_vs_start") is not None else "-"
        status = r["status"] + (" (rolled back)" if r["status"] == "stopped" else "")
        rows.append(
            f"| {r['label']} | {r['attempt']} | {status} | {r['learning_rate']:.3g} | {acc} | "
            f"{vs} | {p} | {r['seconds']:.0f} | {r['run_dir']} |"
        )
    best = state.get("best") or {}
    notes = [
        "",
        f"Rollback rule: a stage more than {threshold:g} points below the best so far is rolled "
        f"back. Rollbacks: {state.get('rollbacks', 0)}."
        + (f" Stopped at {state['stopped_at']}." if state.get("stopped_at") else ""),
        f"Best model: {best.get('label')} ({best.get('model_dir')}).",
        "'vs best' is in accuracy points against the best so far before the stage; 'p vs start' "
        "is McNemar's exact test against the model the stage started from (same problems).",
    ]
    return "\n".join(rows + notes) + "\n"


def plot_progressive(state: dict[str, Any], out: Path, threshold: float) -> Path:
    """Accuracy per evaluated model with Wilson CIs (rolled-back attempts marked), and time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = state["base_eval"]
    recs = [r for r in state["records"] if r.get("eval")]
    labels = ["base"] + [r["label"] for r in recs]
    evals = [base] + [r["eval"] for r in recs]
    statuses = ["base"] + [r["status"] for r in recs]
    colors = {"base": "tab:gray", "accepted": "tab:green", "rolled_back": "tab:red"}
    colors["stopped"] = "tab:red"
    xs = list(range(len(labels)))
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(max(6.0, 1.2 * len(labels) + 2), 7), height_ratios=(2, 1), sharex=True
    )
    best_line = [_pts(base["accuracy"])]
    for r in recs:
        best_line.append(_pts(r["best_so_far"]))
    ax.step(xs, best_line, where="post", color="tab:blue", lw=1, label="best so far")
    ax.fill_between(
        xs,
        [b - threshold for b in best_line],
        best_line,
        step="post",
        color="tab:blue",
        alpha=0.1,
        label=f"tolerance ({threshold:g} points)",
    )
    for x, e, s in zip(xs, evals, statuses, strict=True):
        acc = _pts(e["accuracy"])
        err = [[acc - _pts(e["ci_low"])], [_pts(e["ci_high"]) - acc]]
        rolled = s in ("rolled_back", "stopped")
        ax.errorbar(
            [x],
            [acc],
            yerr=err,
            fmt="x" if rolled else "o",
            ms=9 if rolled else 6,
            color=colors.get(s, "black"),
            capsize=4,
        )
        ax.annotate(
            f"{acc:.1f}%" + (" rolled back" if rolled else ""),
            (x, acc),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    n = base["n"]
    ax.set_ylabel(f"validation accuracy, % (n={n}, 95% Wilson CI)")
    ax.set_title("progressive GRPO: accuracy per stage")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    secs = [base.get("seconds", 0.0)] + [r["seconds"] for r in recs]
    bars = ax2.bar(xs, secs, color=[colors.get(s, "black") for s in statuses], alpha=0.7)
    for b, s in zip(bars, statuses, strict=True):
        if s in ("rolled_back", "stopped"):
            b.set_hatch("//")
    ax2.set_ylabel("seconds (train + validate)")
    ax2.set_xticks(xs, labels, rotation=20, ha="right")
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------------- entry points


def run_progressive(
    cfg: ProgressiveConfig,
    out: str | Path = "runs",
    name: str | None = None,
    resume_dir: str | Path | None = None,
    *,
    trainer: StageTrainer | None = None,
    evaluator: Evaluator | None = None,
    echo: bool = True,
    progress: bool = True,
) -> Path:
    """Run (or resume) a curriculum and return its run directory.

    ``trainer`` defaults to the real ``train_grpo``; ``evaluator`` to a
    :class:`ValidationEvaluator` on ``cfg.validation``. Raises ``KeyboardInterrupt`` after
    saving its state when interrupted (Ctrl-C or SIGTERM).
    """
    from shoestring.runs.rundir import unique_run_dir

    cfg.check()
    if resume_dir is not None:
        path = Path(resume_dir)
        if not (path / "state.json").exists():
            raise UserError(f"{path} is not a progressive run directory (no state.json)")
    else:
        path = unique_run_dir(out, name or "progressive")
    # Validate every stage's GRPO config before spending minutes on the base evaluation.
    for stage in cfg.stages:
        stage_grpo_config(cfg, stage, cfg.model)
    runner = ProgressiveRun(
        cfg,
        path,
        resume=resume_dir is not None,
        trainer=trainer or _default_trainer(echo, progress),
        evaluator=evaluator,
        echo=echo,
        progress=progress,
    )
    return runner.run()


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "progressive",
        help="GRPO curriculum with validation after every stage and automatic rollback",
        description=(
            "Run GRPO stages in order, each from the best model so far. The base model and "
            "every stage are validated on one fixed set (greedy, accuracy with a 95% CI); a "
            "stage that falls more than `threshold` points below the best is rolled back and "
            "retried with a lower learning rate or the curriculum stops (on_regression)."
        ),
    )
    p.add_argument(
        "--stages", metavar="STAGES.yaml", help="stages file, or a bundled example's name"
    )
    p.add_argument("--model", help="starting model (overrides the file's 'model')")
    add_set_option(p, "threshold=3 --set validation.n=100 --set grpo.max_steps=5")
    p.add_argument("--out", default="runs", help="parent directory of the run directory")
    p.add_argument("--name", help="run directory name (default: the stages file's name)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted progressive run")
    p.add_argument("--help-config", action="store_true", help="list the settings and exit")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.help_config:
        from shoestring.config import describe

        for key, default, help_text in describe(ProgressiveConfig()):
            print(f"{key:26s} {default!s:>12}  {help_text}")
        return 0
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    if args.resume:
        cfg_path = Path(args.resume) / "config.json"
        if not cfg_path.exists():
            raise UserError(f"{args.resume} is not a progressive run directory (no config.json)")
        cfg = apply_dict(ProgressiveConfig(), read_json(cfg_path))
        apply_cli_overrides(cfg, overrides)
        cfg.check()
    elif args.stages:
        cfg = load_stages_file(args.stages, overrides)
    else:
        raise UserError("give --stages STAGES.yaml (or --resume RUN_DIR)")
    name = args.name or (Path(args.stages).stem if args.stages else None)
    try:
        path = run_progressive(cfg, out=args.out, name=name, resume_dir=args.resume)
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0
