"""``bench`` under ``torchrun``: rank 0 runs the benchmark as one process does, and every rank
generates its share of each model's missing problems, round by round.

Why rank 0 decides and the others follow: which problems are missing, and the prompts they
get, are decided by rank 0's run directory (``state.json``, ``problems.jsonl``) and its
preflight, which the other machines of a multi-machine job may not see. So rank 0 sends the
models once (:class:`Plan`) and, per model, the fitted prompts still to answer
(:class:`Order`); the other ranks (:func:`serve`) load the model and generate, and need
neither the data file nor the results directory. Rank 0 judges every answer and writes
every line, so the records are the ones one process writes.

Why rounds: rank 0 alone writes ``problems.jsonl``. In each round every rank answers
:data:`ROUND_BATCHES` batches' worth of prompts (dealt round-robin, so long and short ones
spread evenly); then rank 0 receives every rank's results and appends them in problem order.
A rank that dies loses at most the round in flight: the job fails as a whole
(docs/distributed.md) and a rerun, under any number of ranks, resumes from the file.

Why each prompt carries a stream: a sampled answer depends on its prompt's sampling stream
(``Engine.generate``'s ``streams``) and on nothing else in the call, so a problem answered on
any rank, in any round, or in a resumed run samples what it samples in one uninterrupted
process - as long as its stream is the problem's own (its ``idx``), not its place in the
share a rank or a session happens to get.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoestring.bench.config import BenchConfig
from shoestring.bench.models import ModelSpec
from shoestring.bench.prompts import BenchPrompts
from shoestring.data.gsm8k import Problem
from shoestring.distributed import DistInfo, broadcast_from_main, gather_ordered, shard_positions
from shoestring.engine import Engine, EngineOptions, GenerationResult, Sampling
from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress
from shoestring.rundir.directory import RunDir
from shoestring.runtime import Runtime
from shoestring.scoring.protocols import Protocol
from shoestring.scoring.scoring import ProblemScore
from shoestring.util.progress import progress_bar

__all__ = [
    "ROUND_BATCHES",
    "Order",
    "Plan",
    "answer_over_ranks",
    "generate_in_rounds",
    "send",
    "serve",
]

#: A rank's share of one round, in batches: enough for continuous batching to keep its rows
#: busy, few enough that a dead rank costs only a few batches of work.
ROUND_BATCHES = 2


@dataclass(frozen=True)
class Plan:
    """What the other ranks need for the whole bench: the models, in the order they run."""

    specs: list[ModelSpec]


@dataclass(frozen=True)
class Order:
    """One model's work: the fitted prompt ids to answer (none: the model is not loaded), how
    many of them each rank takes per round, the decoding, and each prompt's sampling stream
    (empty: its position in ``ids``)."""

    ids: list[list[int]] = field(default_factory=list)
    per_rank: int = 1
    sampling: Sampling | None = None
    streams: list[int] = field(default_factory=list)

    def stream(self, j: int) -> int:
        """Prompt ``j``'s sampling stream."""
        return self.streams[j] if self.streams else j


def send(message: Plan | Order, ranks: DistInfo) -> None:
    """Rank 0: hand the other ranks their next :class:`Plan` or :class:`Order` (a no-op in a
    single process). Every model gets exactly one order, an empty one when nothing is missing."""
    broadcast_from_main(message, ranks)


def generate_in_rounds(
    engine: Engine,
    order: Order,
    ranks: DistInfo,
    on_result: Callable[[int, GenerationResult], None] | None = None,
    progress: bool = False,
    desc: str = "bench",
) -> None:
    """Generate ``order.ids`` over all ranks; on rank 0, ``on_result(j, result)`` gets every
    prompt's result, round by round, in the order of ``order.ids``. Every rank calls this
    with the same order."""
    assert order.sampling is not None, "an order with prompts says how to decode them"
    n, per_round = len(order.ids), order.per_rank * ranks.world_size
    bar = progress_bar(total=n, desc=desc, unit="problem", disable=not progress)
    try:
        for start in range(0, n, per_round):
            size = min(per_round, n - start)
            # round-robin inside the round: each rank gets long and short prompts alike
            mine = shard_positions(size, ranks, strided=True)
            local: list[GenerationResult] = []
            if mine:
                prompts = [order.ids[start + i] for i in mine]
                # each prompt on its own stream: what one process samples for it
                streams = [order.stream(start + i) for i in mine]
                local = engine.generate(prompts, order.sampling, streams=streams)
            everything = gather_ordered(local, size, ranks, strided=True)
            if on_result is not None:
                for k, result in enumerate(everything):
                    on_result(start + k, result)
            bar.update(size)
    finally:
        bar.close()


def serve(cfg: BenchConfig, rt: Runtime, ranks: DistInfo) -> None:
    """A rank other than 0, for the whole bench: take rank 0's plan, then for each model its
    order; load the model only when there is something to answer."""
    plan: Plan = broadcast_from_main(None, ranks)
    for spec in plan.specs:
        order: Order = broadcast_from_main(None, ranks)
        if not order.ids:
            continue
        with quiet_hf_progress(True):  # rank 0's bars are the job's
            model, tokenizer, _ = load_model_and_tokenizer(
                spec.path,
                device=rt.device,
                dtype=rt.dtype,
                trust_remote_code=cfg.trust_remote_code,
            )
        engine = Engine(model, tokenizer, EngineOptions(batch_size=cfg.batch_size))
        generate_in_rounds(engine, order, ranks)
        engine = model = tokenizer = None  # free before the next model loads
        gc.collect()


def answer_over_ranks(
    model: Any,
    tokenizer: Any,
    protocol: Protocol,
    missing: list[Problem],
    prompts: BenchPrompts,
    cfg: BenchConfig,
    rundir: RunDir,
    label: str,
    session: dict[str, Any],
    on_item: Callable[[ProblemScore], None],
    ranks: DistInfo,
) -> None:
    """Rank 0's side of one model in a torchrun job: what one process's generation does (log
    the prompts' fit, judge each answer under ``protocol``, hand it to ``on_item`` with
    ``index`` = its position in ``missing``), with the generation dealt over the ranks."""
    scfg, golds, rows = prompts.start(
        model, protocol, missing, cfg.max_new_tokens, cfg.batch_size, (rundir, label, session)
    )
    # a problem's stream is its idx: the same in every round, on every rank, after a resume
    streams = [p.idx for p in missing]
    order = Order(prompts.fit.kept_ids(), ROUND_BATCHES * rows, scfg, streams)
    send(order, ranks)

    def judge(i: int, res: GenerationResult) -> None:  # i: the problem's place in `missing`
        on_item(ProblemScore.judge(i, missing[i].question, golds[i], res, protocol))

    engine = Engine(model, tokenizer, EngineOptions(batch_size=cfg.batch_size))
    generate_in_rounds(engine, order, ranks, judge, progress=cfg.progress_bars, desc=label)
