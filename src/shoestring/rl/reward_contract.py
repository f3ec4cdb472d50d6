"""TRL's reward contract: a reward function is called here exactly as TRL's GRPOTrainer calls it.

Why: people bring reward functions written for TRL (their own, or ``trl.rewards``), and those
read more than ``prompts`` and ``completions``. TRL 1.x calls every reward function with

- ``prompts``, ``completions``, ``completion_ids`` - conversational (lists of message dicts,
  the completion one ``{"role": "assistant", "content": ...}``) when the prompts are, which here
  means when the run's scoring protocol asks through the chat template;
- every dataset column except ``prompt``, one value per completion;
- ``trainer_state`` (a ``transformers.TrainerState``: ``global_step``, ``max_steps``, ``epoch``
  ...) for rewards that change with training progress;
- ``log_extra(column, values)`` and ``log_metric(name, value)``: extra columns of the logged
  samples and scalar metrics of the step;

awaits ``async`` reward functions, and treats a ``None`` reward as "not scored by this
function" (NaN; a completion no function scores gets advantage 0 - :mod:`shoestring.rl.loss`).
:class:`ContractReward` wraps any reward (the built-ins too, so there is one contract) with a
:class:`RewardContext` the trainer advances each step and drains into its metrics.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from transformers import TrainerState

from shoestring.distributed import DistInfo, all_gather_objects
from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig
from shoestring.rl.data import PromptSet
from shoestring.rl.rewards import load_reward, reward_label
from shoestring.scoring.protocols import Protocol

__all__ = ["ContractReward", "RewardContext", "contract_rewards"]

#: TRL rewards that read only ``completion_ids`` (the others read ``completion[0]["content"]``)
TEXT_FREE_TRL_REWARDS = ("trl:get_soft_overlong_punishment",)

Messages = list[dict[str, str]]


class RewardContext:
    """What reward functions see besides the batch: the trainer's state, the conversational
    form of each prompt, and where ``log_extra``/``log_metric`` values go until drained."""

    def __init__(
        self,
        max_steps: int,
        num_train_epochs: float,
        messages: dict[str, Messages] | None = None,
        epochs_per_batch: float = 0.0,
    ) -> None:
        self.state = TrainerState(
            global_step=0, max_steps=max_steps, num_train_epochs=num_train_epochs, epoch=0.0
        )
        #: prompt text -> its chat messages; None when the prompts are not conversational
        self.messages = messages
        self.epochs_per_batch = epochs_per_batch
        self.extra: dict[str, list[Any]] = defaultdict(list)
        self.metrics: dict[str, list[float]] = defaultdict(list)

    @classmethod
    def for_run(cls, cfg: GRPOConfig, total_steps: int, prompts: PromptSet) -> RewardContext:
        """The context of a run of ``total_steps`` over ``prompts``."""
        return cls(
            total_steps,
            cfg.num_train_epochs,
            prompts.messages_by_text(),
            cfg.prompts_per_step / max(1, len(prompts.rows)),
        )

    def begin_step(self, global_step: int, gen_index: int) -> None:
        """Before scoring generation batch ``gen_index``: ``global_step`` optimizer steps are
        done (TRL's ``state.global_step`` when it scores), and the epoch it is in."""
        self.state.global_step = global_step
        self.state.epoch = gen_index * self.epochs_per_batch

    def log_extra(self, column: str, values: list[Any]) -> None:
        """TRL's ``log_extra``: one value per completion for the logged samples."""
        self.extra[column].extend(values)

    def log_metric(self, name: str, value: float) -> None:
        """TRL's ``log_metric``: a scalar of this step (averaged if logged several times)."""
        self.metrics[name].append(float(value))

    def drain_into(self, stats: dict[str, Any], ranks: DistInfo | None = None) -> None:
        """Put what the rewards logged into a step's record: metrics under
        ``reward_metrics``, extra columns on the logged samples (``_samples[k]["extra"]``).
        Under torchrun (``ranks``) each rank's rewards saw its share of the step, in step
        order: the logs of every rank are joined in rank order first, so the extra columns are
        the whole step's and a metric is the mean over every rank's calls (as TRL averages a
        metric over processes under ``accelerate``)."""
        if ranks is not None and ranks.enabled:
            shares = all_gather_objects((dict(self.metrics), dict(self.extra)), ranks)
            self.metrics.clear()
            self.extra.clear()
            for metrics, extra in shares:
                for name, values in metrics.items():
                    self.metrics[name].extend(values)
                for column, values in extra.items():
                    self.extra[column].extend(values)
        metrics, extra = self.drain()
        if metrics:
            stats["reward_metrics"] = metrics
        for k, sample in enumerate(stats.get("_samples", [])):
            columns = {c: v[k] for c, v in extra.items() if k < len(v)}
            if columns:
                sample["extra"] = columns

    def drain(self) -> tuple[dict[str, float], dict[str, list[Any]]]:
        """The step's metrics (means) and extra columns, emptied for the next step."""
        metrics = {k: sum(v) / len(v) for k, v in self.metrics.items() if v}
        extra = dict(self.extra)
        self.metrics.clear()
        self.extra.clear()
        return metrics, extra


class ContractReward:
    """``fn`` called with TRL's keyword arguments; named like ``fn`` in logs and errors."""

    def __init__(self, fn: Callable[..., Any], context: RewardContext, name: str) -> None:
        self.fn = fn
        self.context = context
        self.__name__ = name

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        completion_ids: list[list[int]],
        **columns: Any,
    ) -> list[float | None]:
        ctx = self.context
        prompt_arg: list[Any] = prompts
        completion_arg: list[Any] = completions
        if ctx.messages is not None:
            prompt_arg = [ctx.messages[p] for p in prompts]
            completion_arg = [[{"role": "assistant", "content": c}] for c in completions]
        columns.pop("prompt", None)  # TRL passes every column but the prompt
        try:
            out = self.fn(
                prompts=prompt_arg,
                completions=completion_arg,
                completion_ids=completion_ids,
                trainer_state=ctx.state,
                log_extra=ctx.log_extra,
                log_metric=ctx.log_metric,
                **columns,
            )
            if inspect.isawaitable(out):
                out = _wait(out)
            return list(out)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's function: say which and how
            form = "plain strings" if ctx.messages is None else "conversational (message lists)"
            raise UserError(
                f"reward {self.__name__} failed: {type(exc).__name__}: {exc}. Its completions "
                f"were {form}; completions are conversational only under a chat protocol (a "
                "model with a chat template, protocol auto or chat-cot)"
            ) from exc


def contract_rewards(
    names: list[str], protocol: Protocol, context: RewardContext
) -> list[ContractReward]:
    """The run's rewards by name (built-in, ``trl:NAME``, ``module:function``), each called
    with TRL's contract. TRL's text rewards read conversational completions only, so asking for
    them on a run whose prompts are plain text fails here, before any sampling."""
    for name in names:
        if name.startswith("trl:") and name not in TEXT_FREE_TRL_REWARDS and not context.messages:
            raise UserError(
                f"reward {name} reads conversational completions (TRL's message lists), but this "
                f"run's protocol {protocol.name!r} prompts with plain text; use a chat protocol "
                "(a model with a chat template) or a reward that reads strings"
            )
    return [ContractReward(load_reward(n, protocol), context, reward_label(n)) for n in names]


def _wait(awaitable: Awaitable[Any]) -> Any:
    """The result of an async reward: on a fresh event loop, or on a worker thread's when this
    thread already runs one (a notebook)."""

    async def result() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(result())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, result()).result()
