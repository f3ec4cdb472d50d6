"""The whole ``bench`` run (:func:`run`): one set of problems, every model in turn, one lifecycle.

Read top to bottom it is the run in order: a preflight that resolves everything a bad argument
can break (device, protocol, data, MODEL arguments, stored settings, a context that
``--max-new-tokens`` fills) before config.json or summary.json is touched, so a typo never
turns a finished benchmark into a "failed" one; then, inside
:class:`~shoestring.rundir.lifecycle.RunLifecycle` (status, system monitor, SIGTERM, and
report.md written from the final summary by its finalizers), each model through
:func:`~shoestring.bench.model_run.run_model`; then the summary's end-of-run fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoestring.bench.config import BenchConfig
from shoestring.bench.metrics import compare_models
from shoestring.bench.model_run import OnProblem, check_settings_early, run_model
from shoestring.bench.models import ModelSpec, resolve_models
from shoestring.bench.problems import ProblemSet, load_problems
from shoestring.bench.prompts import check_context_early
from shoestring.bench.protocol import ProtocolChoice
from shoestring.bench.ranks import Plan, send, serve
from shoestring.bench.results import ModelOutcome, partial_result
from shoestring.config import run_dict
from shoestring.distributed import DistInfo, command_group, rank_device, rank_threads
from shoestring.errors import UserError
from shoestring.report.blocks import fmt
from shoestring.report.finalize import command_finalizers
from shoestring.rundir.directory import RunDir, read_json
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.runtime import Runtime, setup_runtime
from shoestring.scoring.protocols import CHAT_COT_INSTRUCTION, PROTOCOLS

__all__ = ["run"]


def run(cfg: BenchConfig, *, on_problem: OnProblem | None = None) -> Path:
    """Benchmark every model of ``cfg`` on the same GSM8K problems; returns the out dir.

    ``on_problem(label, record)`` is called after each problem's line is written (tests use
    it to interrupt a run part-way). Ctrl-C (or SIGTERM) marks the run ``interrupted``, keeps
    every line written so far and re-raises KeyboardInterrupt; rerunning resumes. Under
    torchrun rank 0 runs the benchmark and writes the directory, and every rank generates
    its share of the problems (:mod:`shoestring.bench.ranks`).
    """
    cfg.check()
    with command_group(cfg.device) as ranks:  # under torchrun: every rank runs this
        return _run(cfg, ranks, on_problem) if ranks.is_main else _serve(cfg, ranks)


def _runtime(cfg: BenchConfig, ranks: DistInfo) -> Runtime:
    """This rank's device, dtype and threads (ranks on one host split its cores)."""
    return setup_runtime(
        rank_device(cfg.device, ranks), cfg.dtype, rank_threads(cfg.threads, ranks)
    )


def _serve(cfg: BenchConfig, ranks: DistInfo) -> Path:
    """A rank other than 0: generate what rank 0 hands out; the directory is rank 0's."""
    serve(cfg, _runtime(cfg, ranks), ranks)
    return Path(cfg.out)


def _run(cfg: BenchConfig, ranks: DistInfo, on_problem: OnProblem | None) -> Path:
    """The benchmark, as one process (or rank 0) runs it."""
    out = Path(cfg.out)
    _refuse_other_kind(out)
    rundir = RunDir(out, "bench", echo=not cfg.quiet)
    # Preflight: everything that can fail on a bad argument fails here, before config.json
    # or summary.json is touched.
    try:
        rt = _runtime(cfg, ranks)
        protocol = ProtocolChoice.resolve(cfg.protocol)  # the one resolution of --protocol
        problems = load_problems(cfg, protocol, rundir.log)
        specs = resolve_models(cfg.models, out, cfg.tokenizer_model, rundir.log)
        for spec in specs:
            check_settings_early(spec, cfg, rt.dtype, protocol, problems, rundir.log)
            check_context_early(spec, cfg.max_new_tokens, cfg.trust_remote_code)
    except BaseException as exc:
        # a new directory gets a failed summary; a rerun into an earlier bench keeps its record
        rundir.abandon(exc)
        raise
    send(Plan(specs), ranks)  # the other ranks follow the models in this order

    outcomes: list[ModelOutcome] = []  # one per model that ran, in order; read by the summary

    def final_fields() -> dict[str, Any]:
        # The lifecycle has decided the status by now; say it before the comparisons.
        if life.status == "interrupted":
            rundir.log(
                "interrupted; every finished problem is kept - rerun the same command to resume"
            )
        elif life.status == "failed":
            rundir.log(f"failed: {life.error}")
        return _final_fields(cfg, protocol, problems, specs, outcomes, rundir)

    life = RunLifecycle(
        rundir,
        config=run_dict(cfg, ("quiet", "progress")),  # how loudly it runs is not a setting
        start_fields={
            "runtime": rt.to_dict(),
            "world_size": ranks.world_size,  # processes that generated (rank 0 writes)
            "finished_at": None,
            "error": None,
            "models": [],
            "comparisons": [],
        },
        summary=final_fields,
        finalizers=command_finalizers(),  # report.md, from the final summary
        close=False,  # the closing line below names the report, then the directory closes
    )
    try:
        with life:
            rundir.log(
                f"bench into {out}: {len(cfg.models)} model(s), device {rt.device}, "
                f"dtype {rt.dtype}, {rt.threads} threads"
                + (f" per rank, {ranks.world_size} ranks" if ranks.enabled else "")
            )
            rundir.update_summary(
                data=problems.summary(cfg), model_specs=[s.to_dict() for s in specs]
            )
            for spec in specs:
                outcome = run_model(spec, cfg, rt, protocol, problems, rundir, on_problem, ranks)
                outcomes.append(outcome)
                _record_result(rundir, spec, outcome.result)
                # summary.json after each model, so a kill keeps every finished one
                rundir.update_summary(models=[o.result for o in outcomes])
    finally:
        # Finished, interrupted or failed: the lifecycle's finalizer wrote the report (a
        # finalizer that failed has said so on stderr, and no report is named here)
        written = not life.finalizer_failures
        where = f"report in {out / 'report.md'}" if written else "no report (see the warning)"
        rundir.log(f"{life.status or 'finished'}: {where}")
        rundir.close()
    return out


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


def _record_result(rundir: RunDir, spec: ModelSpec, result: dict[str, Any]) -> None:
    """One model's headline numbers: a log line and a ``model_result`` event."""
    m = result["metrics"]
    primary = m["accuracy"][result["primary_extractor"]]
    rundir.log(
        f"{spec.label}: {result['primary_extractor']} {primary['text']}; "
        f"{fmt(m['tokens_per_second'])} tokens/s; peak RSS {fmt(m['peak_rss_mb'])} MB"
    )
    rundir.metric(
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


def _final_fields(
    cfg: BenchConfig,
    protocol: ProtocolChoice,
    problems: ProblemSet,
    specs: list[ModelSpec],
    outcomes: list[ModelOutcome],
    rundir: RunDir,
) -> dict[str, Any]:
    """summary.json's end-of-run fields; a model that stopped part-way is reported from
    what is on disk, and every pair of models gets its paired test."""
    done_labels = {o.result["label"] for o in outcomes}
    partials = [
        partial
        for spec in specs
        if spec.label not in done_labels
        and (partial := partial_result(spec, rundir.path, problems)) is not None
    ]
    reported = [*outcomes, *partials]
    results = [o.result for o in reported]
    comps = compare_models(results, {o.result["label"]: o.records for o in reported})
    for comp in comps:
        rundir.metric({"event": "comparison", **comp})
        rundir.log(f"{comp['a']} vs {comp['b']}: {comp['statement']}")
    # One protocol for the whole bench is recorded at the top; mixed ones per model only.
    keys = {r["protocol_key"] for r in results}
    single = results[0] if len(keys) == 1 else None
    return {
        "data": problems.summary(cfg),
        "models": results,
        "comparisons": comps,
        "protocol": single["protocol_spec"] if single else None,
        "protocol_key": single["protocol_key"] if single else None,
        # prompts the context policy cut from the left, over every model (per model: context)
        "prompts_truncated": sum(r["context"]["prompts_truncated"] for r in results),
        "settings": {
            "max_new_tokens": cfg.max_new_tokens,
            "protocol": protocol.asked,
            "decoding": "greedy",
            "batch_size": cfg.batch_size or "auto",
            "primary_extractor": {name: p.primary for name, p in PROTOCOLS.items()},
            "chat_cot_instruction": CHAT_COT_INSTRUCTION,
        },
    }
