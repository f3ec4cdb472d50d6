"""Where a study lives: an Optuna RDB storage (SQLite file by default, PostgreSQL to scale out).

Both go through ``optuna.storages.RDBStorage`` with heartbeats switched on: every running trial
records a heartbeat, and a trial whose worker died (SIGKILL, power loss, a crashed machine) stops
beating, is marked failed by the next worker that looks (``fail_stale_trials``) and is re-queued
with the same parameters by ``RetryHeartbeatStaleTrialCallback``. A dead worker therefore loses
only the trial it was running.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from shoestring.errors import UserError
from shoestring.search.location import (
    CRASH_RETRIES,
    DEFAULT_HEARTBEAT,
    driver_url,
    redact,
)


def open_storage(url: str, heartbeat: float = DEFAULT_HEARTBEAT) -> RDBStorage:
    """An RDB storage with heartbeats, a crash re-queue callback and a patient SQLite lock.

    SQLite serialises writers; several local workers writing at once wait for the lock (60 s)
    instead of failing with "database is locked". PostgreSQL connections are checked before use
    so a worker survives a server restart between trials.
    """
    grace = max(2.0 * heartbeat, heartbeat + 2.0)
    url = driver_url(url)
    if url.startswith("sqlite"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    elif url.startswith(("postgresql", "postgres")):
        if not (importlib.util.find_spec("psycopg2") or importlib.util.find_spec("psycopg")):
            raise UserError(
                "a PostgreSQL storage needs psycopg2: pip install 'shoestring[postgres]'"
            )
        engine_kwargs = {"pool_pre_ping": True}
    else:
        engine_kwargs = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=max(2, round(grace)),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=CRASH_RETRIES, inherit_intermediate_values=False
                ),
            )
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many kinds; the message says
        raise UserError(
            f"cannot open the study storage {redact(url)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; check the URL, that the server "
            "is running and that the database exists"
        ) from exc


class AskTellGridSampler(optuna.samplers.GridSampler):
    """``GridSampler`` for an ask/tell loop: the worker, not the sampler, decides when to stop.

    The stock ``after_trial`` calls ``study.stop()``, which only works inside
    ``study.optimize``; our workers stop when ``grid.grid_progress`` says every point is done.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def sampler_for(space: dict[str, list[Any]], kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "grid":
        return AskTellGridSampler(space, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def pruner_for(kind: str) -> optuna.pruners.BasePruner:
    if kind == "median":
        # judge nothing until three trials have finished: a median of one or two is noise
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.pruners.NopPruner()
