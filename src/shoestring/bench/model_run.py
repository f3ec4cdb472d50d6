"""One model of a benchmark: load it only when problems are missing, answer them through the one
scoring path, append each judged problem to problems.jsonl as it finishes, and measure the
model's load time and memory.

Why the records are written one by one: a benchmark of a large model on a CPU is long, and a
kill must lose at most the problems in flight (the rerun resumes from the file).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from shoestring.bench.config import BenchConfig
from shoestring.bench.models import ModelSpec
from shoestring.bench.problems import ProblemSet
from shoestring.bench.prompts import BenchPrompts, bench_prompts
from shoestring.bench.protocol import ProtocolChoice
from shoestring.bench.ranks import Order, answer_over_ranks, send
from shoestring.bench.records import (
    STATE_VERSION,
    check_loaded_settings,
    check_stored_settings,
    problem_record,
    problems_path,
    settings_for,
    settings_hash,
    sort_problem_lines,
    state_path,
    stored_records,
)
from shoestring.bench.results import ModelOutcome, model_result
from shoestring.data.gsm8k import Problem
from shoestring.distributed import DistInfo
from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress
from shoestring.rundir.directory import RunDir, atomic_write_json, now_iso
from shoestring.rundir.monitor import SystemMonitor
from shoestring.runtime import Runtime
from shoestring.scoring.protocols import Protocol
from shoestring.scoring.scoring import ProblemScore, score_model
from shoestring.util.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

__all__ = ["OnProblem", "check_settings_early", "run_model"]

#: ``on_problem(label, record)``: called after each problem's line is written.
OnProblem = Callable[[str, dict[str, Any]], None]


def _mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 1)


def check_settings_early(
    spec: ModelSpec,
    cfg: BenchConfig,
    dtype: str,
    protocol: ProtocolChoice,
    problems: ProblemSet,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Check what is known without loading the model against the stored responses; returns
    the model's state.json (empty for a new model)."""
    known = {
        "model": spec.fingerprint,
        "max_new_tokens": cfg.max_new_tokens,
        "dtype": dtype,
        **protocol.known_settings(),
    }
    return check_stored_settings(
        Path(cfg.out), spec.label, known, problems.problems, problems.source, log
    )


@contextmanager
def _measure_memory(session: dict[str, Any], device: str) -> Iterator[None]:
    """Peak memory of what runs inside, into ``session``: the sampled peak of the resident
    set and the kernel's high-water mark (reset first, so it is this model's, not the whole
    process's), plus CUDA's peak allocation on a GPU."""
    monitor = SystemMonitor(interval=0.1)  # sampling misses short spikes; the kernel's doesn't
    session["rss_before_load_mb"] = _mib(current_rss_bytes())
    hwm_reset = reset_peak_rss()  # False where the kernel cannot reset it (then sampled only)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    monitor.start()
    try:
        yield
    finally:
        stats = monitor.stop()
        hwm = _mib(peak_rss_bytes()) if hwm_reset else None
        # the larger of the two: each can miss what the other sees
        peak = max(x for x in (stats.get("peak_rss_mb"), hwm) if x is not None)
        session.update(
            {
                "peak_rss_mb": peak,
                "peak_rss_sampled_mb": stats["peak_rss_mb"],
                "peak_rss_kernel_mb": hwm,
                "cpu_percent_mean": stats.get("cpu_percent_mean"),
            }
        )
        if device.startswith("cuda"):
            session["cuda_peak_allocated_mb"] = _mib(torch.cuda.max_memory_allocated())
            session["cuda_peak_reserved_mb"] = _mib(torch.cuda.max_memory_reserved())


def run_model(
    spec: ModelSpec,
    cfg: BenchConfig,
    rt: Runtime,
    protocol: ProtocolChoice,
    problems: ProblemSet,
    rundir: RunDir,
    on_problem: OnProblem | None = None,
    ranks: DistInfo | None = None,
) -> ModelOutcome:
    """Load (only when problems are missing), generate the missing problems, score; under
    torchrun (``ranks``, on rank 0) the generation is dealt over the ranks."""
    ranks = ranks or DistInfo()
    out, label = rundir.path, spec.label
    # state.json and the stored lines, read again here: the preflight checked every model
    # before any loaded, and this model's lines are the ones its generation continues from
    state = check_settings_early(spec, cfg, rt.dtype, protocol, problems, rundir.log)
    done = stored_records(
        out, label, problems.problems, problems.source, state.get("settings_hash")
    )
    missing = [p for p in problems.problems if p.idx not in done]  # what this session generates
    # Everything stored, and loading could not pick another protocol: report without loading.
    stored_protocol = protocol.without_loading(state)
    if not missing and stored_protocol is not None:
        rundir.log(f"{label}: all {len(done)} problems already scored; not loading the model")
        send(Order(), ranks)  # nothing for the other ranks either
        return model_result(spec, state, stored_protocol, done, problems)

    session: dict[str, Any] = {
        "started_at": now_iso(),
        "device": rt.device,
        "threads": rt.threads,
        "world_size": ranks.world_size,  # torchrun ranks that generated (threads are per rank)
        "batch_size": cfg.batch_size or "auto",
        "reused_problems": len(done),
        "generated_problems": 0,
        "generated_tokens": 0,
        "generation_seconds": 0.0,
        "loaded": False,
    }
    model = tokenizer = None
    try:
        with _measure_memory(session, rt.device):
            with quiet_hf_progress(not cfg.progress_bars):
                model, tokenizer, info = load_model_and_tokenizer(
                    spec.path,
                    device=rt.device,
                    dtype=rt.dtype,
                    trust_remote_code=cfg.trust_remote_code,
                )
            session["loaded"] = True
            session["load_seconds"] = round(info["load_seconds"], 3)
            used, info["protocol_source"] = protocol.for_tokenizer(tokenizer)
            settings = settings_for(
                spec.fingerprint, used, tokenizer, cfg.max_new_tokens, info["dtype"]
            )
            shash = settings_hash(settings)
            # The settings that needed the tokenizer (default protocol, prompt) are checked now.
            check_loaded_settings(out, label, state, settings, shash, done)
            state.update(
                {
                    "version": STATE_VERSION,
                    "label": label,
                    "model": spec.to_dict(),
                    "settings": settings,
                    "settings_hash": shash,
                    "info": {k: v for k, v in info.items() if k != "load_seconds"},
                }
            )
            state.setdefault("sessions", [])
            atomic_write_json(state_path(out, label), state)
            _log_loaded(rundir, label, info, used, len(done), len(missing))
            if missing:
                # this session's number, on every line: past every session recorded, and past
                # every line's - a process ended before its cleanup (a job's rank killed from
                # outside) leaves its lines but no session in state.json
                on_lines = (int(r.get("session", -1)) for r in done.values())
                n_session = max(len(state["sessions"]), 1 + max(on_lines, default=-1))
                prompts = bench_prompts(
                    model,
                    tokenizer,
                    used,
                    missing,
                    problems.fewshot_for(missing),
                    cfg.max_new_tokens,
                    label,
                )
                state["context"] = prompts.context  # for the summary's context of this model
                append = _Appender(
                    out, label, missing, prompts, cfg, shash, n_session, done, session, on_problem
                )
                if ranks.enabled:  # torchrun: the generation dealt over the ranks
                    with append:
                        answer_over_ranks(
                            model,
                            tokenizer,
                            used,
                            missing,
                            prompts,
                            cfg,
                            rundir,
                            label,
                            session,
                            append,
                            ranks,
                        )
                else:
                    _generate(
                        model, tokenizer, used, missing, prompts, cfg, rundir, session, append
                    )
                if len(done) == len(problems.problems):  # complete: lines in problem order
                    sort_problem_lines(problems_path(out, label), problems.problems)
            else:
                send(Order(), ranks)
    finally:
        # The session is recorded even after an interrupt, so resumed timings add up.
        session["finished_at"] = now_iso()
        if state.get("settings_hash"):
            state.setdefault("sessions", []).append(session)
            atomic_write_json(state_path(out, label), state)
        model = tokenizer = None  # free before the next model loads
        gc.collect()
        if rt.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return model_result(spec, state, used, done, problems)


def _log_loaded(
    rundir: RunDir,
    label: str,
    info: dict[str, Any],
    protocol: Protocol,
    reused: int,
    to_generate: int,
) -> None:
    rundir.log(
        f"{label}: loaded {info['path']} ({info['model_type']}, "
        f"{info['n_params'] / 1e6:.2f}M params) on {info['device']} as "
        f"{info['dtype']} in {info['load_seconds']:.2f} s; protocol {protocol.name} "
        f"({info['protocol_source']}); {reused} problems reused, {to_generate} to generate"
    )
    rundir.metric(
        {
            "event": "model_loaded",
            "model": label,
            "load_seconds": info["load_seconds"],
            "n_params": info["n_params"],
            "protocol": protocol.name,
            "to_generate": to_generate,
            "reused": reused,
        }
    )


class _Appender:
    """Where one model's judged problems go as ``score_model`` finishes them: a line appended
    to problems.jsonl, the record into ``done``, the counts and generation time into the
    session. Used as a context manager around the generation: the file is open, and the
    generation clock runs, inside it."""

    def __init__(
        self,
        out: Path,
        label: str,
        missing: list[Problem],
        prompts: BenchPrompts,
        cfg: BenchConfig,
        shash: str,
        n_session: int,
        done: dict[int, dict[str, Any]],
        session: dict[str, Any],
        on_problem: OnProblem | None,
    ) -> None:
        self.path, self.label, self.missing = problems_path(out, label), label, missing
        self.prompts, self.log_prompts = prompts, cfg.log_prompts
        self.shash, self.n_session = shash, n_session
        self.done, self.session, self.on_problem = done, session, on_problem
        self._f: IO[str] | None = None
        self._t0 = 0.0

    def __enter__(self) -> _Appender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()

    def __call__(self, item: ProblemScore) -> None:
        assert self._f is not None, "an _Appender receives problems only inside its with block"
        # item.index is the problem's position in `missing` (completion order varies)
        i, p = item.index, self.missing[item.index]
        rec = problem_record(
            p,
            item.result,
            item.scored,
            self.shash,
            self.n_session,
            prompt=self.prompts.texts[i],
            prompt_tokens_cut=self.prompts.fit.cut[i],
            log_prompt=self.log_prompts,
        )
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()  # on disk before the next problem: a kill loses only those in flight
        self.done[p.idx] = rec
        self.session["generated_problems"] += 1
        self.session["generated_tokens"] += item.result.n_tokens
        self.session["generation_seconds"] = round(time.perf_counter() - self._t0, 4)
        if self.on_problem is not None:
            self.on_problem(self.label, rec)


def _generate(
    model: Any,
    tokenizer: Any,
    protocol: Protocol,
    missing: list[Problem],
    prompts: BenchPrompts,
    cfg: BenchConfig,
    rundir: RunDir,
    session: dict[str, Any],
    append: _Appender,
) -> None:
    """Answer ``missing`` from their fitted prompts, judged as ``score_model`` judges."""
    label = append.label
    scfg, golds, _ = prompts.start(
        model, protocol, missing, cfg.max_new_tokens, cfg.batch_size, (rundir, label, session)
    )
    with append:  # the one scoring path, from the prompts fitted, counted and hashed above
        score_model(
            model,
            tokenizer,
            [p.question for p in missing],
            golds,
            protocol,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            progress=cfg.progress_bars,
            desc=label,
            on_result=append,
            sampling=scfg,
            prompt_ids=prompts.fit.kept_ids(),
            streams=[p.idx for p in missing],  # a problem's own stream, resumed or not
        )
