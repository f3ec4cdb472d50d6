"""The problems every model of a bench answers: the selection, its skipped lines, and the
few-shot examples lm-eval would put before each.

Why loaded once, before any model: every model must answer exactly the same problems (the
paired tests compare them problem by problem), and a malformed data file or a missing train
split must fail before a run directory records anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.bench.config import BenchConfig
from shoestring.bench.protocol import ProtocolChoice
from shoestring.data.gsm8k import (
    LM_EVAL_FEWSHOT_SEED,
    Problem,
    lm_eval_fewshot_for,
    load_fewshot_pool,
    load_gsm8k,
)
from shoestring.data.input_report import report_capped, skipped_fields

__all__ = ["ProblemSet", "load_problems"]


@dataclass(frozen=True)
class ProblemSet:
    """The selected problems, where they came from, and what was skipped on the way."""

    problems: list[Problem]
    #: the ``--data`` argument, named when a stored line no longer matches its problem
    source: str
    #: each problem's few-shot examples by ``idx`` (only for lm-eval's per-problem draw)
    fewshot: dict[int, tuple[Problem, ...]]
    #: ``file:line: reason`` of every malformed data line
    skipped: list[str]

    def fewshot_for(self, problems: list[Problem]) -> list[tuple[Problem, ...]] | None:
        """The shots of ``problems`` in order; None when the protocol draws none per problem."""
        return [self.fewshot[p.idx] for p in problems] if self.fewshot else None

    def summary(self, cfg: BenchConfig) -> dict[str, Any]:
        """summary.json's ``data``: the selection, down to each problem's index."""
        src = Path(cfg.data)
        return {
            "source": str(src.resolve()) if src.exists() else cfg.data,
            "split": cfg.split,
            "limit": cfg.limit,
            "subset_seed": cfg.subset_seed,
            "n_selected": len(self.problems),
            "idx": [p.idx for p in self.problems],
            **skipped_fields(self.skipped),
        }


def load_problems(
    cfg: BenchConfig, protocol: ProtocolChoice, log: Callable[[str], None]
) -> ProblemSet:
    """Read and select the problems ``cfg`` asks for, logging what was skipped, and draw
    lm-eval's shots for each when the protocol samples them per problem."""
    skipped: list[str] = []
    problems = load_gsm8k(
        cfg.data,
        cfg.split,
        cfg.limit,
        cfg.subset_seed,
        strict=cfg.strict_data,
        on_warning=skipped.append,
    )
    report_capped(skipped, lambda msg: log(f"data: skipped {msg}"))
    log(
        f"data: {len(problems)} problems from {cfg.data}"
        + (f" ({len(skipped)} malformed line(s) skipped)" if skipped else "")
    )
    fewshot: dict[int, tuple[Problem, ...]] = {}
    if n_shots := protocol.lm_eval_shots:
        # lm-eval's shots depend on each problem's line in the test file: draw them once.
        pool = load_fewshot_pool(cfg.data, cfg.split)
        draws = lm_eval_fewshot_for(problems, pool, n_shots)
        fewshot = {p.idx: d for p, d in zip(problems, draws, strict=True)}
        log(
            f"data: few-shot examples drawn per problem as lm-eval does (seed "
            f"{LM_EVAL_FEWSHOT_SEED}, {n_shots} of {len(pool)} train problems)"
        )
    return ProblemSet(problems, cfg.data, fewshot, skipped)
