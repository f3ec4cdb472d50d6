"""``shoestring progressive``: a GRPO curriculum that cannot silently forget.

This module is one idea: the runner that trains the stages in order and gates each one.

Why this exists: the study this project grew from trained a three-stage curriculum with no
validation between stages; accuracy fell and nobody noticed until the end. Here every stage is
measured on one fixed validation set (greedy, under one scoring protocol, accuracy with a 95%
Wilson interval), before the first stage and after each one, and a stage whose accuracy falls
more than ``threshold`` points below the best so far is rolled back: the next attempt starts
again from the best model, with a lower learning rate (``on_regression: retry``) or the
curriculum stops there (``on_regression: stop``). Nothing is deleted; a rolled-back stage keeps
its run directory.

Where the pieces live: the stages file and each stage's GRPOConfig in
:mod:`~shoestring.rl.progressive_config`, the validation set and its scoring in
:mod:`~shoestring.rl.curriculum_eval`, ``state.json`` and the rollback rule in
:mod:`~shoestring.rl.progressive_state`, the figure in :mod:`~shoestring.rl.progressive_plot`,
the closing summary in :mod:`~shoestring.rl.progressive_summary`,
the CLI in :mod:`~shoestring.rl.cli`.

The run directory (kind ``progressive``) holds ``state.json`` (what resume reads),
``evals/<label>.json`` (per-problem correctness of every evaluated model), each attempt's GRPO
run under ``stages/<NN-name[-retryK]>/``, ``report.md`` (the ``compare`` sections for this run)
and ``progressive.png``. The trainer and the evaluator are injectable callables, so tests can
make a stage fail on purpose; the defaults are the real GRPO API (:func:`shoestring.rl.grpo.run`)
and :class:`~shoestring.rl.curriculum_eval.ValidationEvaluator`.

Under ``torchrun`` every rank runs this loop in step: each GRPO stage is split over the ranks
(:mod:`shoestring.rl.grpo`), each validation too (every rank gets every verdict), so every
rank reaches the same decisions from the same state; rank 0 alone writes the run directory,
and what only the file system knows (``state.json`` on resume, what a killed attempt left) is
read by rank 0 and sent to the others.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoestring.cli_options import read_resume_config
from shoestring.distributed import DistInfo, command_group, decided_by_main
from shoestring.errors import UserError
from shoestring.models.loading import resolve_model_path
from shoestring.report.finalize import command_finalizers
from shoestring.rl import grpo
from shoestring.rl.config import GRPOConfig
from shoestring.rl.curriculum_eval import EvalResult, Evaluator, ValidationEvaluator
from shoestring.rl.progressive_config import ProgressiveConfig, stage_grpo_config
from shoestring.rl.progressive_plot import plot_progressive
from shoestring.rl.progressive_state import (
    attempt_record,
    decide,
    fmt_eval,
    gate_resolution_warning,
    leftover_attempt,
    mcnemar_p,
    new_state,
    pts,
    stage_label,
)
from shoestring.rl.progressive_summary import summary_fields
from shoestring.rl.rewards import check_rewards
from shoestring.rundir.directory import RunDir, atomic_write_json, read_json, unique_run_dir
from shoestring.rundir.follower import RunDirFollower
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.rundir.trackers import Trackers

__all__ = ["ProgressiveRun", "StageTrainer", "run"]

#: ``trainer(cfg) -> run_dir``, called as :func:`shoestring.rl.grpo.run` is: a new attempt goes
#: to ``cfg.output_dir``, an interrupted one continues in ``cfg.resume``; the run dir must
#: contain ``model/``.
StageTrainer = Callable[[GRPOConfig], Path]


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
        ranks: DistInfo | None = None,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self.resume = resume
        self.trainer = trainer
        self.ranks = ranks or DistInfo()
        main = self.ranks.is_main
        self.echo = self.progress = not cfg.output.quiet and main
        self.rd: RunDir | RunDirFollower = (
            RunDir(path, "progressive", echo=self.echo)
            if main
            else RunDirFollower(path, "progressive")  # rank 0 writes the directory
        )
        self.base_location, _ = resolve_model_path(cfg.model)
        self._evaluator = evaluator
        self._plot: str | None = None
        self._verdicts: dict[str, list[bool] | None] = {}  # per-problem verdicts of this run
        self.trackers = Trackers([], path, {}, self.rd.log)  # run() opens report_to's
        resumed = resume and self.state_path.exists()
        # rank 0 reads the state a resumed run left; every rank starts from the same one
        self.state: dict[str, Any] = decided_by_main(
            lambda: read_json(self.state_path) if resumed else new_state(self.base_location),
            self.ranks,
        )

    # -- state and evaluation
    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def _save_state(self) -> None:
        if self.ranks.is_main:  # every rank holds the same state; rank 0 writes it
            atomic_write_json(self.state_path, self.state)

    @property
    def evaluator(self) -> Evaluator:
        """The injected evaluator, or the real one on ``cfg.validation`` (built on first use,
        after checking that a resumed run still validates on the same problems)."""
        if self._evaluator is None:
            ev = ValidationEvaluator(
                self.cfg.validation,
                records_dir=self.path / "evals",
                progress=self.progress,
                ranks=self.ranks,
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
        """Validate one model, keep its per-problem verdicts (for McNemar) and its protocol."""
        t0 = time.perf_counter()
        res = self.evaluator(Path(model_dir), label)
        if not res.seconds:
            res.seconds = time.perf_counter() - t0
        key = res.extra.get("protocol_key")
        if key is not None:
            known = self.state.get("protocol_key")
            if known and known != key:
                raise UserError(
                    f"{label} was scored under protocol {key}, the run's earlier models under "
                    f"{known}; accuracies under different protocols cannot gate each other"
                )
            self.state["protocol"] = res.extra.get("protocol")
            self.state["protocol_key"] = key
        rec = {**res.to_dict(), "label": label, "model_dir": str(model_dir), "protocol_key": key}
        if res.per_problem is not None:
            rec["per_problem"] = res.per_problem
        self._verdicts[label] = res.per_problem
        if self.ranks.is_main:
            atomic_write_json(self.path / "evals" / f"{label}.json", rec)
        return res

    def _per_problem(self, label: str | None) -> list[bool] | None:
        """A model's per-problem verdicts: this process's, or those an earlier (interrupted)
        run of this directory recorded in ``evals/``."""
        if label is None:
            return None
        if label in self._verdicts:
            return self._verdicts[label]
        p = self.path / "evals" / f"{label}.json"
        return read_json(p).get("per_problem") if p.exists() else None

    # -- the loop
    def run(self) -> Path:
        """Validate the base model, then run attempts until every stage is accepted or the
        curriculum stops; the lifecycle turns Ctrl-C/SIGTERM/errors into the final status."""
        cfg = self.cfg
        finalizers = command_finalizers()  # report.md, from the final summary
        rd = self.rd if isinstance(self.rd, RunDir) else None  # rank 0 owns the lifecycle
        if self.resume:
            if rd is not None:
                rd.write_config(cfg.run_dict())
            life = RunLifecycle(
                rd,
                start_fields={
                    "finished_at": None,
                    "error": None,
                    "world_size": self.ranks.world_size,  # this session's ranks
                },
                summary=self._summary_fields,
                close=False,
                finalizers=finalizers,
            )
        else:
            life = RunLifecycle(
                rd,
                config=cfg.run_dict(),
                start_fields={
                    "run_name": self.path.name,
                    "base_model": self.base_location,
                    "world_size": self.ranks.world_size,
                },
                summary=self._summary_fields,
                close=False,
                finalizers=finalizers,
            )
        try:
            with life:
                self._announce()
                report_to = cfg.report_to if self.ranks.is_main else []  # rank 0 reports
                self.trackers = Trackers(report_to, self.path, cfg.run_dict(), self.rd.log)
                try:
                    if self.state["base_eval"] is None:
                        self._base_eval()
                    # one attempt per iteration; each ends with a decision saved to state.json
                    while (
                        self.state["stage_index"] < len(cfg.stages) and not self.state["stopped_at"]
                    ):
                        self._attempt()
                except KeyboardInterrupt:
                    self.rd.log(
                        "interrupted; `shoestring progressive --resume "
                        f"{self.path}` continues from the last completed stage"
                    )
                    raise
                except BaseException as exc:
                    self.rd.log(f"failed: {type(exc).__name__}: {exc}")
                    raise
                finally:
                    # state first: the summary, the plot and --resume all read it
                    self._save_state()
                    self._draw_plot()
                    self.trackers.close()
        finally:
            self._report(life.status or "finished")
        return self.path

    def _warn(self, message: str) -> None:
        """A warning in log.txt and in summary.json's ``warnings`` (the report lists them)."""
        self.rd.log(f"WARNING: {message}")
        if message not in self.state.setdefault("warnings", []):
            self.state["warnings"].append(message)

    def _announce(self) -> None:
        """First log lines; a resumed run that stopped may retry if max_retries was raised."""
        cfg, st = self.cfg, self.state
        resolution = gate_resolution_warning(cfg)
        if resolution:
            self._warn(resolution)
        if not self.resume:
            self.rd.log(
                f"progressive run: {len(cfg.stages)} stage(s) from {cfg.model}; rollback when "
                f"accuracy falls > {cfg.threshold:g} points below the best"
                + (
                    f" and McNemar p < {cfg.significance:g}"
                    if cfg.significance < 1.0
                    else " (significance=1: the drop alone decides)"
                )
                + f" (on_regression={cfg.on_regression}) -> {self.path}"
            )
            return
        self.rd.log(f"resuming progressive run {self.path}")
        if st["stopped_at"] and cfg.on_regression == "retry" and st["attempt"] < cfg.max_retries:
            # resumed with more retries allowed (--set max_retries=N): retry the stage
            self.rd.log(f"{st['stopped_at']} stopped the run; retrying it (max_retries raised)")
            st["stopped_at"] = None
            st["attempt"] += 1

    def _base_eval(self) -> None:
        """Measure the starting model: the first best, the first start, the first bar."""
        self.rd.log(f"validating the base model {self.base_location}")
        res = self._evaluate(self.base_location, "00-base")
        st = self.state
        st["base_eval"] = res.to_dict()
        st["best"] = {"model_dir": self.base_location, "accuracy": res.accuracy, "label": "00-base"}
        st["start"] = dict(st["best"])
        st["best_so_far"] = res.accuracy
        self._save_state()
        self._metric({"event": "eval", "label": "00-base", **res.to_dict()}, step=0)
        self.rd.log(f"base model: {fmt_eval(res.to_dict())}")

    def _attempt(self) -> None:
        """One attempt at the current stage: find what a killed run left, train, decide."""
        cfg, st = self.cfg, self.state
        i, attempt = st["stage_index"], st["attempt"]
        stage = cfg.stages[i]
        label = stage_label(i, stage["name"], attempt)
        start = st["start"]
        gcfg = stage_grpo_config(
            cfg,
            stage,
            start["model_dir"],
            lr_factor=cfg.retry_lr_factor**attempt,  # each retry of a stage lowers the lr again
            retention_reference=self.base_location,
        )
        stage_dir = self.path / "stages" / label
        # what a killed run left behind (rank 0 looks, and may remove an empty attempt)
        run_dir, resume_dir = decided_by_main(lambda: leftover_attempt(stage_dir), self.ranks)
        gcfg.output_dir = str(stage_dir)
        gcfg.resume = "" if resume_dir is None else str(resume_dir)
        gcfg.quiet = cfg.output.quiet
        self.rd.log(
            f"stage {label}: {gcfg.dataset}"
            + (f"[{gcfg.dataset_slice}]" if gcfg.dataset_slice else "")
            + f", lr {gcfg.learning_rate:.3g}, from {start['label']}"
            + (" (resuming its GRPO run)" if resume_dir else "")
        )
        t0 = time.perf_counter()
        try:
            self._train_and_decide(stage, label, attempt, gcfg, stage_dir, run_dir)
        except KeyboardInterrupt:
            # the time spent so far counts towards the attempt once it is decided after resume
            st["pending_seconds"] = st.get("pending_seconds", 0.0) + time.perf_counter() - t0
            raise

    def _train_and_decide(
        self,
        stage: dict[str, Any],
        label: str,
        attempt: int,
        gcfg: GRPOConfig,
        stage_dir: Path,
        run_dir: Path | None,
    ) -> None:
        cfg, st = self.cfg, self.state
        start, stage_number = st["start"], st["stage_index"] + 1
        record = {"stage": stage, "stage_number": stage_number, "label": label}
        record.update(attempt=attempt, gcfg=gcfg, start=start)
        t0 = time.perf_counter()
        train_seconds = 0.0
        # 1. train (skipped when a killed run had finished training this attempt)
        if run_dir is None:
            try:
                run_dir = Path(self.trainer(gcfg))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                err = f"{type(exc).__name__}: {exc}"
                seconds = time.perf_counter() - t0
                self._record(
                    **record,
                    status="failed",
                    res=None,
                    seconds=seconds,
                    run_dir=stage_dir,
                    error=err,
                )
                raise
            train_seconds = time.perf_counter() - t0
            gc.collect()  # the finished stage's model, optimizer and caches before validation
        model_dir = run_dir / "model"
        if not model_dir.is_dir():
            raise UserError(f"stage {label} finished without a model directory ({model_dir})")
        # 2. validate on the fixed set
        res = self._evaluate(model_dir, label)
        attempt_number = len(st["records"]) + 1  # the tracker's x axis: attempts so far
        self._metric({"event": "eval", "label": label, **res.to_dict()}, step=attempt_number)
        seconds = train_seconds + res.seconds + st.get("pending_seconds", 0.0)
        st["pending_seconds"] = 0.0
        # 3. the rollback rule updates best/start/stage_index; then record and log the verdict
        best_before = dict(st["best"])
        best_so_far_before = st["best_so_far"]
        # paired tests on the same problems: against the best (gates the rollback) and
        # against this attempt's starting model (reported)
        p_best = mcnemar_p(self._per_problem(best_before["label"]), res.per_problem)
        verdict = decide(st, cfg, label, model_dir, res, attempt, p_vs_best=p_best)
        p = mcnemar_p(self._per_problem(start["label"]), res.per_problem)
        record.update(status=verdict.status, p_vs_start=p, drop=verdict.drop)
        record.update(p_vs_best=p_best, reason=verdict.reason)
        self._record(**record, res=res, seconds=seconds, run_dir=run_dir)
        if verdict.reason:
            self._warn(f"stage {label}: {verdict.reason}")
        if verdict.rolled_back:
            p_text = "" if p_best is None else f", McNemar p={p_best:.3g} vs the best"
            self.rd.log(
                f"stage {label}: {fmt_eval(res.to_dict())} is {verdict.drop:.1f} points below "
                f"the best ({pts(best_so_far_before):.1f}%, {best_before['label']}) > threshold "
                f"{cfg.threshold:g}{p_text}: rolled back to {start['label']}"
                + (
                    f"; retrying with lr x{cfg.retry_lr_factor:g}"
                    if verdict.retry
                    else "; the curriculum stops here"
                )
            )
        else:
            self.rd.log(
                f"stage {label}: {fmt_eval(res.to_dict())}, accepted "
                f"(best so far {pts(st['best_so_far']):.1f}%, {st['best']['label']})"
            )
        self._save_state()

    def _record(self, **fields: Any) -> None:
        """Append an attempt's record to the state, metrics.jsonl and state.json."""
        rec = attempt_record(self.state, **fields)
        self.state["records"].append(rec)
        fields = {k: v for k, v in rec.items() if k != "eval"}
        self._metric({"event": "stage", **fields}, step=len(self.state["records"]))
        self._save_state()

    def _metric(self, record: dict[str, Any], step: int) -> None:
        """One metrics.jsonl record, also sent to the report_to trackers (``eval/...`` and
        ``stage/...`` by the record's event, at the attempt's number)."""
        self.rd.metric(record)
        self.trackers.log(record, step, prefix=f"{record['event']}/")

    # -- reporting
    def _draw_plot(self) -> None:
        if not self.state.get("base_eval") or not self.ranks.is_main:
            return
        try:
            out = self.path / "progressive.png"
            self._plot = str(plot_progressive(self.state, out, self.cfg.threshold))
        except Exception as exc:  # noqa: BLE001 - a plot must never lose the run's summary
            self.rd.log(f"could not draw the plot: {type(exc).__name__}: {exc}")

    def _summary_fields(self) -> dict[str, Any]:
        """What summary.json adds to the lifecycle's fields at the end of the run."""
        return summary_fields(self.cfg, self.state, self._plot)

    def _report(self, status: str) -> None:
        """The report the lifecycle wrote (on stderr), the last log line, close."""
        st = self.state
        report = self.path / "report.md"
        if self.echo and report.is_file():
            print(report.read_text(encoding="utf-8"), file=sys.stderr)
        self.rd.log(
            f"{status}: {st['stage_index']}/{len(self.cfg.stages)} stages accepted, "
            f"{st['rollbacks']} rollback(s); best model {(st.get('best') or {}).get('model_dir')}"
        )
        self.rd.close()


def run(
    cfg: ProgressiveConfig,
    *,
    trainer: StageTrainer | None = None,
    evaluator: Evaluator | None = None,
) -> Path:
    """Run (or, with ``resume``, continue) a curriculum and return its run directory:
    ``output.dir/output.name`` (``-2``, ``-3`` ... appended when taken; '' = ``progressive``).

    ``trainer`` defaults to the real GRPO API (:func:`shoestring.rl.grpo.run`); ``evaluator``
    to a :class:`ValidationEvaluator` on ``cfg.validation``: both are seams for tests. Raises
    ``KeyboardInterrupt`` after saving its state when interrupted (Ctrl-C or SIGTERM).
    """
    cfg.check()
    if cfg.resume:
        path = Path(cfg.resume)
        read_resume_config(path, "progressive")  # a run of another kind: one line naming it
        if not (path / "state.json").exists():
            raise UserError(f"{path} is not a progressive run directory (no state.json)")
    # Validate every stage's GRPO config and reward functions before spending minutes on
    # the base evaluation.
    for stage in cfg.stages:
        check_rewards(stage_grpo_config(cfg, stage, cfg.model).rewards)
    # under torchrun: in the group for the whole curriculum (its GRPO stages stay in it)
    with command_group(cfg.validation.device) as ranks:
        if not cfg.resume:
            # rank 0 names the directory; the others follow it
            path = decided_by_main(
                lambda: unique_run_dir(cfg.output.dir, cfg.output.name or "progressive"), ranks
            )
        runner = ProgressiveRun(
            cfg,
            path,
            resume=bool(cfg.resume),
            trainer=trainer or grpo.run,
            evaluator=evaluator,
            ranks=ranks,
        )
        return runner.run()
