"""One attempt of a trial: ``train`` in a fresh child process, described as a plain dict.

Each trial attempt runs :func:`shoestring.train.run.run` in a fresh child process (spawned,
not forked) by default. That costs a few seconds of imports per trial and buys three things a
sweep needs: the peak memory a trial reports is its own (a long-lived worker's resident set only
ever grows, so later trials would inherit the peaks of earlier ones); a segfault or the kernel's
OOM killer takes down one attempt, not the worker; and the worker stays small while it waits.
The child dies with its worker (``PR_SET_PDEATHSIG`` and a parent watch), so a killed worker
leaves no orphan training on.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from transformers.utils import logging as hf_logging

from shoestring.config import from_dict
from shoestring.data.prepared import load_prepared
from shoestring.models.gpt import ShoestringGPTForCausalLM
from shoestring.run_config import RunConfig
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.search.storage import open_storage, pruner_for
from shoestring.train.batches import validation_batches
from shoestring.train.config import TrainJobConfig
from shoestring.train.run import run as run_training
from shoestring.train.step import Step
from shoestring.train.trainer import StopTraining
from shoestring.util.memory import is_oom_error

__all__ = ["SIMULATE_OOM_ENV", "run_attempt", "run_isolated"]

# Test hook: evaluation with more than this many sequences per batch raises an out-of-memory
# error, as a real allocator failure would (evaluation is outside the train loop's own back-off).
SIMULATE_OOM_ENV = "SHOESTRING_SEARCH_SIMULATE_OOM"


def _oom_in_chain(exc: BaseException | None) -> bool:
    """Is an OOM anywhere in the chain? The trainer re-raises an OOM it cannot back off from as
    a UserError whose cause is the allocator's error."""
    seen = 0
    while exc is not None and seen < 10:
        if is_oom_error(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _install_simulated_oom() -> None:
    """Wrap ``Step.evaluate`` (once per process) to fail like an allocator when asked to."""
    if not os.environ.get(SIMULATE_OOM_ENV):
        return
    if getattr(Step.evaluate, "_simulated_oom", False):
        return
    original = Step.evaluate

    def evaluate(self: Any) -> float:
        cap = os.environ.get(SIMULATE_OOM_ENV)  # read per call: tests change it
        rows = max((x.shape[0] for x, _ in self.data.val_mine), default=0)
        if cap and rows > int(cap):
            raise RuntimeError(
                f"DefaultCPUAllocator: can't allocate memory (simulated out of memory: "
                f"evaluation batch {rows} > {cap} set by {SIMULATE_OOM_ENV})"
            )
        return original(self)

    evaluate._simulated_oom = True  # type: ignore[attr-defined]
    Step.evaluate = evaluate  # type: ignore[method-assign]


def _validation_accuracy(run: Path, cfg: RunConfig) -> float | None:
    """Next-token top-1 accuracy of the final model on the trial's fixed validation batches."""
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
                # y is x shifted by one: position t's target is token t + 1
                right += int((logits.argmax(-1) == y[i : i + 8]).sum())
                total += y[i : i + 8].numel()
    return right / total if total else None


def _drop_resume_state(run: Path) -> None:
    """Delete a finished trial's ``checkpoints/step_*`` (weights + optimizer state).

    Why: a finished trial is never resumed, and its resume state is about 3x the model
    (weights plus AdamW's two moments), once per trial of a sweep. ``model/`` (final weights) and
    ``checkpoints/best/`` stay, so every trial can still be loaded, evaluated or fine-tuned.
    """
    for step_dir in (run / "checkpoints").glob("step_*"):
        shutil.rmtree(step_dir, ignore_errors=True)


def run_attempt(job: dict[str, Any]) -> dict[str, Any]:
    """Train one attempt of a trial and describe what happened (runs in the child process)."""
    hf_logging.disable_progress_bar()  # one line per trial from the worker, not shard bars
    _install_simulated_oom()
    cfg = from_dict(RunConfig, job["config"]).resolved()
    # a spawned child starts with torch's default; the trial's own setting wins
    torch.set_num_threads(max(1, cfg.train.threads or torch.get_num_threads()))
    run = Path(job["run_dir"])
    on_eval = None
    if job.get("prune"):
        study = optuna.load_study(
            study_name=job["study_name"],
            storage=open_storage(job["storage_url"], job.get("heartbeat", 30.0)),
            pruner=pruner_for(job["prune"]),
        )
        # the worker's trial, reopened by id: reports go to the shared storage
        trial = optuna.trial.Trial(study, job["trial_id"])

        def on_eval(step: int, val: float) -> None:
            trial.report(val, step)
            if trial.should_prune():
                raise StopTraining(f"pruned by the {job['prune']} pruner at step {step}")

    out: dict[str, Any] = {"run_dir": str(run), "status": "finished", "error": None, "oom": False}
    t0 = time.perf_counter()
    try:
        placed = TrainJobConfig.of(cfg, out=run.parent, name=run.name, quiet=True)
        run_training(placed, on_eval=on_eval)
    except StopTraining as exc:
        out.update(status="pruned", error=str(exc))
    except KeyboardInterrupt:
        out.update(status="interrupted", error="interrupted")
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with its text
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]  # one line for the table
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


def run_isolated(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_attempt` in a spawned child; a child that dies without a word is described."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_attempt_entry, args=(job, send, os.getpid()), daemon=True)
    proc.start()
    send.close()  # the child holds the only send end: its death then ends recv with EOF
    result: dict[str, Any] | None = None
    try:
        # a result sent just before exit is still in the pipe: poll after the child is gone
        while result is None and (proc.is_alive() or recv.poll()):
            if recv.poll(0.5):
                try:
                    result = recv.recv()
                except EOFError:
                    break
        proc.join(timeout=60)
    except KeyboardInterrupt:
        RunLifecycle.responded()  # heard: the wait below is cleanup, not a stuck step
        proc.join(timeout=60)  # the child got the same Ctrl-C and is saving its checkpoint
        if proc.is_alive():
            proc.terminate()
        raise
    if result is not None:
        return result
    code = proc.exitcode
    killed = code is not None and code < 0 and -code == 9  # negative = killed by that signal
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
