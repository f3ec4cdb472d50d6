"""The search worker: ask the study for a trial, train it, retry it on OOM, tell the result.

Each trial attempt runs ``shoestring.train.loop.train`` in a fresh child process (spawned, not
forked) by default. That costs a few seconds of imports per trial and buys three things a
sweep needs: the peak memory a trial reports is its own (a long-lived worker's resident set only
ever grows, so later trials would inherit the peaks of earlier ones); a segfault or the kernel's
OOM killer takes down one attempt, not the worker; and the worker stays small while it waits.

A worker keeps its trial alive in the storage with a heartbeat thread. If the worker dies, the
heartbeat stops and the next worker to look marks the trial failed and re-queues it
(``storage.open_storage``), so a crash loses only that trial. The rules for who may run which grid
point are in ``grid.py``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from shoestring.config import RunConfig, from_dict, to_dict
from shoestring.runs.rundir import read_json, unique_run_dir
from shoestring.search import grid
from shoestring.search.spec import StudySpec, trial_config

# Test hook: evaluation with more than this many sequences per batch raises an out-of-memory
# error, as a real allocator failure would (evaluation is outside the train loop's own back-off).
SIMULATE_OOM_ENV = "SHOESTRING_SEARCH_SIMULATE_OOM"

ROW_ATTR = "row"  # trial user attribute holding the result row


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


# ----------------------------------------------------------------------------- one attempt


def _oom_in_chain(exc: BaseException | None) -> bool:
    from shoestring.train.loop import is_oom_error

    seen = 0
    while exc is not None and seen < 10:
        if is_oom_error(exc) or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _install_simulated_oom() -> None:
    """Wrap ``Trainer.evaluate`` (once per process) to fail like an allocator when asked to."""
    if not os.environ.get(SIMULATE_OOM_ENV):
        return
    from shoestring.train import loop

    if getattr(loop.Trainer.evaluate, "_simulated_oom", False):
        return
    original = loop.Trainer.evaluate

    def evaluate(self: Any) -> float:
        cap = os.environ.get(SIMULATE_OOM_ENV)  # read per call: tests change it
        rows = max((x.shape[0] for x, _ in self.val_mine), default=0)
        if cap and rows > int(cap):
            raise RuntimeError(
                f"DefaultCPUAllocator: can't allocate memory (simulated out of memory: "
                f"evaluation batch {rows} > {cap} set by {SIMULATE_OOM_ENV})"
            )
        return original(self)

    evaluate._simulated_oom = True  # type: ignore[attr-defined]
    loop.Trainer.evaluate = evaluate  # type: ignore[method-assign]


def _validation_accuracy(run: Path, cfg: RunConfig) -> float | None:
    """Next-token top-1 accuracy of the final model on the trial's fixed validation batches."""
    import torch

    from shoestring.data.text import load_prepared
    from shoestring.models.gpt import ShoestringGPTForCausalLM
    from shoestring.train.batches import validation_batches

    model_dir = run / "model"
    if not (model_dir / "config.json").is_file():
        return None
    model = ShoestringGPTForCausalLM.from_pretrained(model_dir).eval()
    data = load_prepared(cfg.data.path)
    t = cfg.train
    right = total = 0
    with torch.no_grad():
        for x, y in validation_batches(data.val, t.seq_len, t.batch_size, t.eval_batches):
            for i in range(0, x.shape[0], 8):  # 8 rows at a time keeps the logits small
                logits = model(input_ids=x[i : i + 8]).logits
                right += int((logits.argmax(-1) == y[i : i + 8]).sum())
                total += y[i : i + 8].numel()
    return right / total if total else None


def _drop_resume_state(run: Path) -> None:
    """Delete a finished trial's ``checkpoints/step_*`` (weights + optimizer state).

    Why: a finished trial is never resumed, and its resume state is 3x the model (a 12-trial
    WikiText-2 sweep of tiny/small kept 2.7 GB). ``model/`` (final weights) and
    ``checkpoints/best/`` stay, so every trial can still be loaded, evaluated or fine-tuned.
    """
    import shutil

    for step_dir in (run / "checkpoints").glob("step_*"):
        shutil.rmtree(step_dir, ignore_errors=True)


def run_attempt(job: dict[str, Any]) -> dict[str, Any]:
    """Train one attempt of a trial and describe what happened (runs in the child process)."""
    import torch
    from transformers.utils import logging as hf_logging

    from shoestring.train.loop import StopTraining, train

    hf_logging.disable_progress_bar()  # one line per trial from the worker, not shard bars
    _install_simulated_oom()
    cfg = from_dict(RunConfig, job["config"]).resolved()
    torch.set_num_threads(max(1, cfg.train.threads or torch.get_num_threads()))
    run = Path(job["run_dir"])
    on_eval = None
    if job.get("prune"):
        from shoestring.search.storage import open_storage

        study = optuna.load_study(
            study_name=job["study_name"],
            storage=open_storage(job["storage_url"], job.get("heartbeat", 30.0)),
            pruner=_pruner(job["prune"]),
        )
        trial = optuna.trial.Trial(study, job["trial_id"])

        def on_eval(step: int, val: float) -> None:
            trial.report(val, step)
            if trial.should_prune():
                raise StopTraining(f"pruned by the {job['prune']} pruner at step {step}")

    out: dict[str, Any] = {"run_dir": str(run), "status": "finished", "error": None, "oom": False}
    t0 = time.perf_counter()
    try:
        train(cfg, out=run.parent, name=run.name, echo=False, progress=False, on_eval=on_eval)
    except StopTraining as exc:
        out.update(status="pruned", error=str(exc))
    except KeyboardInterrupt:
        out.update(status="interrupted", error="interrupted")
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with its text
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        out.update(status="failed", error=text, oom=_oom_in_chain(exc))
    out["wall_seconds"] = time.perf_counter() - t0
    if out["status"] == "finished":
        _drop_resume_state(run)
        try:
            out["val_accuracy"] = _validation_accuracy(run, cfg)
        except Exception as exc:  # noqa: BLE001 - accuracy is extra; the loss stands without it
            out["val_accuracy"] = None
            out["val_accuracy_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _pruner(kind: str) -> optuna.pruners.BasePruner:
    from shoestring.search.storage import pruner_for

    return pruner_for(kind)


def _watch_parent(parent: int) -> None:
    """Exit when the worker that started this child dies (SIGKILL leaves orphans otherwise)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the worker dies, so the attempt stops and says "interrupted"."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _attempt_entry(job: dict[str, Any], conn: Any, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the line above took effect
        os._exit(3)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    result = run_attempt(job)
    try:
        conn.send(result)
        conn.close()
    except OSError:  # the worker is gone; its trial is re-queued by the heartbeat rule
        os._exit(3)


def _run_isolated(job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_attempt_entry, args=(job, send, os.getpid()), daemon=True)
    proc.start()
    send.close()
    result: dict[str, Any] | None = None
    try:
        while result is None and (proc.is_alive() or recv.poll()):
            if recv.poll(0.5):
                try:
                    result = recv.recv()
                except EOFError:
                    break
        proc.join(timeout=60)
    except KeyboardInterrupt:
        proc.join(timeout=60)  # the child got the same Ctrl-C and is saving its checkpoint
        if proc.is_alive():
            proc.terminate()
        raise
    if result is not None:
        return result
    code = proc.exitcode
    killed = code is not None and code < 0 and -code == 9
    return {
        "run_dir": job["run_dir"],
        "status": "failed",
        "oom": killed,
        "error": (
            "the trial process was killed by SIGKILL (on Linux usually the kernel's "
            "out-of-memory killer)"
            if killed
            else f"the trial process died with exit code {code}"
        ),
        "wall_seconds": None,
    }


# ----------------------------------------------------------------------------- one trial


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
        result = _run_isolated(job) if opts.isolate else run_attempt(job)
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
            _say(
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
    import socket

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


# ----------------------------------------------------------------------------- the worker loop


def _say(text: str) -> None:
    """A worker line that does not tear the progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


class Heartbeat:
    """Records a heartbeat for a running trial every ``interval`` seconds from a thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="search-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried; a dead DB ends the trial
                continue

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def progress_of(study: optuna.Study, spec: StudySpec) -> grid.Progress:
    trials = study.get_trials(deepcopy=False)
    if spec.sampler == "grid":
        return grid.grid_progress(trials, list(spec.search_space()), all_points(spec))
    return grid.budget_progress(trials, spec.trials)


def all_points(spec: StudySpec) -> list[str]:
    import itertools

    space = spec.search_space()
    keys = list(space)
    return [
        grid.point_key(dict(zip(keys, combo, strict=True)), keys)
        for combo in itertools.product(*space.values())
    ]


def _suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, values in spec.search_space().items():
        params[key] = trial.suggest_categorical(key, values)
    for r in spec.ranges:
        if r["kind"] == "int":
            params[r["key"]] = trial.suggest_int(r["key"], int(r["low"]), int(r["high"]))
        else:
            params[r["key"]] = trial.suggest_float(
                r["key"], r["low"], r["high"], log=r["kind"] == "log"
            )
    return params


def _requeue(study: optuna.Study, trial_id: int) -> None:
    """Put an interrupted trial back in the queue, as the heartbeat callback does for a crash."""
    storage = study._storage
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(study, storage.get_trial(trial_id))


def work(study: optuna.Study, spec: StudySpec, opts: WorkerOptions, storage_url: str) -> int:
    """Run trials until the grid (or the trial budget) is done; return how many this worker ran."""
    with warnings.catch_warnings():
        # heartbeats, stale-trial failing and ask/tell with heartbeats are "experimental" in
        # Optuna and warn on every call; the behaviour we rely on is tested in test_search.py
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return _work(study, spec, opts, storage_url)


def _work(study: optuna.Study, spec: StudySpec, opts: WorkerOptions, storage_url: str) -> int:
    from optuna.storages import fail_stale_trials
    from tqdm import tqdm

    keys = list(spec.search_space()) if spec.sampler == "grid" else None
    opts.trials_dir.mkdir(parents=True, exist_ok=True)
    ran = 0
    state = progress_of(study, spec)
    bar = tqdm(
        total=state.total,
        initial=state.done,
        unit="trial",
        desc=f"search {opts.worker}",
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    poll = max(1.0, min(opts.heartbeat, 5.0))
    said_waiting = False
    try:
        while not opts.max_trials or ran < opts.max_trials:
            fail_stale_trials(study)
            state = progress_of(study, spec)
            if state.done != bar.n:
                bar.n = state.done
                bar.refresh()
            if state.complete:
                break
            if not state.claimable:
                # the rest is running elsewhere; wait: if that worker dies, its trial comes back
                if not said_waiting and opts.echo:
                    _say(
                        f"[{opts.worker}] {state.active} trial(s) running in other workers; "
                        "waiting for them to finish (or to be re-queued if they die)"
                    )
                    said_waiting = True
                time.sleep(poll)
                continue
            said_waiting = False
            trial = study.ask()
            study._storage.record_heartbeat(trial._trial_id)
            params = _suggest(trial, spec)
            frozen = study._storage.get_trial(trial._trial_id)
            reason = grid.stand_down_reason(
                trial.number,
                grid.origin(frozen),
                params,
                study.get_trials(deepcopy=False),
                keys,
                budget=spec.trials if keys is None else None,
            )
            if reason is not None:
                trial.set_user_attr(grid.SKIPPED, reason)
                study.tell(trial, state=TrialState.FAIL)
                if opts.echo:
                    _say(f"[{opts.worker}] trial {trial.number} stands down: {reason}")
                continue
            label = f"{params['size']}/{params['variant']}/seed {params['seed']}"
            if opts.echo:
                _say(f"[{opts.worker}] trial {trial.number}: {label} ...")
            try:
                with Heartbeat(study._storage, trial._trial_id, opts.heartbeat):
                    row = execute_trial(
                        spec,
                        params,
                        trial.number,
                        opts,
                        trial._trial_id,
                        storage_url,
                        study.study_name,
                    )
            except KeyboardInterrupt:
                study.tell(trial, state=TrialState.FAIL)
                _requeue(study, trial._trial_id)
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a config the size cannot take
                row = {
                    "trial": trial.number,
                    "size": params["size"],
                    "variant": params["variant"],
                    "seed": int(params["seed"]),
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                    "wall_seconds": 0.0,
                    "val_loss": None,
                }
            row["worker"] = opts.worker
            trial.set_user_attr(ROW_ATTR, row)
            if row["status"] == "finished" and row["val_loss"] is not None:
                study.tell(trial, row["val_loss"])
            elif row["status"] == "pruned":
                study.tell(trial, state=TrialState.PRUNED)
            else:
                trial.set_user_attr("final", True)
                study.tell(trial, state=TrialState.FAIL)
            ran += 1
            if opts.echo:
                val = row["val_loss"]
                _say(
                    f"[{opts.worker}] trial {trial.number}: {label} {row['status']}"
                    + (f", val loss {val:.4f}" if val is not None else "")
                    + (f" ({row['error']})" if row["error"] else "")
                    + f" in {row['wall_seconds']:.1f} s"
                )
    finally:
        bar.close()
    return ran
