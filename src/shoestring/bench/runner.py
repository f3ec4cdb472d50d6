"""The whole ``bench`` run: one set of problems, every model in turn, one run lifecycle.

Why the preflight: everything that can fail on a bad argument (device, data, a MODEL typo, a
changed setting against stored responses) fails before config.json or summary.json is
touched, so a typo never turns a finished benchmark into a "failed" one. Then
:class:`~shoestring.rundir.lifecycle.RunLifecycle` owns the status, the system monitor and
SIGTERM, and the report is the one ``compare`` renders (:func:`write_run_report`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from shoestring.bench.config import BenchConfig
from shoestring.bench.metrics import compare_models
from shoestring.bench.model_run import (
    BenchContext,
    ModelOutcome,
    OnProblem,
    check_settings_early,
    partial_result,
    run_model,
)
from shoestring.bench.models import ModelSpec, resolve_models
from shoestring.data.gsm8k import (
    LM_EVAL_FEWSHOT_SEED,
    lm_eval_fewshot_for,
    load_fewshot_pool,
    load_gsm8k,
)
from shoestring.data.input_report import MAX_REPORTS, report_capped
from shoestring.errors import UserError
from shoestring.report.blocks import fmt
from shoestring.report.compare import write_run_report
from shoestring.rundir.directory import RunDir, read_json
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.runtime import Runtime, setup_runtime
from shoestring.scoring.protocols import CHAT_COT_INSTRUCTION, PROTOCOLS

__all__ = ["BenchRun", "run_bench"]


def _refuse_other_kind(out: Path) -> None:
    """Never write a bench into another command's run directory."""
    existing = out / "summary.json"
    if not existing.exists():
        return
    try:
        kind = read_json(existing).get("kind")
    except (OSError, json.JSONDecodeError, AttributeError):
        kind = None
    if kind not in (None, "bench"):
        raise UserError(f"{out} is a '{kind}' run directory, not a bench; choose another --out")


class BenchRun:
    """One invocation of ``bench``: the problems, the models' results, the summary fields."""

    def __init__(
        self, cfg: BenchConfig, progress: bool, echo: bool, on_problem: OnProblem | None
    ) -> None:
        out = Path(cfg.out)
        _refuse_other_kind(out)
        rundir = RunDir(out, "bench", echo=echo)
        self.ctx = BenchContext(cfg, out, rundir, progress=progress, on_problem=on_problem)
        self.specs: list[ModelSpec] = []
        self.results: list[dict[str, Any]] = []
        self.by_model: dict[str, dict[int, dict[str, Any]]] = {}
        self.data_issues: list[str] = []

    # -- data
    def load_data(self) -> None:
        c = self.ctx.cfg
        self.ctx.problems = load_gsm8k(
            c.data,
            c.split,
            c.limit,
            c.subset_seed,
            strict=c.strict_data,
            on_warning=self.data_issues.append,
        )
        report_capped(self.data_issues, lambda msg: self.ctx.log(f"data: skipped {msg}"))
        self.ctx.log(
            f"data: {len(self.ctx.problems)} problems from {c.data}"
            + (f" ({len(self.data_issues)} malformed line(s) skipped)" if self.data_issues else "")
        )
        protocol = PROTOCOLS.get(c.protocol)
        if protocol is not None and protocol.fewshot_sampler == "lm-eval":
            # lm-eval's shots depend on each problem's line in the test file: draw them once.
            pool = load_fewshot_pool(c.data, c.split)
            draws = lm_eval_fewshot_for(self.ctx.problems, pool, protocol.n_shots)
            self.ctx.fewshot = {p.idx: d for p, d in zip(self.ctx.problems, draws, strict=True)}
            self.ctx.log(
                f"data: few-shot examples drawn per problem as lm-eval does (seed "
                f"{LM_EVAL_FEWSHOT_SEED}, {protocol.n_shots} of {len(pool)} train problems)"
            )

    def data_summary(self) -> dict[str, Any]:
        c = self.ctx.cfg
        src = Path(c.data)
        return {
            "source": str(src.resolve()) if src.exists() else c.data,
            "split": c.split,
            "limit": c.limit,
            "subset_seed": c.subset_seed,
            "n_selected": len(self.ctx.problems),
            "idx": [p.idx for p in self.ctx.problems],
            "skipped_lines": self.data_issues[:MAX_REPORTS],
            "n_skipped_lines": len(self.data_issues),
        }

    # -- models
    def _add(self, outcome: ModelOutcome) -> dict[str, Any]:
        result, records = outcome
        self.results.append(result)
        self.by_model[result["label"]] = records
        return result

    def run_models(self, rt: Runtime) -> None:
        """Every model in turn; summary.json is updated after each, so a kill keeps them."""
        ctx = self.ctx
        for spec in self.specs:
            result = self._add(run_model(ctx, spec, rt))
            m = result["metrics"]
            primary = m["accuracy"][result["primary_extractor"]]
            ctx.log(
                f"{spec.label}: {result['primary_extractor']} {primary['text']}; "
                f"{fmt(m['tokens_per_second'])} tokens/s; peak RSS {fmt(m['peak_rss_mb'])} MB"
            )
            ctx.rundir.metric(
                {
                    "event": "model_result",
                    "model": spec.label,
                    "protocol": result["protocol"],
                    "extractor": result["primary_extractor"],
                    "accuracy": primary["accuracy"],
                    "ci95": primary["ci95"],
                    "n": primary["n"],
                    "tokens_per_second": m["tokens_per_second"],
                    "load_seconds": m["load_seconds"],
                    "peak_rss_mb": m["peak_rss_mb"],
                }
            )
            ctx.rundir.update_summary(models=self.results)

    def final_fields(self) -> dict[str, Any]:
        """summary.json's end-of-run fields; a model that stopped part-way is reported from
        what is on disk, and every pair of models gets its paired test."""
        done_labels = {r["label"] for r in self.results}
        for spec in self.specs:
            if spec.label not in done_labels and (partial := partial_result(self.ctx, spec)):
                self._add(partial)
        comps = compare_models(self.results, self.by_model)
        for comp in comps:
            self.ctx.rundir.metric({"event": "comparison", **comp})
            self.ctx.log(f"{comp['a']} vs {comp['b']}: {comp['statement']}")
        # One protocol for the whole bench is recorded at the top; mixed ones per model only.
        keys = {r["protocol_key"] for r in self.results}
        single = self.results[0] if len(keys) == 1 else None
        return {
            "data": self.data_summary(),
            "models": self.results,
            "comparisons": comps,
            "protocol": single["protocol_spec"] if single else None,
            "protocol_key": single["protocol_key"] if single else None,
            "settings": {
                "max_new_tokens": self.ctx.cfg.max_new_tokens,
                "protocol": self.ctx.cfg.protocol,
                "decoding": "greedy",
                "batch_size": self.ctx.cfg.batch_size or "auto",
                "primary_extractor": {name: p.primary for name, p in PROTOCOLS.items()},
                "chat_cot_instruction": CHAT_COT_INSTRUCTION,
            },
        }


def run_bench(
    cfg: BenchConfig,
    *,
    progress: bool = True,
    echo: bool = True,
    on_problem: OnProblem | None = None,
) -> Path:
    """Benchmark every model of ``cfg`` on the same GSM8K problems; returns the out dir.

    ``on_problem(label, record)`` is called after each problem's line is written (tests use
    it to interrupt a run part-way). Ctrl-C (or SIGTERM) marks the run ``interrupted``, keeps
    every line written so far and re-raises KeyboardInterrupt; rerunning resumes.
    """
    cfg.check()
    bench = BenchRun(cfg, progress, echo, on_problem)
    ctx = bench.ctx
    # Preflight: everything that can fail on a bad argument fails here, before config.json
    # or summary.json is touched.
    try:
        rt = setup_runtime(cfg.device, cfg.dtype, cfg.threads)
        bench.load_data()
        bench.specs = resolve_models(cfg.models, ctx.out, cfg.tokenizer_model, ctx.log)
        for spec in bench.specs:
            check_settings_early(ctx, spec, rt)
    except BaseException as exc:
        # a new directory gets a failed summary; a rerun into an earlier bench keeps its record
        ctx.rundir.abandon(exc)
        raise

    def final_fields() -> dict[str, Any]:
        # The lifecycle has decided the status by now; say it before the comparisons.
        if life.status == "interrupted":
            ctx.log(
                "interrupted; every finished problem is kept - rerun the same command to resume"
            )
        elif life.status == "failed":
            ctx.log(f"failed: {life.error}")
        return bench.final_fields()

    life = RunLifecycle(
        ctx.rundir,
        config=dataclasses.asdict(cfg),
        start_fields={
            "runtime": rt.to_dict(),
            "finished_at": None,
            "error": None,
            "models": [],
            "comparisons": [],
        },
        summary=final_fields,
        close=False,  # the report is written from the final summary first
    )
    try:
        with life:
            ctx.log(
                f"bench into {ctx.out}: {len(cfg.models)} model(s), device {rt.device}, "
                f"dtype {rt.dtype}, {rt.threads} threads"
            )
            ctx.rundir.update_summary(
                data=bench.data_summary(), model_specs=[s.to_dict() for s in bench.specs]
            )
            bench.run_models(rt)
    finally:
        # Finished, interrupted or failed: the report shows what is on disk.
        report = write_run_report(ctx.out)
        ctx.log(f"{life.status or 'finished'}: report in {report}")
        ctx.rundir.close()
    return ctx.out
