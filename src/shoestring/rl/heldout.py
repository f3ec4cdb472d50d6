"""GRPO's held-out accuracy: greedy answers to test problems it never trained on, before and after.

Why through :func:`shoestring.scoring.scoring.score_model`: a held-out accuracy is only comparable
with ``shoestring bench`` (and with progressive's stage gates) when it is asked and judged the
same way, so GRPO scores under its run's protocol with the one scoring path, and records the
protocol in ``summary.json``. The held-out set excludes every training question and, with
``eval_exclude_file``, every question of another file (e.g. a pretraining corpus); before vs
after on the same problems is then McNemar's exact test.

Under ``torchrun`` each rank answers a contiguous share of the problems (greedy, so an answer
does not depend on which rank gives it); the verdicts are gathered in problem order and rank 0
writes ``eval_<tag>.jsonl``, the file one process writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoestring.data.answers import parse_gold
from shoestring.distributed import DistInfo, gather_ordered, shard_positions
from shoestring.engine import EngineOptions
from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig
from shoestring.rl.data import load_task
from shoestring.rundir.directory import atomic_write_text
from shoestring.scoring.protocols import Protocol
from shoestring.scoring.scoring import accuracy_summary, sampling_for, score_model
from shoestring.util.stats import mcnemar_exact

__all__ = ["HeldOutEval", "questions_in"]


def questions_in(path: str) -> set[str]:
    """The ``question`` of every JSON line of ``path`` (bad lines are an error, with the line)."""
    out = set()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"eval_exclude_file {p} does not exist")
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.add(json.loads(line)["question"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{p}:{i}: not a JSON object with a 'question'") from None
    return out


class HeldOutEval:
    """The held-out problems of a run and how they are scored (greedy, under ``protocol``)."""

    def __init__(
        self,
        cfg: GRPOConfig,
        protocol: Protocol,
        train_questions: set[str],
        gen_dtype: str,
    ) -> None:
        self.spec = cfg.eval_dataset or cfg.dataset
        exclude = set(train_questions)
        if cfg.eval_exclude_file:
            exclude |= questions_in(cfg.eval_exclude_file)
        self.skipped: list[str] = []  # malformed lines (file:line: why), for the run directory
        self.problems = load_task(
            self.spec,
            "test",
            seed=cfg.seed,
            n=cfg.eval_problems,
            exclude=exclude,
            on_warning=self.skipped.append,
        )
        self.protocol = protocol
        sampling = sampling_for(protocol, cfg.max_completion_length)
        self.options = EngineOptions(dtype=gen_dtype)
        if cfg.stop_strings is not None:  # an explicit setting overrides the protocol's
            sampling = dataclasses.replace(sampling, stop_strings=list(cfg.stop_strings))
        self.sampling = sampling
        self.correct: dict[str, list[bool]] = {}  # verdicts per tag (before, after)

    def run(
        self,
        model: Any,
        tokenizer: Any,
        tag: str,
        run_path: Path,
        progress: bool,
        log: Callable[[str], None],
        ranks: DistInfo | None = None,
    ) -> dict[str, Any]:
        """Score every problem now, write one JSON line each to ``eval_<tag>.jsonl``, log the
        result and return the accuracy summary (``correct, n, accuracy, ci_low, ci_high``).
        Under torchrun (``ranks``) each rank scores its share and every rank gets the summary;
        rank 0 writes the file."""
        ranks = ranks or DistInfo()
        mine = shard_positions(len(self.problems), ranks)  # this rank's share (all in one)
        probs = [self.problems[i] for i in mine]
        t0 = time.perf_counter()
        scores = score_model(
            model,
            tokenizer,
            [p["question"] for p in probs],
            [parse_gold(p["answer"]) for p in probs],
            self.protocol,
            max_new_tokens=self.sampling.max_new_tokens,
            progress=progress,
            desc=f"eval {tag}",
            sampling=self.sampling,
            options=self.options,
            streams=mine,  # each problem's own stream, whichever rank answers it
        )
        scores = gather_ordered(scores, len(self.problems), ranks)  # problem order, every rank
        if ranks.is_main:
            text = "".join(json.dumps(s.record()) + "\n" for s in scores)
            atomic_write_text(run_path / f"eval_{tag}.jsonl", text)
        self.correct[tag] = [s.ok for s in scores]
        out = accuracy_summary(self.correct[tag])
        k, n, lo, hi = out["correct"], out["n"], out["ci_low"], out["ci_high"]
        log(
            f"eval {tag}: {k}/{n} = {100 * k / max(n, 1):.1f}% (95% CI {100 * lo:.1f}-"
            f"{100 * hi:.1f}) greedy on held-out {self.spec} test problems "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        return out

    def reload(self, tag: str, run_path: Path) -> bool:
        """Take the verdicts of ``eval_<tag>.jsonl`` an interrupted run wrote (False if none)."""
        path = run_path / f"eval_{tag}.jsonl"
        if not path.is_file():
            return False
        lines = path.read_text(encoding="utf-8").splitlines()
        self.correct[tag] = [bool(json.loads(x)["correct"]) for x in lines]
        return True

    def mcnemar(self) -> dict[str, Any] | None:
        """McNemar's exact test of after vs before on the same problems (None without both)."""
        if "before" not in self.correct or "after" not in self.correct:
            return None
        before, after = self.correct["before"], self.correct["after"]
        res = mcnemar_exact(before, after, a_name="before", b_name="after")
        return {
            "gained": res.b01,
            "lost": res.b10,
            "p_value": res.p_value,
            "statement": res.statement,
        }
