"""``report_to``: the same metrics as ``metrics.jsonl``, sent to TensorBoard or Weights & Biases.

Why trackers at all, when ``metrics.jsonl`` and ``report.md`` hold everything: people coming
from TRL watch their runs in TensorBoard or W&B, and TRL honours ``report_to``; a config that
asks for a tracker and silently gets none costs them the dashboard they rely on. So the names
follow TRL's: transformers' Trainer logs every GRPO metric under ``train/`` (``train/reward``,
``train/rewards/<func>/mean``, ``train/completions/mean_length``, ``train/learning_rate`` ...);
:data:`TRL_NAMES` maps shoestring's record keys onto them, and a key TRL does not log keeps its
own name under the same prefix, so every number in ``metrics.jsonl`` reaches the tracker.

Each tracker is written through its project's own library (``torch.utils.tensorboard``, which
writes the event files TensorBoard reads; ``wandb``), imported only when asked for: a run
without trackers imports neither. W&B runs offline (files under the run directory, ``wandb
sync`` uploads them later) when ``WANDB_MODE`` is unset and its server cannot be reached, so a
machine with no network trains instead of waiting on a connection.

Every command that writes ``metrics.jsonl`` uses :class:`Trackers` (train, grpo, progressive):
open it with the run directory, call :meth:`log` with each record it writes there and
:meth:`close` at the end.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shoestring.config import ConfigError

__all__ = [
    "TRACKERS",
    "TRL_NAMES",
    "Trackers",
    "check_trackers",
    "tracker_names",
    "tracker_scalars",
]

#: what ``report_to`` may name here; ``none`` alone means no tracker
TRACKERS = ("none", "tensorboard", "wandb")
#: shoestring's metrics.jsonl keys -> the names TRL's GRPOTrainer logs them under
TRL_NAMES = {
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "frac_zero_std": "frac_reward_zero_std",
    "completion_length_mean": "completions/mean_length",
    "completion_length_max": "completions/max_length",
    "clipped_ratio": "completions/clipped_ratio",
    "clip_fraction": "clip_ratio/region_mean",
    "lr": "learning_rate",
}
WANDB_HOST = ("api.wandb.ai", 443)


def tracker_names(value: str | Iterable[str] | None) -> list[str]:
    """``report_to`` as a list, the way TRL reads it: a name, a comma list or a list; ``none``
    (or nothing) is no tracker and ``all`` every tracker whose library is installed."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(x).strip().lower() for x in items if str(x).strip()]
    if "all" in names:
        return ["tensorboard", *(["wandb"] if _installed("wandb") else [])]
    return [n for n in dict.fromkeys(names) if n != "none"]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_trackers(value: str | Iterable[str] | None) -> list[str]:
    """The trackers ``value`` names, checked before any model loads: a name shoestring does not
    know, or a tracker whose library is missing, is a one-line error saying what to do."""
    names = tracker_names(value)
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(
                f"report_to={name!r} is not a tracker shoestring writes; use "
                f"{', '.join(TRACKERS)} (metrics.jsonl is always written)"
            )
    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in names and not _installed(module):
            raise ConfigError(
                f"report_to={name} needs the {module} package, which is not installed: "
                f"pip install {module} (or drop {name} from report_to)"
            )
    return names


def tracker_scalars(record: dict[str, Any], prefix: str = "train/") -> dict[str, float]:
    """A metrics.jsonl record as tracker scalars: nested dicts flattened with ``/`` (so
    ``rewards.correctness.mean`` is TRL's ``rewards/correctness/mean``), keys renamed by
    :data:`TRL_NAMES`, ``None`` and text left out; ``step`` is the x axis, not a scalar."""
    out: dict[str, float] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for sub, inner in value.items():
                walk(f"{key}/{sub}", inner)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix + TRL_NAMES.get(key, key)] = float(value)

    for key, value in record.items():
        if key != "step":
            walk(key, value)
    return out


def _wandb_mode() -> str:
    """``WANDB_MODE`` when set; else online when W&B's server answers within 3 s, else
    offline (the run is kept under the run directory for ``wandb sync``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        with socket.create_connection(WANDB_HOST, timeout=3):
            return "online"
    except OSError:
        return "offline"


class Trackers:
    """The trackers of one run (possibly none); :meth:`log` is a no-op without any."""

    def __init__(
        self,
        names: list[str],
        run_path: Path,
        config: dict[str, Any],
        log: Callable[[str], None],
    ) -> None:
        self.names = names
        self.tensorboard: Any = None
        self.wandb: Any = None
        if "tensorboard" in names:
            # deferred: tensorboard is optional and slow to import
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_path / "tensorboard"))
            log(f"report_to: TensorBoard event files in {run_path / 'tensorboard'}")
        if "wandb" in names:
            # deferred: wandb is optional and heavy
            import wandb

            mode = _wandb_mode()
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "shoestring"),
                name=run_path.name,
                dir=str(run_path),
                config=config,
                mode=mode,
                reinit="create_new",  # progressive holds its run while each stage opens one
            )
            log(f"report_to: W&B run {run_path.name} ({mode}; files in {run_path / 'wandb'})")

    def log(self, record: dict[str, Any], step: int, prefix: str = "train/") -> None:
        """Send one metrics.jsonl record at ``step`` to every tracker."""
        if self.tensorboard is None and self.wandb is None:
            return
        scalars = tracker_scalars(record, prefix)
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)
            self.tensorboard.flush()  # a killed run keeps what it logged
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close every tracker (safe to call twice)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
