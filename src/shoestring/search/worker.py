"""The search worker: ask the study for a trial, train it, tell the result - until it is done.

A worker keeps its trial alive in the storage with a heartbeat thread. If the worker dies, the
heartbeat stops and the next worker to look marks the trial failed and re-queues it
(``storage.open_storage``), so a crash loses only that trial. The rules for who may run which
grid point are in ``grid.py``; a trial itself (OOM retries, its row) is ``trial.py``.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from shoestring.search import grid
from shoestring.search.spec import StudySpec
from shoestring.search.trial import WorkerOptions, execute_trial, say
from shoestring.util.progress import progress_bar

__all__ = ["ROW_ATTR", "Heartbeat", "all_points", "progress_of", "work"]

ROW_ATTR = "row"  # trial user attribute holding the result row


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
    """How far the study is: grid points done, or trials of the TPE budget done."""
    trials = study.get_trials(deepcopy=False)
    if spec.sampler == "grid":
        return grid.grid_progress(trials, list(spec.search_space()), all_points(spec))
    return grid.budget_progress(trials, spec.trials)


def all_points(spec: StudySpec) -> list[str]:
    """Every grid point's key, in the order the grid lists them."""
    space = spec.search_space()
    keys = list(space)
    return [
        grid.point_key(dict(zip(keys, combo, strict=True)), keys)
        for combo in itertools.product(*space.values())
    ]


def _suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """The trial's parameters: a grid point's categorical values, then each range's draw."""
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
    """The worker loop: claim, check the claim, train, tell - until the study is complete."""
    keys = list(spec.search_space()) if spec.sampler == "grid" else None
    opts.trials_dir.mkdir(parents=True, exist_ok=True)
    ran = 0
    state = progress_of(study, spec)
    bar = progress_bar(
        total=state.total,
        initial=state.done,
        unit="trial",
        desc=f"search {opts.worker}",
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    poll = max(1.0, min(opts.heartbeat, 5.0))  # how often an idle worker looks again
    said_waiting = False
    try:
        while not opts.max_trials or ran < opts.max_trials:
            # a trial whose worker stopped beating is failed here and re-queued by the storage
            fail_stale_trials(study)
            state = progress_of(study, spec)
            if state.done != bar.n:  # other workers finish trials too: follow the study
                bar.n = state.done
                bar.refresh()
            if state.complete:
                break
            if not state.claimable:
                # the rest is running elsewhere; wait: if that worker dies, its trial comes back
                if not said_waiting and opts.echo:
                    say(
                        f"[{opts.worker}] {state.active} trial(s) running in other workers; "
                        "waiting for them to finish (or to be re-queued if they die)"
                    )
                    said_waiting = True
                time.sleep(poll)
                continue
            said_waiting = False
            # claim a trial and beat at once, so no other worker takes it for a dead one
            trial = study.ask()
            study._storage.record_heartbeat(trial._trial_id)
            params = _suggest(trial, spec)
            frozen = study._storage.get_trial(trial._trial_id)  # its system attrs: the origin
            # two workers may draw the same grid point: the lower origin runs it, this one yields
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
                    say(f"[{opts.worker}] trial {trial.number} stands down: {reason}")
                continue
            label = f"{params['size']}/{params['variant']}/seed {params['seed']}"
            if opts.echo:
                say(f"[{opts.worker}] trial {trial.number}: {label} ...")
            # train it (OOM retries included) while a thread keeps its heartbeat going
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
                # Ctrl-C: the trial goes back in the queue for the resumed study
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
            # the row lives in the storage (results are built from it, not from trial dirs);
            # only a finished trial with a loss is a value the sampler learns from
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
                say(
                    f"[{opts.worker}] trial {trial.number}: {label} {row['status']}"
                    + (f", val loss {val:.4f}" if val is not None else "")
                    + (f" ({row['error']})" if row["error"] else "")
                    + f" in {row['wall_seconds']:.1f} s"
                )
    finally:
        bar.close()
    return ran
