"""One model of a benchmark: load it only when problems are missing, answer them through the one
scoring path, append each judged problem to problems.jsonl as it finishes, and measure the
model's load time and memory.

Why the records are written one by one: a benchmark of a 7B model on a CPU takes hours, and a
kill must lose at most the problems in flight (the rerun resumes from the file).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoestring.bench.config import BenchConfig
from shoestring.bench.metrics import model_metrics
from shoestring.bench.models import ModelSpec
from shoestring.bench.records import (
    STATE_VERSION,
    check_stored_settings,
    describe_changes,
    problem_record,
    problems_path,
    settings_for,
    settings_hash,
    state_path,
    stored_records,
)
from shoestring.data.gsm8k import Problem
from shoestring.engine import auto_batch_size
from shoestring.errors import UserError
from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress
from shoestring.rundir.directory import RunDir, atomic_write_json, now_iso, read_json
from shoestring.rundir.monitor import SystemMonitor
from shoestring.runtime import Runtime
from shoestring.scoring.protocols import Protocol, get_protocol, has_chat_template, resolve_protocol
from shoestring.scoring.scoring import ProblemScore, render_prompts, sampling_for, score_model
from shoestring.util.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

__all__ = ["BenchContext", "OnProblem", "check_settings_early", "partial_result", "run_model"]

#: ``on_problem(label, record)``: called after each problem's line is written.
OnProblem = Callable[[str, dict[str, Any]], None]
#: A model's result for summary.json, and its records by problem index.
ModelOutcome = tuple[dict[str, Any], dict[int, dict[str, Any]]]


@dataclass
class BenchContext:
    """What every model of one ``bench`` invocation shares."""

    cfg: BenchConfig
    out: Path
    rundir: RunDir
    problems: list[Problem] = field(default_factory=list)
    #: each problem's few-shot examples by ``idx`` (protocols with lm-eval's per-problem draw)
    fewshot: dict[int, tuple[Problem, ...]] = field(default_factory=dict)
    progress: bool = True
    on_problem: OnProblem | None = None

    def log(self, msg: str) -> None:
        self.rundir.log(msg)

    def stored(
        self, spec: ModelSpec, shash: str | None, quiet: bool = False
    ) -> dict[int, dict[str, Any]]:
        """The model's stored records of the selected problems (see ``stored_records``)."""
        log = None if quiet else self.log
        return stored_records(self.out, spec.label, self.problems, self.cfg.data, shash, log)


def _mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 1)


def check_settings_early(ctx: BenchContext, spec: ModelSpec, rt: Runtime) -> dict[str, Any]:
    """Check what is known without loading the model against the stored responses; returns
    the model's state.json (empty for a new model)."""
    c = ctx.cfg
    cheap: dict[str, Any] = {
        "model": spec.fingerprint,
        "max_new_tokens": c.max_new_tokens,
        "dtype": rt.dtype,
    }
    if c.protocol != "auto":
        cheap["protocol"] = c.protocol
    return check_stored_settings(ctx.out, spec.label, cheap, ctx.problems, c.data, ctx.log)


def _choose_protocol(name: str, tokenizer: Any) -> tuple[Protocol, str]:
    """The protocol for this model and why (recorded as ``protocol_source``)."""
    protocol = resolve_protocol(name, tokenizer, fallback="plain")
    if name != "auto":
        return protocol, "--protocol"
    if has_chat_template(tokenizer):
        return protocol, "default: the tokenizer has a chat template"
    return protocol, "default: no chat template"


@contextmanager
def _measure_memory(session: dict[str, Any], device: str) -> Iterator[None]:
    """Peak memory of what runs inside, into ``session``: the sampled peak of the resident
    set and the kernel's high-water mark (reset first, so it is this model's, not the whole
    process's), plus CUDA's peak allocation on a GPU."""
    monitor = SystemMonitor(interval=0.1)
    session["rss_before_load_mb"] = _mib(current_rss_bytes())
    hwm_reset = reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    monitor.start()
    try:
        yield
    finally:
        stats = monitor.stop()
        hwm = _mib(peak_rss_bytes()) if hwm_reset else None
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


def run_model(ctx: BenchContext, spec: ModelSpec, rt: Runtime) -> ModelOutcome:
    """Load (only when problems are missing), generate the missing problems, score."""
    c = ctx.cfg
    label = spec.label
    state = check_settings_early(ctx, spec, rt)
    old = state.get("settings")
    done = ctx.stored(spec, state.get("settings_hash"), quiet=True)
    missing = [p for p in ctx.problems if p.idx not in done]
    # "auto" reuses a stored default protocol without loading; a protocol that was given
    # explicitly last time needs the tokenizer to know whether it is this model's default.
    stored_default = str(state.get("info", {}).get("protocol_source", "")).startswith("default")
    if not missing and old is not None and (c.protocol != "auto" or stored_default):
        ctx.log(f"{label}: all {len(done)} problems already scored; not loading the model")
        return model_result(ctx, spec, state, get_protocol(old["protocol"]), done)

    session: dict[str, Any] = {
        "started_at": now_iso(),
        "device": rt.device,
        "threads": rt.threads,
        "batch_size": c.batch_size or "auto",
        "reused_problems": len(done),
        "generated_problems": 0,
        "generated_tokens": 0,
        "generation_seconds": 0.0,
        "loaded": False,
    }
    model = tokenizer = None
    try:
        with _measure_memory(session, rt.device):
            with quiet_hf_progress(not ctx.progress):
                model, tokenizer, info = load_model_and_tokenizer(
                    spec.path,
                    device=rt.device,
                    dtype=rt.dtype,
                    trust_remote_code=c.trust_remote_code,
                )
            session["loaded"] = True
            session["load_seconds"] = round(info["load_seconds"], 3)
            protocol, info["protocol_source"] = _choose_protocol(c.protocol, tokenizer)
            settings = settings_for(
                spec.fingerprint, protocol, tokenizer, c.max_new_tokens, info["dtype"]
            )
            shash = settings_hash(settings)
            # The settings that needed the tokenizer (default protocol, prompt) are checked now.
            stale = sorted(i for i, r in done.items() if r.get("settings_hash") != shash)
            if stale and old is None:  # state.json lost: the lines' own hashes decide
                raise UserError(
                    f"{ctx.out}/models/{label}/problems.jsonl holds responses made with "
                    f"other settings (problems {stale[:5]}...) and no state.json says "
                    "which; use a new --out"
                )
            if old is not None and state.get("settings_hash") != shash:
                raise UserError(
                    f"{ctx.out}/models/{label} holds responses made with other settings ("
                    f"{describe_changes(old, settings)}); use a new --out to benchmark these "
                    "settings, or rerun with the old ones to continue"
                )
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
            atomic_write_json(state_path(ctx.out, label), state)
            _log_loaded(ctx, label, info, protocol, len(done), len(missing))
            if missing:
                n_session = len(state["sessions"])
                _generate(
                    ctx, spec, model, tokenizer, protocol, shash, missing, done, session, n_session
                )
    finally:
        # The session is recorded even after an interrupt, so resumed timings add up.
        session["finished_at"] = now_iso()
        if state.get("settings_hash"):
            state.setdefault("sessions", []).append(session)
            atomic_write_json(state_path(ctx.out, label), state)
        model = tokenizer = None  # free before the next model loads
        gc.collect()
        if rt.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return model_result(ctx, spec, state, protocol, done)


def _log_loaded(
    ctx: BenchContext,
    label: str,
    info: dict[str, Any],
    protocol: Protocol,
    reused: int,
    to_generate: int,
) -> None:
    ctx.log(
        f"{label}: loaded {info['path']} ({info['model_type']}, "
        f"{info['n_params'] / 1e6:.2f}M params) on {info['device']} as "
        f"{info['dtype']} in {info['load_seconds']:.2f} s; protocol {protocol.name} "
        f"({info['protocol_source']}); {reused} problems reused, {to_generate} to generate"
    )
    ctx.rundir.metric(
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


def _generate(
    ctx: BenchContext,
    spec: ModelSpec,
    model: Any,
    tokenizer: Any,
    protocol: Protocol,
    shash: str,
    missing: list[Problem],
    done: dict[int, dict[str, Any]],
    session: dict[str, Any],
    n_session: int,
) -> None:
    """Answer ``missing`` through ``score_model``, appending each record as it is judged."""
    c = ctx.cfg
    label = spec.label
    scfg = sampling_for(protocol, c.max_new_tokens, c.batch_size)
    # Prompt lengths, for the context warning and the auto batch size (score_model renders
    # the same prompts again; rendering text is cheap next to generating).
    fewshot = [ctx.fewshot[p.idx] for p in missing] if protocol.fewshot_sampler else None
    rendered = render_prompts(
        model,
        tokenizer,
        [p.question for p in missing],
        protocol,
        max_new_tokens=c.max_new_tokens,
        fewshot=fewshot,
    )
    lengths = [len(x) for x in rendered.ids]
    ctx_len = getattr(model.config, "max_position_embeddings", None)
    if rendered.truncated:
        ctx.log(
            f"{label}: {rendered.truncated} of {len(lengths)} prompts left-truncated to their "
            f"last {rendered.budget} tokens (context minus {c.max_new_tokens} new tokens), as "
            "lm-eval's HF backend does"
        )
    elif isinstance(ctx_len, int) and ctx_len > 0:
        over = sum(1 for n in lengths if n + c.max_new_tokens > ctx_len)
        if over:
            ctx.log(
                f"{label}: WARNING {over} of {len(lengths)} prompts plus "
                f"{c.max_new_tokens} new tokens exceed the model's context of {ctx_len} "
                f"positions (longest prompt {max(lengths)} tokens); text past it is "
                "unreliable, and models with learned positions will fail"
            )
    session["batch_size_auto_first"] = (
        None if c.batch_size else auto_batch_size(model, max(lengths), scfg)
    )
    session["prompt_tokens_mean"] = round(sum(lengths) / len(lengths), 1)
    path = problems_path(ctx.out, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    with path.open("a", encoding="utf-8") as f:

        def deliver(item: ProblemScore) -> None:
            # item.index is the problem's position in `missing` (completion order varies)
            p = missing[item.index]
            rec = problem_record(p, item.result, item.scored, shash, n_session)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()  # on disk before the next problem: a kill loses only those in flight
            done[p.idx] = rec
            session["generated_problems"] += 1
            session["generated_tokens"] += item.result.n_tokens
            session["generation_seconds"] = round(time.perf_counter() - t0, 4)
            if ctx.on_problem is not None:
                ctx.on_problem(label, rec)

        score_model(
            model,
            tokenizer,
            [p.question for p in missing],
            # lm-eval compares with the whole answer field (its "#### 12.00" is not 12)
            [p.answer if protocol.matcher == "lm-eval" else p.gold for p in missing],
            protocol,
            max_new_tokens=c.max_new_tokens,
            batch_size=c.batch_size,
            progress=ctx.progress,
            desc=label,
            on_result=deliver,
            sampling=scfg,
            fewshot=fewshot,
        )


def model_result(
    ctx: BenchContext,
    spec: ModelSpec,
    state: dict[str, Any],
    protocol: Protocol,
    done: dict[int, dict[str, Any]],
) -> ModelOutcome:
    """The model's entry in summary.json (``models[i]``) and its records of the selection."""
    info = state.get("info", {})
    records = [done[p.idx] for p in ctx.problems if p.idx in done]
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
        "protocol_key": protocol.key(),
        "protocol_spec": protocol.to_dict(),
        "protocol_source": info.get("protocol_source"),
        "primary_extractor": protocol.primary,
        "settings": state.get("settings"),
        "settings_hash": state.get("settings_hash"),
        "complete": len(records) == len(ctx.problems),
        "problems_file": str(Path("models") / spec.label / "problems.jsonl"),
        "metrics": model_metrics(records, state),
    }
    if spec.convert is not None:
        result["converted_from"] = spec.convert
    return result, {r["idx"]: r for r in records}


def partial_result(ctx: BenchContext, spec: ModelSpec) -> ModelOutcome | None:
    """A result from whatever is on disk (for an interrupted or failed model)."""
    path = state_path(ctx.out, spec.label)
    if not path.exists():
        return None
    state = read_json(path)
    if "settings" not in state:
        return None
    try:
        done = ctx.stored(spec, state.get("settings_hash"), quiet=True)
    except UserError:
        return None
    return model_result(ctx, spec, state, get_protocol(state["settings"]["protocol"]), done)
