"""Which trials count, which grid points are done, and who may run a point.

Optuna's ``GridSampler`` gives the first ``n`` trials of a fresh study distinct grid points (the
trial number is the grid id), but after that it picks randomly among points not yet finished or
running - and once every point has started it deliberately re-runs *running* points. With
several workers, a resumed study or a re-queued crash, that duplicates work. The rules here make
every grid point run exactly once, whatever the interleaving:

* a trial's *origin* is the number of the trial it re-queues (``retry_history[0]``) or its own;
* a trial is *superseded* when a later trial re-queues it (its worker died), and *skipped* when
  this module told it to stand down; neither counts;
* a point is *done* when a counting trial for it has finished (complete, pruned or failed);
* a trial may run its point only if no counting trial has finished it and no counting trial of
  a lower origin is running or waiting for it. Two workers that drew the same point therefore
  agree on one winner without talking to each other, and the loser stands down.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

SKIPPED = "skipped"  # user attribute: why this trial stood down


def point_key(params: dict[str, Any], keys: Iterable[str]) -> str:
    return json.dumps([params.get(k) for k in keys], default=str)


def origin(t: FrozenTrial) -> int:
    history = t.system_attrs.get("retry_history") or []
    return int(history[0]) if history else t.number


def superseded_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials that a later trial re-queued (their worker died or was interrupted)."""
    out: set[int] = set()
    for t in trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history") or [])
    return out


def counting(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that stand for a point: not skipped and not superseded by a re-queued copy."""
    gone = superseded_numbers(trials)
    return [t for t in trials if SKIPPED not in t.user_attrs and t.number not in gone]


ACTIVE = (TrialState.RUNNING, TrialState.WAITING)


@dataclass
class Progress:
    """Where a study stands: how many points (or budgeted trials) are done, active, free."""

    total: int
    done: int = 0
    active: int = 0
    waiting: int = 0
    free: int = 0
    done_keys: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def claimable(self) -> bool:
        return self.waiting > 0 or self.free > 0


def grid_progress(
    trials: Sequence[FrozenTrial], keys: Sequence[str], all_points: Iterable[str]
) -> Progress:
    points = set(all_points)
    live = counting(trials)
    done = {
        point_key(t.params, keys)
        for t in live
        if t.state.is_finished() and set(keys) <= set(t.params)
    }
    active = {
        point_key(t.params, keys)
        for t in live
        if t.state == TrialState.RUNNING and set(keys) <= set(t.params)
    } - done
    waiting = sum(1 for t in live if t.state == TrialState.WAITING)
    free = len(points - done - active)
    return Progress(
        total=len(points),
        done=len(done & points),
        active=len(active),
        waiting=waiting,
        free=free,
        done_keys=done,
    )


def budget_progress(trials: Sequence[FrozenTrial], budget: int) -> Progress:
    live = counting(trials)
    done = sum(1 for t in live if t.state.is_finished())
    active = sum(1 for t in live if t.state == TrialState.RUNNING)
    waiting = sum(1 for t in live if t.state == TrialState.WAITING)
    free = max(0, budget - done - active - waiting)
    return Progress(total=budget, done=done, active=active, waiting=waiting, free=free)


def stand_down_reason(
    me: FrozenTrial | int,
    my_origin: int,
    params: dict[str, Any],
    trials: Sequence[FrozenTrial],
    keys: Sequence[str] | None,
    budget: int | None = None,
) -> str | None:
    """Why trial ``me`` must not run (a duplicate or over budget), or None if it may run.

    ``keys`` = the grid dimensions (grid sampler); ``budget`` = the trial budget (TPE).
    """
    number = me if isinstance(me, int) else me.number
    others = [t for t in counting(trials) if t.number != number]
    if keys is not None:
        mine = point_key(params, keys)
        for t in others:
            if not set(keys) <= set(t.params) or point_key(t.params, keys) != mine:
                continue
            if t.state.is_finished():
                return f"grid point already done by trial {t.number}"
            if t.state in ACTIVE and origin(t) < my_origin:
                return f"grid point already taken by trial {t.number}"
        return None
    if budget is not None:
        ahead = sum(1 for t in others if origin(t) < my_origin)
        if ahead >= budget:
            return f"trial budget of {budget} already used"
    return None
